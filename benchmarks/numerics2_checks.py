"""Numbers quoted in the README and docs/numerics.md for numerics 2, measured and written to results/numerics2-checks/.

(a) Integer softmax against the exact (float64) softmax: max and mean |p - p_exact| over logit exponents
    -20..+12, 2..1000 classes, random int8 rows of several fills plus adversarial rows, for the precise
    softmax and the first version's coarse one (where it does not raise).
(b) Initial logit exponent of LeNet (MNIST) and VGG-small-7 (CIFAR-10) on 32 real training images, 3 init seeds,
    numerics 2 vs the first version's scales (raw pixels, narrow init).

    python benchmarks/numerics2_checks.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import niti  # noqa: E402
from niti.nn.loss import GRAD_BITS, softmax_grad, softmax_grad_coarse  # noqa: E402
from niti.numerics import IntTensor  # noqa: E402


def rows(k: int, g: torch.Generator) -> torch.Tensor:
    fixed = [[127] * k, [-127] * k, [0] * k, [127] + [-127] * (k - 1), [127, 126] + [-127] * (k - 2),
             [1] + [0] * (k - 1), [(i * 37) % 255 - 127 for i in range(k)]]
    out = [torch.tensor(fixed, dtype=torch.int8)]
    out += [torch.randint(-f, f + 1, (256, k), generator=g, dtype=torch.int8) for f in (127, 63, 15, 3)]
    return torch.cat(out)


def softmax_errors() -> list[dict]:
    table = []
    for e in range(-20, 13):
        row = {"e": e}
        for name, fn, scale in (("precise", softmax_grad, 2**GRAD_BITS), ("coarse", softmax_grad_coarse, 2**11)):
            worst, total, count = 0.0, 0.0, 0
            for k in (2, 10, 100, 1000):
                g = torch.Generator().manual_seed(k * 100 + e)
                m = rows(k, g)
                y = torch.randint(0, k, (m.shape[0],), generator=g)
                try:
                    got = fn(IntTensor(m, e), y).to(torch.float64) / scale
                except OverflowError:
                    row[name] = None
                    break
                exact = torch.softmax(m.to(torch.float64) * 2.0**e, 1) - torch.nn.functional.one_hot(y, k)
                err = (got - exact).abs()
                worst, total, count = max(worst, float(err.max())), total + float(err.sum()), count + err.numel()
            else:
                row[name] = {"max": worst, "mean": total / count}
        table.append(row)
    return table


def initial_exponents(data_dir: Path) -> dict:
    out = {}
    for model, name in (("lenet", "mnist"), ("vgg-small-7", "cifar10")):
        x = np.load(data_dir / f"{name}.npz")["x_train"][:32]
        x = torch.from_numpy(x.reshape(32, *niti.models.get_architecture(model).input_shape).copy())
        new = [niti.build(model, seed=s).predict_logits(x).e for s in range(3)]
        old = [niti.build(model, seed=s, full_range_init=False, scale=(4096,) * x.shape[3]).predict_logits(x).e
               for s in range(3)]
        out[model] = {"numerics2": new, "first_version": old}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "results" / "numerics2-checks"))
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/numerics2_checks.py", "softmax": softmax_errors(),
              "initial_logit_exponent": initial_exponents(Path(a.data_dir))}
    (out / "checks.json").write_text(json.dumps(result, indent=2) + "\n")
    fmt = lambda r: "raises" if r is None else f"{r['max']:.4f} / {r['mean']:.5f}"  # noqa: E731
    lines = ["# numerics 2 checks", "", f"`{result['command']}`, {result['date']}; raw numbers in checks.json.", "",
             "Integer softmax vs the exact softmax, |p - p_exact| max / mean over 2-1,000 classes (1,035 rows each):",
             "", "| logit exponent | precise (numerics 2) | coarse (first version) |", "|---|---|---|"]
    lines += [f"| {r['e']} | {fmt(r['precise'])} | {fmt(r['coarse'])} |" for r in result["softmax"]]
    worst = max(r["precise"]["max"] for r in result["softmax"])
    lines += ["", f"Worst precise error over all exponents: {worst:.4f}.", "",
              "Initial logit exponent on 32 real training images, init seeds 0/1/2:", ""]
    for model, v in result["initial_logit_exponent"].items():
        lines.append(f"- {model}: numerics 2 {v['numerics2']}, first version {v['first_version']}")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
