"""The first steps of the 3-epoch VGG-small-7 runs with and without weight decay, integer and float (issue 12).

At 3 epochs the twin's weight decay helps it (67.10 against 63.74 % validation on seed 0) while the integer model's
decay at the same strength costs it (results/cifar-vgg7-3ep/). This trains each arm for the first S steps of the
3-epoch schedule (``niti.train.fit`` stopped after S steps, so the schedule is the full run's) from one seed and
prints, per weight tensor, the RMS of the real weights at step S, and the running training loss and accuracy of the
last logged steps: does the integer decay shrink the weights as the float one does, and do the arms already differ?

    python benchmarks/decay_probe.py --steps 200 --seed 1 --arms int-d17,int-d0,float-wd,float-nowd \\
        --runs runs/probe --out results/cifar-vgg7-3ep/decay-probe.json

Each arm writes its run directory under ``--runs`` (checkpoint at step S); the JSON holds the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from niti.cli import _config_from_args, build_parser  # noqa: E402
from niti.train import TrainingInterrupted, fit  # noqa: E402
from weight_range import real_weights  # noqa: E402

ARMS = {
    "int-d17": ["--decay-shift", "17"],  # the integer defaults (the twin's decay strength)
    "int-d0": ["--decay-shift", "0"],
    "float-wd": ["--arith", "float", "--lr", "0.05"],  # the twin's defaults (weight decay 5e-4)
    "float-nowd": ["--arith", "float", "--lr", "0.05", "--weight-decay", "0"],
}


def probe(arm: str, steps: int, seed: int, runs: Path, threads: int, data_dir: str | None) -> dict:
    out = runs / f"{arm}-s{seed}"
    argv = ["train", "--model", "vgg-small-7", "--epochs", "3", "--batch-size", "128", "--seed", str(seed),
            "--threads", str(threads), "--out", str(out), "--no-progress", *ARMS[arm]]
    if data_dir:
        argv += ["--data-dir", data_dir]
    try:
        fit(_config_from_args(build_parser().parse_args(argv)), stop_after_steps=steps)
    except TrainingInterrupted:
        pass  # the checkpoint at step S is written
    rms = {name: float(w.pow(2).mean().sqrt()) for name, w, _ in real_weights(str(out))}
    logged = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return {"rms": rms, "last_logged": logged[-3:], "command": "python -m niti " + " ".join(argv)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of " + ", ".join(ARMS))
    p.add_argument("--runs", default="runs/probe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True, help="JSON file (arms already in it are kept)")
    a = p.parse_args()
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    for arm in a.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        result[arm] = probe(arm, a.steps, a.seed, Path(a.runs), a.threads, a.data_dir)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(arm, json.dumps(result[arm]["rms"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
