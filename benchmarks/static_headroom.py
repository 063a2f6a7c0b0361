"""Validation accuracy of trained integer checkpoints under static-shift rules (docs/numerics.md §12).

For each run: per-batch shifts ("batch", batches of 1,000), and static shifts from each site's calibrated width
with: "round" (the rule before the logits got headroom), "ceil" (the ceiling of the running width), "last+1" /
"last+2" (round, plus 1 / 2 bits at the last calibrated site, the logits' layer: today's default is last+1),
"round+1" (one extra bit at every site). Evaluated on the validation split (the last 5,000 training images).

    python benchmarks/static_headroom.py RUN_DIR DATASET
"""

import sys

import numpy as np
import torch

import niti
from niti.numerics import CALIBRATION_FRAC_BITS as F

torch.set_num_threads(1)
run, ds = sys.argv[1], sys.argv[2]
model = niti.load(run)
d = np.load(f"../shared/data/{ds}.npz")
x = d["x_train"][-5000:]
x = x[..., None] if x.ndim == 3 else x
x = torch.from_numpy(np.ascontiguousarray(x))
y = torch.from_numpy(d["y_train"][-5000:].astype(np.int64))
mods = [m for m in model.net.modules() if m.calibration is not None]
last = mods[-1]


def rule(name):
    def f(m, r):
        w = (r + (1 << (F - 1))) >> F
        if name == "ceil":
            w = -((-r) >> F)
        if name == "round+1" or (name == "last+1" and m is last):
            w += 1
        if name == "last+2" and m is last:
            w += 2
        return max(0, w - 7)
    return f


res = {}
for name in ("batch", "round", "ceil", "last+1", "last+2", "round+1"):
    if name == "batch":
        model.net.set_static_inference(False)
    else:
        model.net.set_static_inference(True)
        f = rule(name)
        for m in mods:
            def patched(t, ctx, m=m, f=f):
                s = f(m, m.calibration)
                return m.runtime.rescale_static(t, 7, s, "activation"), s
            m.rescale_activation = patched
    correct = 0
    for i in range(0, 5000, 1000):
        correct += int((model.predict(x[i:i + 1000]) == y[i:i + 1000]).sum())
    res[name] = correct / 50
print(run.split("/")[-1], res)
