"""Training-step speed and memory: integer NITI vs float PyTorch on this CPU (issues 4, 14, 17).

Runs ``niti.bench.run_bench`` for VGG-small-7 (batch 128) and LeNet (batch 256)
on 2 threads and writes ``<out>/<model>-b<batch>-t<threads>.json`` plus
``<out>/README.md``: the exact command, date, machine (lscpu model name),
load average, and a table against the issue's targets.  Run it on an
otherwise idle machine: every number is a wall-clock median.

    python benchmarks/bench_step.py                                   # the full benchmark
    python benchmarks/bench_step.py --steps 2 --warmup 1 --out /tmp/bench --models lenet   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.bench import format_report, run_bench  # noqa: E402

#: (model, batch size), and issue 17's targets: speed-up over fp32 (VGG-small-7 also >= 2x bf16); int8 products
#: >= 85 % of the measured int8 peak and (VGG) >= 85 % of the step; peak memory <= 0.5x fp32.
CONFIGS = {"vgg-small-7": 128, "lenet": 256, "resnet-20": 128, "resnet-18": 32}  # ResNet-18: issue 14's timing
TARGET_SPEEDUP = {"vgg-small-7": 4.0, "lenet": 2.0, "resnet-20": 3.0}
GOAL_SPEEDUP: dict[str, float] = {}
#: Issue 17's speed-up over bf16 autocast (VGG-small-7 only; the other rows report it without a target).
TARGET_VS_BF16 = {"vgg-small-7": 2.0}
PRODUCTS_TARGET = 0.85


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(CONFIGS), help="comma-separated, of " + ", ".join(CONFIGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat each model's measurements in turn this many times (medians: a drifting machine)")
    p.add_argument("--bf16", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--omp-wait-policy", choices=("active", "passive"), default=None,
                   help="OMP_WAIT_POLICY for every measurement ('passive' if the machine is not idle)")
    p.add_argument("--heap", choices=("release", "keep"), default="release",
                   help="glibc's policy for freed memory, every measurement alike (niti/heap.py)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite <out>/README.md from the JSON files already there (no measurement)")
    return p.parse_args(argv)


def _check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _ms(d: dict) -> str:
    if "step_s" in d:
        return f"{d['step_s'] * 1e3:.1f}"
    return "skipped (see report)" if "skipped" in d else "error (see JSON)"


def _row(r: dict) -> str:
    s = r["summary"]
    cells = [r["model"], str(r["batch_size"]), _ms(r["integer"]), _ms(r["fp32"]), _ms(r["bf16"])]
    speed, target, goal = s.get("speedup_vs_fp32"), TARGET_SPEEDUP.get(r["model"]), GOAL_SPEEDUP.get(r["model"])
    cells.append(f"{speed:.2f}× ({_check(speed >= target if target else None)})" if speed else "n/a")
    cells.append((f"≥ {target}" + (f" (goal {goal})" if goal else "")) if target else "")
    bf16 = s.get("speedup_vs_bf16")
    bf16_target = TARGET_VS_BF16.get(r["model"])
    cells.append(f"{bf16:.2f}× ({_check(bf16 >= bf16_target if bf16_target else None)})" if bf16 else "n/a")
    cells.append(f"{s['integer_images_per_s']:.0f}" if s.get("integer_images_per_s") else "n/a")
    mem, eff, frac = (s.get(k) for k in ("memory_integer_over_fp32", "int_mm_fraction_of_peak",
                                         "int_mm_fraction_of_step"))
    cells.append(f"{mem:.2f} ({_check(mem <= 0.5)})" if mem is not None else "n/a")
    cells.append(f"{eff:.0%} ({_check(eff >= PRODUCTS_TARGET)})" if eff is not None else "n/a")
    cells.append(f"{frac:.0%} ({_check(frac >= PRODUCTS_TARGET)})" if frac is not None else "n/a")
    cells.append(f"{r['load_average_before'][0]:.2f} → {r['load_average_after'][0]:.2f}")
    return "| " + " | ".join(cells) + " |"


def summary_markdown(results: list[dict], command: str) -> str:
    first = results[0]
    lines = [
        "# Training-step benchmark: integer NITI vs float PyTorch",
        "",
        f"- command: `{command}`",
        f"- date (UTC): {first['date']}",
        f"- machine: {first['machine']['cpu']} ({first['machine']['logical_cpus']} logical CPUs, "
        f"AVX512-VNNI {first['machine']['avx512_vnni']}, AMX-INT8 {first['machine'].get('amx_int8', 'not recorded')}, "
        f"native bf16 {first['machine']['native_bf16']}); "
        f"{first['machine']['platform']}",
        f"- threads: {first['threads']}; OMP_WAIT_POLICY {first.get('omp_wait_policy') or 'unset'}; "
        f"heap {first.get('heap', 'release')} (glibc's freed memory, both sides: niti/heap.py); timed steps "
        f"{first['steps']} after {first['warmup']} warm-up steps; median step time"
        + (f", then the median over {first['rounds']} rounds" if first.get("rounds", 1) > 1 else ""),
        "- each measurement ran in its own fresh process, one after another"
        + (" (integer, fp32, bf16, then again, round after round)" if first.get("rounds", 1) > 1 else "")
        + "; the float baseline imports torch only (fp32, channels_last, oneDNN, autograd, SGD with momentum)",
        "- memory: VmHWM (peak mark reset after warm-up) minus VmRSS before the model was built",
        "",
        "| model | batch | integer ms/step | fp32 ms/step | bf16 ms/step | speed-up vs fp32 | target | "
        "vs bf16 (VGG ≥ 2.0) | int img/s | memory int/fp32 (≤ 0.5) | int8 products % of peak (≥ 85) | "
        "products % of step (≥ 85) | load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(_row(r))
    lines += ["", "Per-run reports (the integer step profiled once, split into `_int_mm` and everything else):", ""]
    for r in results:
        lines += ["```", format_report(r), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(CONFIGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = [json.loads(p.read_text()) for m in models for p in sorted(out.glob(f"{m}-b*-t*.json"))]
        if not saved:
            raise SystemExit(f"no benchmark JSON files in {out}")
        (out / "README.md").write_text(summary_markdown(saved, saved[0]["command"]) + "\n")
        print(f"wrote {out / 'README.md'}")
        return 0
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(__file__).relative_to(ROOT))]
                                   + (sys.argv[1:] if argv is None else argv))
    results = []
    for model in models:
        r = run_bench(model, CONFIGS[model], args.threads, args.steps, args.warmup, bf16=args.bf16,
                      omp_wait_policy=args.omp_wait_policy, rounds=args.rounds, heap=args.heap)
        r["command"] = command
        path = out / f"{model}-b{CONFIGS[model]}-t{args.threads}.json"
        path.write_text(json.dumps(r, indent=2) + "\n")
        print(format_report(r), flush=True)
        print(f"wrote {path}", flush=True)
        results.append(r)
    (out / "README.md").write_text(summary_markdown(results, command) + "\n")
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
