"""Page faults per training step with glibc's heap defaults and with the heap kept (``niti/heap.py``; issue 17).

Each measurement is a fresh process (the policy is set through the environment before Python starts, as
``niti bench --heap`` does): the integer model, or the float twin's fp32 step (``niti/_float_twin.py``), trains a
few warm-up steps, then this counts the minor page faults (``getrusage``) and reads the peak resident memory over the
timed steps.  Faults are the point; step times are printed too but on a shared machine only the faults are steady.

    python benchmarks/heap_faults.py --models lenet,vgg-small-7 --out results/heap-faults/README.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.bench import _float_spec, machine_info  # noqa: E402
from niti.heap import child_env  # noqa: E402

BATCH = {"lenet": 256, "vgg-small-7": 128, "resnet-20": 128}

_WORKER = r"""
import json, resource, statistics, sys, time, torch
req = json.loads(sys.argv[1])
torch.set_num_threads(req["threads"])
if req["side"] == "integer":
    from niti.models import build
    model = build(req["model"])
    g = torch.Generator().manual_seed(0)
    h, w, c = model.arch.input_shape
    x = torch.randint(0, 256, (req["batch"], h, w, c), dtype=torch.uint8, generator=g)
    y = torch.randint(0, model.arch.num_classes, (req["batch"],), generator=g)
    step = lambda: model.train_step(x, y)
else:
    sys.path.insert(0, req["niti_dir"])
    import _float_twin as t
    spec = req["spec"]
    net = t.build(spec).to(memory_format=torch.channels_last).train()
    hh, ww, cc = spec["input_shape"]
    x = torch.randn(req["batch"], cc, hh, ww).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec["num_classes"], (req["batch"],))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
for _ in range(3):
    step()
f0, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
for _ in range(req["steps"]):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / req["steps"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"faults_per_step": faults, "step_s": statistics.median(times), "max_rss_bytes": peak}))
"""


def measure(model: str, side: str, policy: str, threads: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.update(child_env(policy))
    env["PYTHONPATH"] = str(ROOT)
    req = {"model": model, "side": side, "batch": BATCH[model], "threads": threads, "steps": steps,
           "spec": _float_spec(model), "niti_dir": str(ROOT / "niti")}
    out = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(req)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet,vgg-small-7")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = []
    for model in a.models.split(","):
        for side in ("integer", "fp32"):
            r = {policy: measure(model, side, policy, a.threads, a.steps) for policy in ("release", "keep")}
            rows.append(f"| {model} | {BATCH[model]} | {side} | {r['release']['faults_per_step']:,.0f} | "
                        f"{r['keep']['faults_per_step']:,.0f} | {r['release']['step_s'] * 1e3:.1f} | "
                        f"{r['keep']['step_s'] * 1e3:.1f} | {r['release']['max_rss_bytes'] / 2**20:.0f} | "
                        f"{r['keep']['max_rss_bytes'] / 2**20:.0f} |")
            print(rows[-1], flush=True)
    m = machine_info()
    report = "\n".join([
        "# Page faults per training step: glibc's heap defaults against the heap kept (`niti/heap.py`)", "",
        f"- command: `python {' '.join([str(Path(__file__).relative_to(ROOT)), *sys.argv[1:]])}`",
        f"- date (UTC): {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; machine: {m['cpu']} "
        f"({m['logical_cpus']} logical CPUs); {a.threads} thread(s); {a.steps} steps after 3 warm-up steps, each "
        "measurement a fresh process; the step times are medians on a machine that may be shared (the faults are "
        "the measurement); peak RSS is the process's whole (`ru_maxrss`), not `niti bench`'s training peak", "",
        "| model | batch | side | faults / step, glibc defaults | faults / step, heap kept | ms / step, defaults | "
        "ms / step, kept | peak RSS MiB, defaults | peak RSS MiB, kept |",
        "|---|---|---|---|---|---|---|---|---|", *rows, ""])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
