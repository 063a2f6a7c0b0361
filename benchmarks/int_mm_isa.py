"""Does PyTorch's CPU int8 product use AMX here?  ``_int_mm`` and a bf16 matmul, one thread, with oneDNN free to
use every ISA and limited to AVX-512 VNNI (``ONEDNN_MAX_CPU_ISA``), each in a fresh process (issue 17).

    python benchmarks/int_mm_isa.py --out results/bench-xeon-amx/isa.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_WORKER = """
import json, time, torch
torch.set_num_threads(1)
m, k, n = 8192, 4608, 512
g = torch.Generator().manual_seed(0)
a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
x, y = a.to(torch.bfloat16), b.to(torch.bfloat16)
def best(f):
    f(); t = []
    for _ in range(5):
        s = time.perf_counter(); f(); t.append(time.perf_counter() - s)
    return min(t)
ops = 2 * m * k * n
print(json.dumps({"int_mm_gops": ops / best(lambda: torch._int_mm(a, b)) / 1e9,
                  "bf16_gflops": ops / best(lambda: x @ y) / 1e9}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = {}
    for isa in ("default", "AVX512_CORE_VNNI"):
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa != "default":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        res = subprocess.run([sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, check=True)
        out[isa] = {k: round(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}
        print(isa, out[isa])
    if a.out:
        a.out.write_text(json.dumps({"command": "python benchmarks/int_mm_isa.py --out " + str(a.out),
                                     "shape": [8192, 4608, 512], "threads": 1, "results": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
