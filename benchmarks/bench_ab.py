"""The integer training step of two checkouts of niti, measured in turn on one machine (issue 17).

``niti bench`` compares the integer step with float PyTorch; on a shared host whose speed drifts by a third
within an hour, two such runs taken at different times cannot say what a code change bought.  This runs the
integer worker of checkout A, then of checkout B, round after round (each a fresh process, the same model,
batch, threads and steps), and reports each side's median over rounds and the paired per-round ratio A / B.

    python benchmarks/bench_ab.py --a /tmp/old --b . --models lenet,resnet-20 --rounds 5 \\
        --out results/bench-xeon-amx-v2/ab.md

Each checkout runs with its own ``PYTHONPATH`` and compiles its own C sources (the cache is keyed by source),
so the two sides share nothing but the machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.bench import machine_info  # noqa: E402

BATCH = {"lenet": 256, "vgg-small-7": 128, "resnet-20": 128}


def measure(checkout: Path, model: str, threads: int, steps: int, warmup: int) -> tuple[float, int]:
    """The median integer step time and the peak memory (bytes, ``niti bench``'s measure) of ``checkout``'s ``niti``
    in a fresh process (its own worker)."""
    req = {"model": model, "batch_size": BATCH[model], "threads": threads, "steps": steps, "warmup": warmup,
           "input_shape": None, "profile": False}
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    proc = subprocess.run([sys.executable, "-c", "from niti.bench import _integer_worker_main as m; m()",
                           json.dumps(req)], capture_output=True, text=True, env=env, cwd=checkout, timeout=3600)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("NITI_BENCH_RESULT "):
            result = json.loads(line[len("NITI_BENCH_RESULT "):])
            return result["step_s"], result["peak_bytes"]
    raise RuntimeError(f"{checkout}: worker exited with status {proc.returncode}: {proc.stderr.strip()[-2000:]}")


def describe(checkout: Path) -> str:
    """The checkout's commit, and whether its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="checkout A (the baseline), a folder holding niti/")
    p.add_argument("--b", required=True, help="checkout B (the change)")
    p.add_argument("--models", default="lenet,resnet-20,vgg-small-7", help="comma-separated, of " + ", ".join(BATCH))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    a, b = Path(args.a), Path(args.b)
    for side in (a, b):
        if not side.joinpath("niti", "__init__.py").is_file():
            raise SystemExit(f"{side} holds no niti/ package")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in models if m not in BATCH]:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(BATCH)}")
    given = sys.argv[1:] if argv is None else argv
    started = _dt.datetime.now(_dt.timezone.utc)
    rows = []
    for model in models:
        times: dict[str, list[float]] = {"a": [], "b": []}
        peaks: dict[str, list[int]] = {"a": [], "b": []}
        for r in range(args.rounds):
            for key, side in (("a", a), ("b", b)):
                step, peak = measure(side, model, args.threads, args.steps, args.warmup)
                times[key].append(step)
                peaks[key].append(peak)
            print(f"{model} round {r + 1}: A {times['a'][-1] * 1e3:.1f} ms, B {times['b'][-1] * 1e3:.1f} ms",
                  flush=True)
        ratios = [x / y for x, y in zip(times["a"], times["b"])]
        rows.append((model, statistics.median(times["a"]), statistics.median(times["b"]), ratios,
                     statistics.median(peaks["a"]), statistics.median(peaks["b"])))
    info = machine_info()
    lines = ["# Integer training step: checkout A against checkout B, in turn", "",
             f"- command: `python {' '.join([str(Path(__file__).relative_to(ROOT)), *given])}`",
             f"- date (UTC): {started.isoformat(timespec='seconds')}; machine: {info['cpu']} "
             f"({info['logical_cpus']} logical CPUs, AMX-INT8 {info['amx_int8']}); {args.threads} threads",
             f"- A: {describe(a)}; B: {describe(b)}",
             f"- each round: A's integer worker, then B's, each a fresh process timing {args.steps} steps after "
             f"{args.warmup} warm-up steps (median); below, the median over {args.rounds} rounds and every "
             "round's ratio A / B (> 1: B is faster), and the median peak memory (`niti bench`'s: VmHWM after "
             "warm-up less the RSS before the model)", "",
             "| model | batch | A ms/step | B ms/step | A / B (median of rounds) | A / B per round | "
             "A peak MiB | B peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for model, ta, tb, ratios, pa, pb in rows:
        lines.append(f"| {model} | {BATCH[model]} | {ta * 1e3:.1f} | {tb * 1e3:.1f} | "
                     f"{statistics.median(ratios):.2f} | {', '.join(f'{v:.2f}' for v in ratios)} | "
                     f"{pa / 2**20:.1f} | {pb / 2**20:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
