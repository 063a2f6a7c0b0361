"""Peak training-step memory, integer vs fp32, repeated in fresh processes and under glibc allocator settings (issue 17).

``niti bench`` measures peak memory once per side (VmHWM after warm-up minus
the RSS before the model is built).  On glibc that number moves by ±15 MiB
from process to process: the big temporaries of a step (VGG-small-7: ~350 MiB
of allocations ≥ 1 MiB per step) come from the heap once glibc's dynamic mmap
threshold has risen, and freed heap chunks stay resident.  This script runs
the same workers as ``niti bench`` ``--repeats`` times per side, once per
``MALLOC_MMAP_THRESHOLD_`` setting (``default`` leaves the variable unset;
a number fixes the threshold, so allocations at least that large are mapped
and unmapped each time), and writes the mean, min and max peak and the median
step time to ``<out>/peak_memory.json`` and ``<out>/README.md``.

    python benchmarks/peak_memory.py --model vgg-small-7 --repeats 3 --thresholds default,4194304
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.bench import _FLOAT_TWIN, _float_spec, _run_worker, machine_info  # noqa: E402

MIB = 2**20


def _measure(side: str, req: dict, threshold: str) -> dict:
    env_before = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if threshold == "default":
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    else:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = threshold
    try:
        if side == "integer":
            cmd = [sys.executable, "-c", "from niti.bench import _integer_worker_main as m; m()", json.dumps(req)]
        else:
            cmd = [sys.executable, "-P", str(_FLOAT_TWIN), json.dumps({**req, "precision": "fp32"})]
        return _run_worker(cmd, 3600, None)
    finally:
        if env_before is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = env_before


def _stats(runs: list[dict]) -> dict:
    peaks = [r["peak_bytes"] / MIB for r in runs]
    steps = [r["step_s"] for r in runs]
    return {"peak_mib": peaks, "peak_mean_mib": statistics.mean(peaks), "peak_min_mib": min(peaks),
            "peak_max_mib": max(peaks), "step_s": steps, "step_median_s": statistics.median(steps)}


def report(data: dict) -> str:
    lines = [f"# Peak training-step memory: {data['model']} batch {data['batch_size']}, integer vs fp32", "",
             f"- command: `{data['command']}`", f"- date (UTC): {data['date']}",
             f"- machine: {data['machine']['cpu']} ({data['machine']['logical_cpus']} logical CPUs); "
             f"{data['machine']['platform']}",
             f"- {data['repeats']} fresh processes per side and setting, {data['threads']} threads, {data['warmup']} "
             f"warm-up and {data['steps']} measured steps each; peak = VmHWM (reset after warm-up) minus the RSS "
             "before the model was built, as `niti bench`",
             f"- load average before → after: {data['load_before']:.2f} → {data['load_after']:.2f} (step times are "
             "only comparable within one run of this script)", "",
             "| MALLOC_MMAP_THRESHOLD_ | integer peak MiB, mean (min–max) | fp32 peak MiB, mean (min–max) | "
             "int / fp32 (≤ 0.5) | integer step s | fp32 step s |", "|---|---|---|---|---|---|"]
    for thr, d in data["settings"].items():
        i, f = d["integer"], d["fp32"]
        ratio = i["peak_mean_mib"] / f["peak_mean_mib"]
        lines.append(f"| {thr} | {i['peak_mean_mib']:.1f} ({i['peak_min_mib']:.1f}–{i['peak_max_mib']:.1f}) | "
                     f"{f['peak_mean_mib']:.1f} ({f['peak_min_mib']:.1f}–{f['peak_max_mib']:.1f}) | {ratio:.2f} | "
                     f"{i['step_median_s']:.3f} | {f['step_median_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg-small-7")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--thresholds", default="default,4194304",
                   help="comma-separated MALLOC_MMAP_THRESHOLD_ values in bytes; 'default' leaves it unset")
    p.add_argument("--out", default=str(ROOT / "results" / "peak-memory"))
    args = p.parse_args(argv)
    thresholds = [t.strip() for t in args.thresholds.split(",") if t.strip()]
    bad = [t for t in thresholds if t != "default" and not t.isdigit()]
    if bad or args.repeats < 1:
        raise SystemExit(f"thresholds must be 'default' or byte counts (got {bad}); repeats >= 1")
    req = {"model": args.model, "batch_size": args.batch_size, "threads": args.threads, "steps": args.steps,
           "warmup": args.warmup, "input_shape": None, "spec": _float_spec(args.model)}
    data = {"model": args.model, "batch_size": args.batch_size, "threads": args.threads, "steps": args.steps,
            "warmup": args.warmup, "repeats": args.repeats,
            "command": "python " + " ".join(shlex.quote(a) for a in
                                            ["benchmarks/peak_memory.py"] + (sys.argv[1:] if argv is None else argv)),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
            "load_before": os.getloadavg()[0], "settings": {}}
    for thr in thresholds:
        sides = {}
        for side in ("integer", "fp32"):
            runs = []
            for k in range(args.repeats):
                r = _measure(side, req, thr)
                if "error" in r:
                    raise SystemExit(f"{side} worker failed ({thr}): {r['error']}")
                runs.append(r)
                print(f"{thr} {side} {k}: peak {r['peak_bytes'] / MIB:.1f} MiB, step {r['step_s']:.3f} s", flush=True)
            sides[side] = _stats(runs)
        data["settings"][thr] = sides
    data["load_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peak_memory.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "README.md").write_text(report(data))
    print(report(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
