"""Exact int8 products on this CPU: niti's AVX2 kernel vs PyTorch's int32 ``mm`` and ``_int_mm`` (issue 17).

Times ``C = A @ B`` for the shapes a ResNet-20 / VGG-small-7 training step at batch 128 multiplies (im2col
forward, weight gradient, input gradient), each path checked against the int64 product first, and fp32
``torch.mm`` of the same shapes for scale (float is not a path niti may use).  Writes
``results/cpu-gemm/README.md`` and ``results.json``.  Run it on an otherwise idle machine.

    python benchmarks/cpu_gemm.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_suites import machine  # noqa: E402
from niti.kernels import cpu_gemm  # noqa: E402

#: (what, M, K, N): ResNet-20 layer1/layer3 and VGG-small-7 layer 2 at batch 128.
SHAPES = [
    ("resnet-20 16ch conv forward (im2col x W)", 128 * 32 * 32, 144, 16),
    ("resnet-20 16ch weight gradient", 144, 128 * 32 * 32, 16),
    ("resnet-20 64ch conv forward", 128 * 8 * 8, 576, 64),
    ("resnet-20 64ch input gradient", 128 * 8 * 8, 64, 576),
    ("vgg-small-7 128ch conv forward", 128 * 32 * 32, 1152, 128),
    ("vgg-small-7 128ch weight gradient", 1152, 128 * 32 * 32, 128),
]


def best_of(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "results" / "cpu-gemm"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if cpu_gemm.load() is None:
        raise SystemExit("the AVX2 kernel cannot be built on this machine")
    g = torch.Generator().manual_seed(0)
    rows = []
    for what, m, k, n in SHAPES:
        x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        w = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
        ref = x.long() @ w.long()
        assert torch.equal(cpu_gemm.gemm(x, w).long(), ref), what
        x32, w32, xf, wf = x.int(), w.int(), x.float(), w.float()
        assert torch.equal(torch.mm(x32, w32).long(), ref), what
        macs = m * k * n
        t = {"avx2": best_of(lambda: cpu_gemm.gemm(x, w), a.repeats),
             "int32_mm": best_of(lambda: torch.mm(x32, w32), a.repeats),
             "int_mm": best_of(lambda: torch._int_mm(x, w), 1) if m * k * n < 2**30 else None,  # a slow loop here
             "fp32_mm": best_of(lambda: torch.mm(xf, wf), a.repeats)}
        rows.append({"what": what, "m": m, "k": k, "n": n,
                     **{f"{key}_gmacs": (macs / v / 1e9 if v else None) for key, v in t.items()}})
        print(rows[-1], flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/cpu_gemm.py " + " ".join(sys.argv[1:]), "machine": machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "threads": a.threads}
    (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Exact int8 products on this CPU (G multiply-adds per second, best of repeats)", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- threads: {a.threads}; every integer path checked equal to the int64 product first", "",
             "| product | M | K | N | niti AVX2 | torch int32 mm | torch _int_mm | (fp32 mm, for scale) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(v):  # noqa: ANN001, ANN202
            return f"{v:.1f}" if v else "n/a"
        lines.append(f"| {r['what']} | {r['m']} | {r['k']} | {r['n']} | {f(r['avx2_gmacs'])} | "
                     f"{f(r['int32_mm_gmacs'])} | {f(r['int_mm_gmacs'])} | {f(r['fp32_mm_gmacs'])} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
