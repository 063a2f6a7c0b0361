"""``niti`` command line: parse, build a config, call the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .numerics import ROUNDING_MODES

__all__ = ["main", "build_parser"]


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .models import ARCHITECTURES
    from .train import TrainConfig

    defaults = TrainConfig()

    p = sub.add_parser("train", help="train an integer model (or its float twin)",
                       description="Train a model; writes checkpoint.pt, metrics.jsonl, steps.jsonl and summary.json "
                                   "to --out.")
    p.add_argument("--model", default="lenet", type=_model_name, metavar="{" + ",".join(sorted(ARCHITECTURES)) + "} or MODULE:FACTORY",
                   help="a built-in network, or MODULE:FACTORY: an importable function returning a torch.nn.Module "
                        "(e.g. mynets:small_cnn; give --dataset)")
    p.add_argument("--dataset", default=None, help="mnist, cifar10, a path to an .npz, or an image folder DIR with "
                   "DIR/train/<class>/* and DIR/val/<class>/* (ImageNet layout) (default: the model's own)")
    p.add_argument("--data-dir", default=None, help="where the data lives (default: $NITI_DATA, then ~/.cache/niti)")
    p.add_argument("--no-download", action="store_true", help="never download data; fail if it is not found")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directory (default: runs/<model>-<arith>-s<seed>)")
    p.add_argument("--arith", default="int", choices=["int", "float"], help="integer NITI training or the float32 twin")
    p.add_argument("--val-size", type=int, default=None,
                   help="training images held out for validation, the last N (default: 10 %% of them, at most 5000)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip (default: on for cifar10)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (schedule fits them)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None,
                   help="image folders: decode to this square size (default: the model's input size, else 224)")
    p.add_argument("--workers", type=int, default=None,
                   help="image folders: decoding processes (default: the CPU count, at most 8; 0: in-process)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (torch.distributed)")
    for role in ("act", "err", "grad", "loss"):
        default = getattr(defaults, f"{role}_round")
        p.add_argument(f"--{role}-round", default=default, choices=ROUNDING_MODES,
                       help=f"rounding of {role} rescales (default {default})")
    p.add_argument("--round-all", default=None, choices=ROUNDING_MODES, help="one rounding mode for every role")
    p.add_argument("--gb-schedule", default=defaults.gb_schedule,
                   help=f"gradient bit widths (the step size) and the fractions of training where they change "
                        f"(default {defaults.gb_schedule}; fractional values such as 4.5 decay by less than x2; "
                        f"with --step-scale max, values below 1 (down to -7) need 16-bit accumulators)")
    p.add_argument("--gb-offsets", default="", metavar="O1,O2,... | NAME=O,...",
                   help="gb offsets added to the scheduled gb: one per parameter tensor, input to output (e.g. "
                        "0,0,0,0,0,0,2: larger steps for VGG-small-7's classifier), or by parameter or layer name "
                        "(e.g. classifier.2=2); write --gb-offsets=-1,0,... when the first is negative")
    p.add_argument("--accumulator-bits", type=int, default=defaults.accumulator_bits, choices=[8, 16],
                   help=f"weight accumulator width (default {defaults.accumulator_bits})")
    p.add_argument("--batch-ref", type=int, default=defaults.batch_ref,
                   help=f"0 or not: with --step-scale exponent (default) the step is scaled to the mean loss "
                        f"(128/batch), so a gb is the same learning rate at any batch (0: the summed gradient's step); "
                        f"with --step-scale max it scales with batch/BATCH_REF, so a gb means the same progress per "
                        f"epoch at any batch size (default {defaults.batch_ref}; 0: the paper's batch-independent step)")
    p.add_argument("--momentum-shift", type=int, default=defaults.momentum_shift,
                   help=f"integer momentum: velocity decay 1 - 2**-K (default {defaults.momentum_shift}; 0: none)")
    p.add_argument("--decay-shift", type=int, default=defaults.decay_shift,
                   help=f"integer weight decay 2**(gb - D) of each weight per step (default {defaults.decay_shift}: the "
                        f"float twin's lr * wd / (1 - momentum) at gb 5; 0: none)")
    p.add_argument("--velocity-rescale", action=argparse.BooleanOptionalAction, default=defaults.velocity_rescale,
                   help="when the gb schedule changes the rate, multiply the momentum velocity by the same factor, "
                        "as float SGD's lr multiplies its buffer (default off: the velocity keeps the old rate's "
                        "steps for ~2**K steps)")
    p.add_argument("--step-carry", action=argparse.BooleanOptionalAction, default=defaults.step_carry,
                   help="each weight keeps what rounding its step to a master unit left and adds it to the next "
                        "step (rounded to nearest), so steps below one unit add up instead of being rounded away "
                        f"(default {'on' if defaults.step_carry else 'off'})")
    p.add_argument("--step-frac-bits", type=int, default=defaults.step_frac_bits, metavar="F",
                   help="bits below one master weight unit kept by the scaled gradient, the momentum velocity and "
                        f"the carried step (8..12, default {defaults.step_frac_bits}): more keep the small steps "
                        "and weight decay of annealed rates")
    p.add_argument("--step-scale", choices=["max", "exponent"], default=defaults.step_scale,
                   help="how a gradient becomes a step: float SGD's, 2**(gb - 20) times the real summed gradient "
                        "(exponent, the default: gb 5 is float's lr 0.05 with momentum), or rescaled to gb bits per "
                        "tensor (max, the paper's; pair it with --gb-schedule 5,4,3,2@0.25,0.5,0.75 "
                        "--full-range-init, numerics 2's first defaults)")
    p.add_argument("--weight-headroom", type=int, default=defaults.weight_headroom, metavar="BITS",
                   help=f"bits of room above their initial range for convolution and linear weights (16-bit "
                        f"accumulators; default {defaults.weight_headroom})")
    p.add_argument("--end-headroom", type=int, default=defaults.end_headroom, metavar="BITS",
                   help=f"bits more of room for the first and the last convolution or linear layer, whose float "
                        f"weights grow farthest past their initial range (default {defaults.end_headroom})")
    p.add_argument("--act-clip-bits", type=int, default=defaults.act_clip_bits, metavar="BITS",
                   help=f"activation rescales (all but the input's and the logits') keep BITS more bits of "
                        f"resolution and saturate the batch's few largest values (default {defaults.act_clip_bits})")
    p.add_argument("--act-clip-share", type=int, default=defaults.act_clip_share, metavar="K",
                   help=f"clip each activation rescale only as far as saturates at most 2**-K of its batch's values "
                        f"(0: always the full --act-clip-bits; default {defaults.act_clip_share})")
    p.add_argument("--dropout", default=defaults.dropout, choices=["sample", "batch"],
                   help="dropout masks: one per element, as the float twin's (sample; default) or one per feature "
                        "shared by the batch (batch: the NITI reference's)")
    p.add_argument("--softmax", default=defaults.softmax, choices=["precise", "coarse"],
                   help="integer softmax of the loss gradient (coarse: the first version's, for ablations)")
    p.add_argument("--full-range-init", action=argparse.BooleanOptionalAction, default=defaults.full_range_init,
                   help="initial int8 mantissas fill ±127 (default off: within the Xavier bound, the float "
                        "twin's scale)")
    p.add_argument("--input-std", action=argparse.BooleanOptionalAction, default=defaults.input_std,
                   help="divide the integer input by the per-channel std (default on)")
    p.add_argument("--random-bits", choices=["counter", "generator"], default=defaults.random_bits,
                   help="where stochastic rounding and dropout get random bits: counter-based hashes, the same on "
                        "every device (default), or the first version's CPU generators")
    p.add_argument("--inference", choices=["static", "batch"], default=defaults.inference,
                   help="how the integer model is evaluated: calibrated static shifts, so a prediction depends on "
                        "its image only (default), or each batch's own shifts")
    p.add_argument("--norm-recalibration", type=int, default=defaults.norm_recalibration, metavar="IMAGES",
                   help=f"before each evaluation, batch norm's running statistics become the average over this many "
                        f"training images, with the current weights (default {defaults.norm_recalibration}; 0: keep "
                        f"the running averages; no effect without batch norm)")
    p.add_argument("--lr", type=float, default=None, help="float baseline learning rate (default: tuned value)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also write checkpoint.pt every STEPS steps within an epoch (default 200; 0: epoch ends "
                        "only)")
    p.add_argument("--log-every", type=int, default=None, metavar="STEPS",
                   help=f"steps per running-loss record in steps.jsonl (default {defaults.log_every})")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the interrupted run in DIR")
    p.set_defaults(func=_cmd_train)


def _model_name(text: str) -> str:
    """A built-in name or ``MODULE:FACTORY`` (checked for form here; imported when the run starts)."""
    from .models import ARCHITECTURES, is_factory_path

    if text in ARCHITECTURES:
        return text
    if is_factory_path(text):
        module, _, factory = text.partition(":")
        if module and factory and all(part.isidentifier() for part in module.split(".") + factory.split(".")):
            return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a built-in model ({', '.join(sorted(ARCHITECTURES))}) "
                                     "nor MODULE:FACTORY (e.g. mynets:small_cnn)")


def _config_from_args(args: argparse.Namespace):  # noqa: ANN202
    from .train import TrainConfig

    rounds = {f"{r}_round": (args.round_all or getattr(args, f"{r}_round")) for r in ("act", "err", "grad", "loss")}
    out = args.out or f"runs/{args.model.replace(':', '.')}-{args.arith}-s{args.seed}"
    return TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download,
                       out=out, arith=args.arith,
                       epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, val_size=args.val_size,
                       augment=args.augment, max_steps=args.max_steps, train_limit=args.train_limit,
                       threads=args.threads, image_size=args.image_size, workers=args.workers, device=args.device, gb_schedule=args.gb_schedule,
                       gb_offsets=args.gb_offsets, accumulator_bits=args.accumulator_bits, batch_ref=args.batch_ref,
                       momentum_shift=args.momentum_shift, decay_shift=args.decay_shift, step_scale=args.step_scale,
                       velocity_rescale=args.velocity_rescale, step_carry=args.step_carry,
                       step_frac_bits=args.step_frac_bits, softmax=args.softmax, dropout=args.dropout,
                       weight_headroom=args.weight_headroom, end_headroom=args.end_headroom,
                       act_clip_bits=args.act_clip_bits,
                       act_clip_share=args.act_clip_share,
                       full_range_init=args.full_range_init, input_std=args.input_std, lr=args.lr,
                       inference=args.inference, random_bits=args.random_bits, norm_recalibration=args.norm_recalibration,
                       momentum=args.momentum, weight_decay=args.weight_decay, progress=not args.no_progress,
                       **_given(args, "checkpoint_every", "log_every"), **rounds)


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The options among ``names`` the user gave (the rest keep TrainConfig's defaults)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, TrainingInterrupted, fit
    from .train.validate import load_train_state

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1:
        from .distributed import launch

        argv = list(args.argv)
        i = argv.index("--nproc") if "--nproc" in argv else None
        if i is not None:
            del argv[i:i + 2]
        else:
            argv = [a for a in argv if not a.startswith("--nproc=")]
        return launch(args.nproc, argv)
    if args.resume:
        saved = TrainConfig.from_dict(load_train_state(Path(args.resume))["config"])
        changes = {"out": args.resume, "progress": not args.no_progress,
                   **_given(args, "threads", "data_dir", "checkpoint_every")}
        config = saved.replace(**changes)
    else:
        config = _config_from_args(args)
    try:
        summary = fit(config, resume=bool(args.resume))
    except TrainingInterrupted as exc:
        print(f"niti: {exc}", file=sys.stderr)
        return 130
    if summary.get("world_size", 1) == 1 or _is_rank0():
        keys = ("final_test_accuracy", "best_val_accuracy", "epochs", "seconds", "images_per_second",
                "weights_sha256")
        print(json.dumps({k: summary[k] for k in keys}, indent=2))
        print(f"wrote {config.out}/summary.json")
    return 0


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set's test (and validation) split")
    p.add_argument("checkpoint", help="checkpoint.pt or a run directory")
    p.add_argument("--dataset", default=None, help="default: the data set the run trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--inference", choices=["static", "batch"], default=None,
                   help="integer models: calibrated static shifts (batch-independent) or each batch's own "
                        "(default: the run's choice, static unless it said otherwise)")
    p.add_argument("--batch-size", type=int, default=1000, help="images per prediction batch (default 1000)")
    p.set_defaults(func=_cmd_eval)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .train import load_model
    from .train.loop import eval_images, load_run_data
    from .train.metrics import evaluate

    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, config, state = load_model(args.checkpoint)
    if args.inference and hasattr(model, "inference"):
        model.inference = args.inference
    name = args.dataset or config.dataset or model.arch.dataset
    if name is None:
        raise ValueError(f"run {args.checkpoint} trained a user model without naming its data set: give --dataset")
    ds = load_run_data(config.replace(data_dir=args.data_dir or config.data_dir), name)
    if len(ds.x_test) == 0:
        raise ValueError(f"data set {name} has an empty test split (x_test has 0 images): nothing to evaluate")
    x, y = eval_images(ds.x_test), torch.from_numpy(ds.y_test.copy())
    correct = evaluate(model, x, y, args.batch_size)
    result = {"checkpoint": str(args.checkpoint), "model": config.model, "arith": config.arith, "dataset": name,
              "inference": getattr(model, "inference", None), "batch_size": args.batch_size,
              "test_images": int(x.shape[0]), "test_accuracy": 100.0 * correct / x.shape[0],
              "step": model.step, "weights_sha256": model.weights_sha256()}
    print(json.dumps(result, indent=2))
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="PNG of loss/accuracy curves of one or more runs, overlaid")
    p.add_argument("runs", nargs="+", help="run directories (holding metrics.jsonl / steps.jsonl)")
    p.add_argument("-o", "--output", default="curves.png")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_runs

    path = plot_runs([Path(r) for r in args.runs], Path(args.output), title=args.title)
    print(f"wrote {path}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    try:
        from . import bench
    except ImportError:  # pragma: no cover - bench module optional during development
        return
    p = sub.add_parser("bench", help="integer vs float PyTorch training-step speed on this machine")
    bench.add_arguments(p)
    p.set_defaults(func=bench.main)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained integer model as model.npz + a numpy-only infer.py",
                       description="Write DIR/model.npz (integer weights, exponents, static shifts and the graph; no "
                                   "pickles) and DIR/infer.py, a single-file numpy runner: python DIR/infer.py "
                                   "DIR/model.npz IMAGES.npy -o PRED.npy.")
    p.add_argument("run", help="run directory or checkpoint.pt")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export
    from .train import load

    path = export(load(args.run), args.output)
    print(json.dumps({"model_npz": str(path), "bytes": path.stat().st_size,
                      "runner": str(Path(args.output) / "infer.py")}, indent=2))
    return 0


def _add_trace(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="record every integer of a run's next training step (golden vectors), or "
                                     "check a trace",
                       description="niti trace RUN -o TRACE.npz records the step; niti trace --check TRACE.npz "
                                   "recomputes it from the recorded inputs and exits 0 when every tensor matches.")
    p.add_argument("path", help="RUN (a run directory or checkpoint) or, with --check, TRACE.npz")
    p.add_argument("-o", "--output", default=None, metavar="TRACE.npz")
    p.add_argument("--check", action="store_true", help="verify the trace PATH instead of writing one")
    p.set_defaults(func=_cmd_trace)


def _cmd_trace(args: argparse.Namespace) -> int:
    from .trace import TraceMismatch, check_trace, trace_run

    if args.check:
        try:
            n = check_trace(args.path)
        except TraceMismatch as exc:
            print(f"niti trace: MISMATCH {exc}", file=sys.stderr)
            return 1
        print(f"{args.path}: all {n} tensors match")
        return 0
    if not args.output:
        raise ValueError("give -o TRACE.npz (or --check to verify a trace)")
    fmt = trace_run(args.path, args.output)
    print(json.dumps({"trace": args.output, "tensors": len(fmt["tensors"]), "model": fmt["model"]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="niti", description="Integer-only neural network training (NITI).")
    parser.add_argument("--version", action="version", version=f"niti {__import__('niti').__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_trace(sub)
    _add_plot(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``niti`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # `train --nproc` re-launches with these
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # one line for the user; the traceback behind --debug
        if args.debug:
            raise
        print(f"niti: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, OSError)) else 1


def _one_line(exc: BaseException) -> str:
    """``exc``'s message and notes (e.g. where a checkpoint was saved); an unexpected error's on one line, typed."""
    text = str(exc)
    if not isinstance(exc, (ValueError, OSError)):  # ours are worded for the user; others get their type
        text = f"{type(exc).__name__}: {' '.join(text.split())}"
    notes = "; ".join(getattr(exc, "__notes__", ()))
    return f"{text}; {notes}" if notes else text


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
