"""How long a fresh process waits for its first training step, with cold and with warm compile caches (issue 17).

Each measurement is a new Python process that imports niti, builds a model and takes training steps on a random
batch; the parent times the whole process from spawn. "Cold" points inductor's cache (TORCHINDUCTOR_CACHE_DIR) and
niti's C-kernel cache (XDG_CACHE_HOME) at empty temporary directories; "warm" runs again on the caches that the
cold run filled, as a user's second run would. Reported per model: wall time from spawn to the end of the first
step, and its parts (import, build, first step, a second step for comparison). Results: results/first-step/.

    python benchmarks/first_step.py --models lenet,vgg-small-7-quarter,resnet-20 --warm-repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The child: times its own import, build and two steps, and prints them as one JSON line.
_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
import niti
torch.set_num_threads(int(sys.argv[3]))
t1 = time.perf_counter()
model = niti.build(sys.argv[1])
h, w, c = model.arch.input_shape
gen = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (int(sys.argv[2]), h, w, c), dtype=torch.uint8, generator=gen)
labels = torch.randint(0, model.arch.num_classes, (int(sys.argv[2]),), generator=gen)
t2 = time.perf_counter()
model.train_step(images, labels)
t3 = time.perf_counter()
model.train_step(images, labels)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "first_step_s": t3 - t2, "second_step_s": t4 - t3,
                  "in_process_to_first_step_s": t3 - t0}))
"""


def measure(model: str, batch: int, threads: int, env: dict) -> dict:
    """One fresh process: its timings, and the wall time from spawn until it printed them."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, model, str(batch), str(threads)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    row = json.loads(out.stdout.strip().splitlines()[-1])
    # The process ends right after its second step: spawn → end of first step = wall − second step − exit.
    row["spawn_to_first_step_s"] = wall - row["second_step_s"]
    row["process_wall_s"] = wall
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet,vgg-small-7-quarter,resnet-20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warm-repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "results" / "first-step"))
    a = p.parse_args()
    rows = {}
    for model in a.models.split(","):
        with tempfile.TemporaryDirectory() as caches:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(caches, "inductor"),
                   "XDG_CACHE_HOME": os.path.join(caches, "xdg")}
            cold = measure(model, a.batch_size, a.threads, env)
            warm = [measure(model, a.batch_size, a.threads, env) for _ in range(a.warm_repeats)]
        rows[model] = {"cold": cold, "warm": warm,
                       "warm_median_spawn_to_first_step_s": statistics.median(r["spawn_to_first_step_s"] for r in warm)}
        print(f"{model}: cold {cold['spawn_to_first_step_s']:.1f} s, warm "
              f"{rows[model]['warm_median_spawn_to_first_step_s']:.1f} s to the end of the first step", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/first_step.py " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
            "load_before": os.getloadavg()[0], "batch_size": a.batch_size, "threads": a.threads}
    (out / "first_step.json").write_text(json.dumps({**meta, "models": rows}, indent=2) + "\n")
    lines = ["# First training step of a fresh process (issue 17: ≤ 5 s on a warm cache)", "",
             f"- command: `{meta['command']}`", f"- date (UTC): {meta['date']}", f"- machine: {meta['machine']}",
             f"- batch {a.batch_size}, {a.threads} threads; load average before: {meta['load_before']:.2f}", "",
             "| model | cold: spawn → first step done (s) | warm: spawn → first step done (s, median) | warm: import "
             "/ build / first step / second step (s) | target ≤ 5 s warm |", "|---|---|---|---|---|"]
    for model, r in rows.items():
        w = min(r["warm"], key=lambda x: abs(x["spawn_to_first_step_s"] - r["warm_median_spawn_to_first_step_s"]))
        lines.append(f"| {model} | {r['cold']['spawn_to_first_step_s']:.1f} | "
                     f"{r['warm_median_spawn_to_first_step_s']:.1f} | {w['import_s']:.1f} / {w['build_s']:.1f} / "
                     f"{w['first_step_s']:.1f} / {w['second_step_s']:.2f} | "
                     f"{'yes' if r['warm_median_spawn_to_first_step_s'] <= 5 else '**no**'} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
