"""How each rounding mode treats a trained network's error rescales: bias and lost signal, per rescale site.

Records one training step's error accumulators (the int32/int64 tensors before their rescale to int8, and their
shifts) with the trace recorder, then rounds each with every mode and compares with the exact quotient
``t / 2**shift``: the mean signed error relative to the mean |exact| (bias), the same per channel (the root mean square over
channels: a bias of one sign within a channel is what accumulates), and the share of elements whose exact
quotient is nonzero but which round to 0 (lost). Rounding without bias is what float SGD's sums assume; a bias
that has the same sign throughout a channel accumulates in the weight gradients.

    python benchmarks/error_rounding_bias.py RUN_DIR [--images 128] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
import torch

import niti
from niti import counter_bits
from niti.numerics import ROUNDING_MODES, round_shift
from niti.runtime import Recorder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = niti.load(a.run)
    with np.load(Path(a.data_dir) / f"{model.arch.dataset}.npz") as d:
        x = d["x_train"][: a.images]
        x = x[..., None] if x.ndim == 3 else x
        images, labels = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(d["y_train"][: a.images].astype(np.int64))
    recorder = Recorder()
    model.runtime.recorder = recorder
    model.train_step(images, labels)
    model.runtime.recorder = None
    names = [n for n in recorder.tensors if n.split(".")[-1] == "acc" and ".error." in f".{n}."
             or n.endswith("error.acc")]
    rows = []
    for name in names:
        t = recorder.tensors[name].to(torch.int64)
        shift = int(recorder.tensors[name.replace("error.acc", "error.shift")])
        if shift == 0:
            continue
        exact = t.double() / 2**shift
        scale = exact.abs().mean().item()
        row = [name.removesuffix(".error.acc"), shift, f"{(exact.abs() < 0.5).double().mean().item() * 100:.0f}"]
        channels = exact.reshape(-1, exact.shape[-1])  # NHWC or (N, features): the last dimension
        for mode in ROUNDING_MODES:
            noise = counter_bits.uniform_bits(1, "rounding", 0, shift, tuple(t.shape)) if mode == "stochastic" else None
            r = round_shift(t, shift, mode, noise=noise).double()
            bias = (r - exact).mean().item() / scale
            per_channel = (r.reshape(channels.shape) - channels).mean(0) / channels.abs().mean(0).clamp_min(1e-12)
            lost = ((r == 0) & (exact != 0)).double().mean().item() * 100
            row.append(f"{bias:+.3f} / {per_channel.pow(2).mean().sqrt().item():.3f} / {lost:.0f}")
        rows.append(row)
    lines = [f"# Error rounding per rescale site: `{a.run}`", "",
             f"One training step on the first {a.images} training images, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; command: "
             f"`python benchmarks/error_rounding_bias.py {a.run} --images {a.images}`. Per mode: bias (mean signed "
             "error / mean |exact quotient|) / channel bias (the same per channel, last dimension; root mean square "
             "over channels) / lost (% of elements with a nonzero exact quotient that round to 0). "
             "`< 0.5` %: elements whose exact quotient is below half a unit.", "",
             "| site | shift | < 0.5 % | " + " | ".join(ROUNDING_MODES) + " |", "|---|---|---|" + "---|" * len(ROUNDING_MODES)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
