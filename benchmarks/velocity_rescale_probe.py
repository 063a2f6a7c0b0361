"""Resume a default run's mid-training checkpoint with the velocity following gb changes (issue 12).

``--velocity-rescale`` (docs/numerics.md §5) changes nothing before the first gb change, so a run of the
defaults checkpointed before it is also the rule-on run up to that step.  This script copies such a run
directory, builds the model as the run's own config says but with ``UpdateRule.velocity_rescale`` on (the config
itself is left as it is, so the resume check passes and ``config.json`` still names the default rule), and
continues it, all of it or ``--steps`` steps (then it stops as on SIGTERM, with a checkpoint).  Training accuracy
over every 20 steps lands in ``steps.jsonl`` and the epoch metrics in ``metrics.jsonl`` of the copy, to set
against the original run's.

    python benchmarks/velocity_rescale_probe.py RUN_DIR_AT_STEP_400 OUT_DIR [--steps N] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.train import loop  # noqa: E402
from niti.train.config import TrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="run directory with checkpoint.pt and config.json")
    ap.add_argument("out", type=Path, help="where the copy continues (must not exist, unless --continue)")
    ap.add_argument("--steps", type=int, default=None, help="steps to train in this call (default: to the end)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--continue", dest="cont", action="store_true", help="continue OUT (a copy made before)")
    a = ap.parse_args(argv)
    if not a.cont:
        if a.out.exists():
            raise SystemExit(f"{a.out} exists; pass --continue to continue it")
        shutil.copytree(a.source, a.out)
    cfg = json.loads((a.out / "config.json").read_text())
    config = TrainConfig.from_dict({**cfg, "out": str(a.out), "threads": a.threads, "progress": False})
    build = loop.build_model

    def build_with_rescale(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = build(*args, **kwargs)
        model.rule = dataclasses.replace(model.rule, velocity_rescale=True)
        return model

    loop.build_model = build_with_rescale
    torch.set_num_threads(a.threads)
    try:
        print(json.dumps(loop.fit(config, resume=True, stop_after_steps=a.steps)))
    except loop.TrainingInterrupted as exc:  # --steps reached: a checkpoint was written
        print(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
