"""Static (calibrated) vs per-batch inference shifts on trained runs: accuracy, batch dependence, export size.

For each run directory: test accuracy with both inference modes (batches of
1,000), how many of the first N test images get a different class when
predicted alone or in batches of 7 than in one batch of N, and the size of
the ``niti export`` of the run.  Writes results/static-inference/results.json
and the table (with the exact command, date, machine and wall time) as that folder's intro.md, then regenerates
its README.md with the training runs' table below it (``train_suites.write_report``).

    python benchmarks/static_inference.py runs/bench/static-inference/lenet-int-s0 \\
        runs/bench/static-inference/q-int-s0 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_suites import machine, write_report  # noqa: E402

import niti  # noqa: E402
from niti import data as niti_data  # noqa: E402
from niti.export import export  # noqa: E402
from niti import numerics  # noqa: E402
from niti.nn import module as nn_module  # noqa: E402
from niti.models import integer as integer_module  # noqa: E402
from niti.train.loop import default_dataset, load_model, training_split  # noqa: E402


def _ceil_shift(running: int, target_bits: int = 7) -> int:
    """The alternative static shift compared on validation: the ceiling of the running width."""
    return max(0, -((-running) >> numerics.CALIBRATION_FRAC_BITS) - target_bits)


def _val_accuracy_with(model, shift_fn, x: torch.Tensor, y: torch.Tensor) -> float:  # noqa: ANN001
    """Validation accuracy with static shifts chosen by ``shift_fn`` (patched in where niti calls it)."""
    saved = nn_module.static_shift, integer_module.static_shift
    nn_module.static_shift = integer_module.static_shift = shift_fn
    try:
        return 100.0 * float((_predict(model, x, 1000) == y).double().mean())
    finally:
        nn_module.static_shift, integer_module.static_shift = saved


def _predict(model, x: torch.Tensor, batch: int) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([model.predict(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def measure(run: Path, data_dir: str | None, n_alone: int) -> dict:
    model, config, _ = load_model(run)
    name = default_dataset(config)
    ds = niti_data.load_dataset(name, data_dir or config.data_dir)
    x, y = torch.from_numpy(ds.x_test.copy()), torch.from_numpy(ds.y_test.copy())
    row: dict = {"run": str(run), "model": config.model, "dataset": name, "steps": model.step,
                 "test_images": int(x.shape[0])}
    # The static-shift rule, chosen on the validation split: rounding the running width vs its ceiling.
    _, _, x_val, y_val, _ = training_split(config, ds, name)
    xv, yv = torch.from_numpy(x_val.copy()), torch.from_numpy(y_val.copy())
    model.inference = "static"
    row["val_accuracy_static_round"] = _val_accuracy_with(model, numerics.static_shift, xv, yv)
    row["val_accuracy_static_ceil"] = _val_accuracy_with(model, _ceil_shift, xv, yv)
    model.inference = "batch"
    row["val_accuracy_batch"] = 100.0 * float((_predict(model, xv, 1000) == yv).double().mean())
    for mode in ("static", "batch"):
        model.inference = mode
        whole = _predict(model, x, 1000)
        row[f"{mode}_test_accuracy"] = 100.0 * float((whole == y).double().mean())
        first = _predict(model, x[:n_alone], n_alone)
        row[f"{mode}_differ_alone"] = int((_predict(model, x[:n_alone], 1) != first).sum())
        row[f"{mode}_differ_batches_of_7"] = int((_predict(model, x[:n_alone], 7) != first).sum())
    model.inference = "static"
    with tempfile.TemporaryDirectory() as tmp:
        path = export(model, tmp)
        row["export_model_npz_bytes"] = path.stat().st_size
        row["int8_weights"] = sum(p.m.numel() for p in model.parameters())
    row["n_compared"] = n_alone
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--n-alone", type=int, default=1000, help="test images predicted alone and in batches of 7")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "results" / "static-inference"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    rows = [measure(Path(r), a.data_dir, a.n_alone) for r in a.runs]
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + shlex.join(["benchmarks/static_inference.py", *sys.argv[1:]]),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "wall_seconds": round(time.time() - t0, 1), "niti": niti.__version__}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Static vs per-batch inference shifts", "",
             "Generated by `benchmarks/static_inference.py` from the checkpoints of `benchmarks/train_suites.py "
             "static-inference` (default flags, one epoch, batch 128, seed 0; those runs' own summaries are beside "
             "this file). Static: each layer's shift is its calibrated running width (docs/numerics.md §12); "
             "per-batch: the batch's own (as in training).", "",
             f"Command: `{meta['command']}`; {meta['date']}; {meta['machine']}; wall {meta['wall_seconds']} s.", "",
             "Two static-shift rules compared on the validation split (the last 5,000 training images): rounding "
             "the running width (the default) against its ceiling. Validation accuracy (%), round / ceil / "
             "per-batch: " + "; ".join(f"{Path(r['run']).name} {r['val_accuracy_static_round']:.2f} / "
                                       f"{r['val_accuracy_static_ceil']:.2f} / {r['val_accuracy_batch']:.2f}"
                                       for r in rows) + ". The calibration's averaging weight (2**-4) was "
             "not tuned.", "",
             "| run | steps | test acc static (%) | test acc per-batch (%) | of first N differ alone: static / "
             "per-batch | in batches of 7: static / per-batch | model.npz bytes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['run']).name} ({r['model']}, {r['dataset']}) | {r['steps']} | "
                     f"{r['static_test_accuracy']:.2f} | {r['batch_test_accuracy']:.2f} | "
                     f"{r['static_differ_alone']} / {r['batch_differ_alone']} (N = {r['n_compared']}) | "
                     f"{r['static_differ_batches_of_7']} / {r['batch_differ_batches_of_7']} | "
                     f"{r['export_model_npz_bytes']:,} |")
    (out / "intro.md").write_text("\n".join(lines[2:]) + "\n")  # README's title comes from write_report
    rows_path = out / "runs.json"
    write_report("static-inference", out, json.loads(rows_path.read_text()) if rows_path.exists() else {})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
