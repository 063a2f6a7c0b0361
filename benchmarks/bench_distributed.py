"""Data-parallel integer training: step time, images/s and bytes communicated per step, 1 vs N processes.

Each process count runs the same global batches of real MNIST images (LeNet,
batch 256 by default) through ``niti.distributed.launch_command``; the N-process
run must end with the same weight hash as the 1-process run (checked and
recorded).  Bytes are the payloads handed to ``all_reduce`` per rank per step,
compared with an fp32 data-parallel step of the same model (4 bytes per
parameter) and with always sending the integer gradients as int64.  Writes
``<out>/bench_<model>_b<batch>.json`` and ``.md`` with the command, date and machine.

    python benchmarks/bench_distributed.py                        # lenet, batch 256, 1 and 2 processes
    python benchmarks/bench_distributed.py --steps 3 --warmup 1 --out /tmp/bench   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet", choices=["lenet"], help="MNIST model (real MNIST images)")
    p.add_argument("--batch", type=int, default=256, help="global batch size (split over the processes)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--nprocs", default="1,2", help="comma-separated process counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "results" / "distributed"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: a rank's report path
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")
    return args


# ------------------------------------------------------------------------------------------ one rank
def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from niti import build
    from niti.distributed import attach, init_from_env, shard, shutdown

    info = init_from_env(timeout_s=120)
    world = 1 if info is None else info.world_size
    total = args.warmup + args.steps
    with np.load(Path(args.data_dir) / "mnist.npz") as f:
        x = torch.from_numpy(np.ascontiguousarray(f["x_train"][:total * args.batch, ..., None]))
        y = torch.from_numpy(f["y_train"][:total * args.batch].astype(np.int64))
    model = build(args.model, seed=args.seed, total_steps=total)
    coll = attach(model, info) if info is not None else None
    times = []
    for s in range(total):
        if s == args.warmup and coll is not None:
            coll.stats.reset()
        xb, yb = shard(x[s * args.batch:(s + 1) * args.batch], y[s * args.batch:(s + 1) * args.batch], info)
        if info is not None:
            dist.barrier()  # time whole-job steps, not one rank's head start
        t0 = time.perf_counter()
        model.train_step(xb, yb)
        times.append(time.perf_counter() - t0)
    report = {
        "rank": 0 if info is None else info.rank,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "step_s": times[args.warmup:],
        "weights_sha256": model.weights_sha256(),
        "parameters": sum(p.m.numel() for p in model.parameters()),
        "comm": None if coll is None else {**vars(coll.stats), "total_bytes": coll.stats.total_bytes,
                                           "total_calls": coll.stats.total_calls},
    }
    Path(args.worker).with_name(f"{Path(args.worker).name}.rank{report['rank']}").write_text(json.dumps(report))
    shutdown()


# ------------------------------------------------------------------------------------------ driver
def _machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": os.getloadavg()}


def run_one(args: argparse.Namespace, nproc: int, tmp: Path) -> dict:
    from niti.distributed import launch_command

    stem = tmp / f"n{nproc}"
    cmd = [sys.executable, __file__, "--worker", str(stem), "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--data-dir", args.data_dir]
    code = launch_command(nproc, cmd)
    if code != 0:
        raise SystemExit(f"the {nproc}-process run failed with exit code {code}")
    ranks = [json.loads(stem.with_name(f"{stem.name}.rank{r}").read_text()) for r in range(nproc)]
    hashes = {r["weights_sha256"] for r in ranks}
    if len(hashes) != 1:
        raise SystemExit(f"the {nproc} ranks ended with different weights: {sorted(hashes)}")
    # The job's step time is its slowest rank's.
    step_s = [max(ts) for ts in zip(*(r["step_s"] for r in ranks))]
    mean = statistics.fmean(step_s)
    r0 = ranks[0]
    out = {"nproc": nproc, "threads_per_process": r0["threads"], "step_s_mean": mean,
           "step_s_median": statistics.median(step_s), "step_s_min": min(step_s),
           "images_per_s": args.batch / mean, "weights_sha256": r0["weights_sha256"], "parameters": r0["parameters"]}
    if r0["comm"] is not None:
        c = r0["comm"]
        out["comm_per_step"] = {k: c[k] / args.steps for k in c}
    return out


def write_markdown(path: Path, result: dict) -> None:
    lines = [f"# Data-parallel integer training: {result['model']}, global batch {result['batch']}", "",
             f"- command: `{result['command']}`", f"- date: {result['date']}",
             f"- machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['platform']}, torch {result['machine']['torch']}; load average at start "
             f"{', '.join(f'{v:.2f}' for v in result['machine']['load_average_at_start'])}",
             f"- {result['steps']} timed steps after {result['warmup']} warm-up steps, real MNIST training images; "
             f"every process count ends with the same weights: **{result['bit_identical']}** "
             f"(sha256 {result['runs'][0]['weights_sha256'][:16]}…)", "",
             "| processes | threads/process | step time mean (ms) | median (ms) | images/s | speed-up |",
             "|---:|---:|---:|---:|---:|---:|"]
    base = result["runs"][0]["step_s_mean"]
    for r in result["runs"]:
        lines.append(f"| {r['nproc']} | {r['threads_per_process']} | {1e3 * r['step_s_mean']:.1f} | "
                     f"{1e3 * r['step_s_median']:.1f} | {r['images_per_s']:.0f} | {base / r['step_s_mean']:.2f}× |")
    p = result["parameters"]
    lines += ["", f"Bytes handed to `all_reduce` per rank per step ({p:,} integer weights):", "",
              "| processes | gradient sums | gradient widths | activation/error widths | all-reduce calls | total | "
              "vs fp32 (4 B/param) | vs int64 gradients | time in all_reduce (ms) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        c = r.get("comm_per_step")
        if c is None:
            continue
        lines.append(f"| {r['nproc']} | {c['grad_bytes']:,.0f} | {c['grad_width_bytes']:,.0f} | "
                     f"{c['width_bytes']:,.0f} | {c['total_calls']:.0f} | {c['total_bytes']:,.0f} | "
                     f"{c['total_bytes'] / (4 * p):.3f}× | {c['total_bytes'] / (8 * p + c['width_bytes']):.3f}× | "
                     f"{1e3 * c['seconds']:.1f} |")
    lines += ["", "fp32 data-parallel step of the same model: 4 × parameters = "
              f"{4 * p:,} bytes per rank per step (gradient all-reduce only). Integer gradients travel as int32 "
              "whenever world size × (2^bits − 1) fits (checked per tensor with one 8-byte MAX), else int64 "
              f"(always-int64 would be {8 * p:,} bytes). Bytes are payloads per rank; a ring all-reduce moves "
              "about 2(W−1)/W times that over the wire.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    nprocs = [int(n) for n in args.nprocs.split(",")]
    machine = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_one(args, n, Path(tmp)) for n in nprocs]
    result = {
        "model": args.model, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "parameters": runs[0]["parameters"],
        "bit_identical": len({r["weights_sha256"] for r in runs}) == 1,
        "fp32_bytes_per_step": 4 * runs[0]["parameters"],
        "int64_gradient_bytes_per_step": 8 * runs[0]["parameters"],
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_{args.model}_b{args.batch}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    write_markdown(stem.with_suffix(".md"), result)
    print(stem.with_suffix(".md").read_text())
    if not result["bit_identical"]:
        print("ERROR: process counts ended with different weights", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
