"""One-shot GPU check of niti on a CUDA machine: parity tests, step times against float PyTorch, one real epoch.

Parts, each recorded even when another fails, all inside one time budget
(default 450 s, so the whole script stays under 8 minutes on one H200):

(a) ``pytest tests/test_cuda.py tests/test_triton.py`` compiled (no Triton
    interpreter): CPU vs GPU bit-identity of ``int_mm_cuda``, both CUDA
    convolution backends and whole training steps; the log is saved.
(b) VGG-small-7 training-step time at batch 256 on real CIFAR-10 images, and the host
    synchronisations of one integer step (CUDA's sync debug mode and ``niti.audit.HostReads``):
    integer niti (Triton implicit-GEMM conv and im2col + ``_int_mm``) against
    the same architecture in float PyTorch (``niti.baseline``'s network,
    channels_last, cudnn.benchmark, SGD with momentum) in fp32 and in
    bf16 autocast; medians over timed steps after warm-up, with ratios.
(c) One full CIFAR-10 epoch of integer VGG-small-7 end to end (seeded
    shuffle, integer crop + flip on a prefetch thread, batch 256), seconds per
    epoch against the reference implementation's ~20 s, then test accuracy.

Writes ``gpu_check.json`` (rewritten after every part), ``gpu_check.md`` and
``pytest.log`` to the output folder.  Without CUDA it records that and runs
only what needs no GPU; ``--dry-run`` only checks arguments, imports and data.

    python benchmarks/gpu_check.py                 # writes to $OUT, else results/gpu
    python benchmarks/gpu_check.py /tmp/gpu --data ../shared/data/cifar10.npz --budget 420
    python benchmarks/gpu_check.py --dry-run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the device machine runs the checkout without installing it

REFERENCE_EPOCH_S = 20.0  # the reference implementation (PyTorch 1.7 + CUTLASS) on a tensor-core GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu"),
                   help="output folder (default: $OUT, else results/gpu)")
    p.add_argument("--data", default=None,
                   help="cifar10.npz or its folder (default: first found of ../shared/data, ./shared/data, "
                        "/work/shared/data); its folder must also hold mnist.npz for the parity tests")
    p.add_argument("--budget", type=float, default=450.0, help="hard time budget for all parts, seconds")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration in (b)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration in (b)")
    p.add_argument("--parts", default="abc", help="which parts to run, e.g. 'bc'")
    p.add_argument("--dry-run", action="store_true", help="check arguments, imports and data; run nothing")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu only smoke-tests (b) and (c) here (use a small --batch); results are for cuda")
    args = p.parse_args(argv)
    if not set(args.parts) <= set("abc") or not args.parts:
        p.error(f"--parts takes letters from 'abc', got {args.parts!r}")
    if args.budget <= 0 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--budget, --batch and --steps must be positive, --warmup non-negative")
    return args


def find_data(explicit: str | None) -> Path | None:
    """cifar10.npz: the given path, else the shared data beside or inside the checkout."""
    if explicit:
        path = Path(explicit).resolve()
        return path / "cifar10.npz" if path.is_dir() else path
    for d in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data", Path("/work/shared/data")):
        if (d / "cifar10.npz").exists():
            return (d / "cifar10.npz").resolve()
    return None


class Report:
    """The JSON record, written to disk after every change so a killed run still leaves its results."""

    def __init__(self, out: Path, args: argparse.Namespace, start: float) -> None:
        self.path = out / "gpu_check.json"
        self.start = start
        self.data: dict = {"command": " ".join([sys.executable, *sys.argv]), "budget_s": args.budget,
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "parts": {}}
        self.save()

    def part(self, name: str, value: dict) -> None:
        self.data["parts"][name] = value
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:  # recorded, not fatal: the im2col backend still runs
        env["triton"] = f"unavailable: {type(exc).__name__}: {exc}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sm_count=props.multi_processor_count,
                   capability=list(torch.cuda.get_device_capability(0)),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


# ----------------------------------------------------------------------------------------------- (a) parity tests
def part_a(out: Path, data: Path | None, timeout: float) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # compiled kernels on the GPU
    env["NITI_COMPILE"] = "0"  # CPU references as eager twins: no inductor compile time inside the budget
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if data is not None:
        env["NITI_SHARED_DATA"] = str(data.parent)  # conftest's mnist/cifar10 fixtures
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--durations=10",
           "tests/test_cuda.py", "tests/test_triton.py"]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(10.0, timeout))
        log, rc, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:  # captured output comes back as bytes here, even with text=True
        log = "".join(o.decode(errors="replace") if isinstance(o, bytes) else o
                      for o in (exc.stdout, exc.stderr) if o)
        rc, timed_out = None, True
    (out / "pytest.log").write_text(log)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", log[-3000:])}
    return {"command": " ".join(cmd), "returncode": rc, "timed_out": timed_out, "seconds": round(time.time() - t0, 1),
            "counts": counts, "ok": rc == 0, "tail": log[-1500:]}


# -------------------------------------------------------------------------------------------- (b) step timings
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time_steps(step: Callable[[], object], warmup: int, steps: int, deadline: float, device: str,
                hard_deadline: float) -> dict:
    """Median step time; past ``deadline`` only the first few timed steps still run (never past ``hard_deadline``)."""
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0  # includes Triton compilation / cuDNN autotuning
    for _ in range(max(0, warmup - 1)):
        if time.time() > min(deadline, hard_deadline):
            break
        step()
    _sync(device)
    times: list[float] = []
    for _ in range(steps):
        now = time.time()
        if now > hard_deadline or (now > deadline and len(times) >= min(3, steps)):
            break
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if not times:
        raise TimeoutError("time budget used up before any timed step")
    return {"median_ms": round(1000 * statistics.median(times), 3), "min_ms": round(1000 * min(times), 3),
            "max_ms": round(1000 * max(times), 3), "timed_steps": len(times), "warmup_steps": warmup,
            "first_step_s": round(first, 2)}


def _real_batch(data: Path, n: int, device: str):  # noqa: ANN202
    import numpy as np
    import torch

    with np.load(data) as f:
        x, y = f["x_train"][:n], f["y_train"][:n].astype(np.int64)
    return torch.from_numpy(x.copy()).to(device), torch.from_numpy(y.copy()).to(device)


def count_syncs(step: Callable[[], object], device: str) -> dict:
    """Host synchronisations of one step: CUDA's own count (``set_sync_debug_mode`` warnings) and the reads
    of tensor values ``niti.audit.HostReads`` sees (the same count a CPU run reports), with their sites."""
    import warnings

    import torch

    from niti.audit import HostReads

    result: dict = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        result["cuda_sync_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
    with HostReads() as reads:
        step()
    result["host_reads"] = reads.total
    result["host_read_sites"] = dict(reads.sites.most_common(12))
    return result


def part_b(data: Path, args: argparse.Namespace, deadline: float, hard_deadline: float, report: Report) -> dict:
    import torch
    import torch.nn.functional as F

    import niti
    from niti.baseline import build_float
    from niti.kernels.cuda import CONV_BACKEND_ENV

    dev = args.device
    images, labels = _real_batch(data, args.batch, dev)
    result: dict = {"model": "vgg-small-7", "batch": args.batch, "configs": {}}
    n_configs = 4

    def share(i: int) -> float:  # each remaining configuration gets an equal slice of what is left
        return time.time() + (deadline - time.time()) / (n_configs - i)

    for i, backend in enumerate(("triton", "im2col")):
        name = f"int8_niti_{backend}"
        try:
            os.environ[CONV_BACKEND_ENV] = backend
            model = niti.build("vgg-small-7", seed=0).to(dev)
            result["configs"][name] = _time_steps(lambda: model.train_step(images, labels), args.warmup, args.steps,
                                                  share(i), dev, hard_deadline)
            result["configs"][name]["host_syncs_per_step"] = count_syncs(lambda: model.train_step(images, labels),
                                                                         dev)
            del model
        except Exception:
            result["configs"][name] = {"error": traceback.format_exc(limit=8)}
        finally:
            os.environ.pop(CONV_BACKEND_ENV, None)
        report.part("b_step_time", result)

    torch.backends.cudnn.benchmark = True
    for i, (name, dtype) in enumerate((("fp32_pytorch", None), ("bf16_autocast_pytorch", torch.bfloat16)), start=2):
        try:
            fm = build_float("vgg-small-7", seed=0)
            net = fm.net.to(dev).to(memory_format=torch.channels_last)
            mean, std = fm.mean.to(dev), fm.std.to(dev)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

            def float_step(net=net, opt=opt, mean=mean, std=std, dtype=dtype) -> None:
                x = ((images.float() / 255 - mean) / std).permute(0, 3, 1, 2)  # NHWC memory: channels_last
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    loss = F.cross_entropy(net(x), labels)
                loss.backward()
                opt.step()

            result["configs"][name] = _time_steps(float_step, max(args.warmup, 5), args.steps, share(i), dev,
                                                  hard_deadline)
            del net, opt
        except Exception:
            result["configs"][name] = {"error": traceback.format_exc(limit=8)}
        report.part("b_step_time", result)

    medians = {k: v["median_ms"] for k, v in result["configs"].items() if "median_ms" in v}
    for int_name in ("int8_niti_triton", "int8_niti_im2col"):
        for float_name in ("fp32_pytorch", "bf16_autocast_pytorch"):
            if int_name in medians and float_name in medians:
                result.setdefault("ratios_int_over_float", {})[f"{int_name}/{float_name}"] = round(
                    medians[int_name] / medians[float_name], 3)
    return result


# ------------------------------------------------------------------------------------------------- (c) one epoch
def part_c(data: Path, args: argparse.Namespace, deadline: float) -> dict:
    import torch

    import niti
    from niti.data import BatchIterator, random_crop_flip, read_npz

    dev = args.device
    t_load = time.time()
    ds = read_npz(data)
    load_s = time.time() - t_load
    batches = BatchIterator(ds.x_train, ds.y_train, args.batch, seed=0, epoch=0, shuffle=True,
                            augment=random_crop_flip, prefetch=True)
    # Compile every kernel shape the epoch will meet (full and last short batch) on a throwaway model first.
    t_warm = time.time()
    warm = niti.build("vgg-small-7", seed=1).to(dev)
    for n in sorted({args.batch, len(ds.x_train) % args.batch} - {0}):
        x, y = batches.batch(0)
        warm.train_step(x[:n].to(dev), y[:n].to(dev))
    _sync(dev)
    del warm
    warm_s = time.time() - t_warm

    model = niti.build("vgg-small-7", seed=0, total_steps=len(batches)).to(dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    seen = steps = 0
    partial = False
    t0 = time.time()
    for x, y in batches:
        if time.time() > deadline:
            partial = True
            break
        y = y.to(dev)
        logits = model.train_step(x.to(dev), y)
        correct += (logits.m.argmax(dim=1) == y).sum()
        seen += len(y)
        steps += 1
    _sync(dev)
    epoch_s = time.time() - t0
    result = {"model": "vgg-small-7", "batch": args.batch, "steps": steps, "images": seen,
              "steps_per_epoch": len(batches), "partial": partial, "data_load_s": round(load_s, 2),
              "warmup_compile_s": round(warm_s, 2), "epoch_s": round(epoch_s, 2),
              "train_accuracy_during_epoch": round(int(correct) / max(1, seen), 4),
              "reference_epoch_s": REFERENCE_EPOCH_S, "policy": str(model.policy),
              "weights_sha256": model.weights_sha256()}
    if partial:  # the budget cut the epoch: extrapolate from the steps that ran (none: no estimate)
        result["epoch_s_extrapolated"] = round(epoch_s * len(batches) / steps, 1) if steps else None
    per_epoch = result.get("epoch_s_extrapolated", epoch_s)
    result["ratio_to_reference"] = round(per_epoch / REFERENCE_EPOCH_S, 3) if per_epoch else None
    if time.time() < deadline:
        t_eval = time.time()
        hits = evaluated = 0
        for i in range(0, len(ds.x_test), 1000):
            if time.time() > deadline:
                break
            xt = torch.from_numpy(ds.x_test[i:i + 1000].copy()).to(dev)
            hits += int((model.predict(xt).cpu() == torch.from_numpy(ds.y_test[i:i + 1000].copy())).sum())
            evaluated += len(xt)
        result.update(test_accuracy=round(hits / max(1, evaluated), 4), test_images=evaluated,
                      eval_s=round(time.time() - t_eval, 2))
    return result


# ------------------------------------------------------------------------------------------------------- summary
def summary_markdown(report: dict) -> str:
    env = report.get("environment", {})
    lines = ["# niti GPU check", "", f"- date: {report['date']}", f"- command: `{report['command']}`",
             f"- machine: {env.get('gpu', 'no CUDA device')}; torch {env.get('torch')}, triton {env.get('triton')}, "
             f"CUDA {env.get('cuda')}, Python {env.get('python')}", f"- elapsed: {report.get('elapsed_s')} s "
             f"of a {report.get('budget_s')} s budget", ""]
    parts = report["parts"]
    a = parts.get("a_parity_tests")
    if a:
        lines += ["## (a) CPU vs GPU parity tests", "",
                  f"`{a.get('command', '')}` → return code {a.get('returncode')}, {a.get('counts')}"
                  f"{' (timed out)' if a.get('timed_out') else ''}; full log in pytest.log", ""]
    b = parts.get("b_step_time")
    if b:
        lines += [f"## (b) VGG-small-7 training step, batch {b.get('batch')}", "",
                  "| configuration | median ms | min ms | timed steps | first step s |", "|---|---|---|---|---|"]
        for name, v in b.get("configs", {}).items():
            if "median_ms" in v:
                lines.append(f"| {name} | {v['median_ms']} | {v['min_ms']} | {v['timed_steps']} "
                             f"| {v['first_step_s']} |")
            else:
                lines.append(f"| {name} | error: {v.get('error', '').strip().splitlines()[-1:]} | | | |")
        lines.append("")
        for k, v in b.get("ratios_int_over_float", {}).items():
            lines.append(f"- step time {k}: {v}×")
        lines.append("")
    c = parts.get("c_epoch")
    if c and "epoch_s" in c:
        per = c.get("epoch_s_extrapolated", c["epoch_s"])
        lines += ["## (c) One CIFAR-10 epoch, integer VGG-small-7, end to end", "",
                  f"- {c['steps']}/{c['steps_per_epoch']} steps in {c['epoch_s']} s"
                  f"{' (stopped by the budget; extrapolated ' + str(per) + ' s)' if c.get('partial') else ''}",
                  f"- seconds per epoch vs the reference's ~{REFERENCE_EPOCH_S:g} s: {c['ratio_to_reference']}×",
                  f"- kernel warm-up (compilation) before timing: {c['warmup_compile_s']} s",
                  f"- train accuracy during the epoch {c['train_accuracy_during_epoch']}, "
                  f"test accuracy after it {c.get('test_accuracy', 'not measured (budget)')}", ""]
    for name, v in parts.items():
        if isinstance(v, dict) and ("error" in v or "skipped" in v):
            lines += [f"- {name}: {v.get('skipped') or v['error'].strip().splitlines()[-1]}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    deadline = start + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, args, start)
    data = find_data(args.data)
    report.data["data"] = str(data) if data else None
    try:
        report.data["environment"] = environment()
    except Exception:
        report.data["environment"] = {"error": traceback.format_exc(limit=5)}
    report.save()
    cuda = bool(report.data["environment"].get("cuda_available")) or args.device == "cpu"
    report.data["device"] = args.device
    if data is None or not data.exists():
        report.data["data_error"] = f"cifar10.npz not found ({args.data or 'searched the shared data folders'})"
    if args.dry_run:
        import niti  # noqa: F401 - the import is the check
        from niti.kernels import cuda as _cuda  # noqa: F401

        report.data["dry_run"] = True
        report.save()
        (out / "gpu_check.md").write_text(summary_markdown(report.data))
        print(json.dumps(report.data, indent=2, default=str))
        return 0

    data_ok = data is not None and data.exists()
    if "a" in args.parts:
        try:  # at most 40 % of the budget: the later parts still need the GPU
            timeout = min(deadline - time.time(), 0.4 * args.budget)
            report.part("a_parity_tests", part_a(out, data if data_ok else None, timeout))
        except Exception:
            report.part("a_parity_tests", {"error": traceback.format_exc(limit=8)})
    for letter, key in (("b", "b_step_time"), ("c", "c_epoch")):
        if letter not in args.parts:
            continue
        if not cuda:
            report.part(key, {"skipped": "no CUDA device (torch.cuda.is_available() is False)"})
        elif not data_ok:
            report.part(key, {"skipped": report.data["data_error"]})
        else:
            try:
                if letter == "b":  # 45 % of what is left; the epoch gets the rest
                    soft = time.time() + 0.45 * (deadline - time.time())
                    report.part(key, part_b(data, args, soft, deadline - 60, report))
                else:
                    report.part(key, part_c(data, args, deadline - 10))
            except Exception:
                report.part(key, {"error": traceback.format_exc(limit=8)})
    report.save()
    md = summary_markdown(report.data)
    (out / "gpu_check.md").write_text(md)
    print(md)
    a = report.data["parts"].get("a_parity_tests")
    return 1 if a is not None and not a.get("ok") else 0


if __name__ == "__main__":
    sys.exit(main())
