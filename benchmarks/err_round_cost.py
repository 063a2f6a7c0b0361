"""What stochastic error rounding (the default) costs per training step against nearest errors (the reference's).

Both policies' models are built side by side in one process and stepped alternately on the same random batch, so
the machine's drift hits both arms alike; the median step time of each is reported (time only: two models in one
process share a memory peak, so memory is bench_step.py's job). Results: results/err-round-cost/README.md.

    python benchmarks/err_round_cost.py --models resnet-20,vgg-small-7-quarter,lenet --steps 6 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import niti

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet-20,vgg-small-7-quarter,lenet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "results" / "err-round-cost"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.models.split(","):
        arms = {"nearest": niti.RoundingPolicy.reference(), "stochastic": niti.RoundingPolicy()}
        models = {arm: niti.build(name, policy=policy, total_steps=1000) for arm, policy in arms.items()}
        h, w, c = models["nearest"].arch.input_shape
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (a.batch_size, h, w, c), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (a.batch_size,), generator=g)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for i in range(a.warmup + a.steps):
            for arm, model in models.items():
                t0 = time.perf_counter()
                model.train_step(x, y)
                if i >= a.warmup:
                    times[arm].append(time.perf_counter() - t0)
        med = {arm: statistics.median(t) * 1e3 for arm, t in times.items()}
        rows.append(f"| {name} | {a.batch_size} | {med['nearest']:.1f} | {med['stochastic']:.1f} | "
                    f"{med['stochastic'] / med['nearest']:.2f} |")
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join([
        "# The step-time cost of stochastic error rounding", "",
        f"- command: `python benchmarks/err_round_cost.py --models {a.models} --steps {a.steps} --warmup {a.warmup} "
        f"--threads {a.threads} --batch-size {a.batch_size}`",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}; commit {commit.strip()}; "
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        "AMD EPYC (AVX2, no VNNI)",
        "- both arms' models in one process, stepped alternately on one random batch; median of the timed steps",
        "", "| model | batch | nearest errors ms/step | stochastic errors ms/step | ratio |", "|---|---|---|---|---|",
        *rows, ""]))


if __name__ == "__main__":
    main()
