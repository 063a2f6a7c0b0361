"""A standalone integer inference runner for models exported by ``niti export`` (numpy only; no torch, no niti).

``niti export`` copies this file to ``DIR/infer.py`` beside ``DIR/model.npz``::

    python DIR/infer.py DIR/model.npz IMAGES.npy -o PRED.npy     # images: uint8 (N, H, W, C)

It predicts exactly what ``niti.load(RUN).predict`` does with static shifts:
the arithmetic is docs/inference.md (every value an integer ``m · 2**e``,
products exact in int64, fixed per-layer shifts with the recorded rounding,
results clipped to ±127).  Read it as the reference for a C or RTL port.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

FORMAT = "niti-model"
VERSION = 1


def round_shift(t: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """``t / 2**shift`` rounded sign-magnitude: nearest (ties away from zero), pseudo_stochastic or truncate."""
    if shift <= 0:
        return t
    a = np.abs(t)
    q = a >> shift
    if mode == "nearest":
        q = q + ((a >> (shift - 1)) & 1)
    elif mode == "pseudo_stochastic":
        low = a & ((1 << shift) - 1)
        h = shift // 2
        hi, lo = low >> h, low & ((1 << h) - 1)
        if shift % 2:
            lo = lo << 1
        q = q + (hi > lo)
    elif mode != "truncate":
        raise ValueError(f"unknown rounding mode {mode!r}")
    return np.where(t < 0, -q, q)


def narrow(t: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """The static rescale: shift right by the recorded ``shift`` with ``mode``, clip to ±127."""
    return np.clip(round_shift(t, shift, mode), -127, 127)


def shift_to(m: np.ndarray, by: int) -> np.ndarray:
    """``m · 2**by``: exact left shift, or right shift rounded to nearest (ties away from zero)."""
    return m << by if by >= 0 else round_shift(m, -by, "nearest")


def aligned_sum(terms: list[tuple[np.ndarray, int, int]], headroom: int) -> tuple[np.ndarray, int]:
    """Terms ``(m, e, bits)`` summed at ``e = max(min e_i, max(e_i + bits_i) + ceil(log2 n) - headroom)``."""
    top = max(e + b for _, e, b in terms)
    e = max(min(e for _, e, _ in terms), top + (len(terms) - 1).bit_length() - headroom)
    total = sum(shift_to(m.astype(np.int64), e_i - e) for m, e_i, _ in terms)
    return total, e


def conv2d(x: np.ndarray, w: np.ndarray, stride: list[int], padding: list[int]) -> np.ndarray:
    """Exact NHWC convolution in int64; ``w`` is (C_out, kh, kw, C_in)."""
    n, h, wd, c = x.shape
    c_out, kh, kw, _ = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, c), dtype=np.int64)
    xp[:, ph:ph + h, pw:pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    acc = np.zeros((n, ho, wo, c_out), dtype=np.int64)
    w64 = w.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            acc += patch @ w64[:, i, j, :].T
    return acc


def round_div(a: int, b: int) -> int:
    """``a / b`` rounded to nearest, ties away from zero (Python ints, ``b > 0``)."""
    q = (2 * abs(a) + b) // (2 * b)
    return q if a >= 0 else -q


def reciprocals(num: int, dens: list[int], rbits: int) -> tuple[list[int], list[int]]:
    """Per channel ``R · 2**-W ≈ num / den``, ``R < 2**rbits``, ``W ≥ 0`` (docs/numerics.md §13)."""
    rs, ws = [], []
    for den in dens:
        if den <= 0:
            rs.append(0)
            ws.append(0)
            continue
        w = max(0, rbits - 1 - num.bit_length() + den.bit_length())
        r = round_div(num << w, den)
        while r >= 1 << rbits and w > 0:
            w -= 1
            r = round_div(num << w, den)
        if w > 61:
            r, w = 0, 0
        rs.append(r)
        ws.append(w)
    return rs, ws


def batchnorm(x: np.ndarray, e: int, node: dict, arrays: dict, mode: str, s: int) -> tuple[np.ndarray, int]:
    """Integer L1 batch norm with running statistics (docs/numerics.md §13), then the static rescale."""
    mean, mad = arrays[node["running_mean"]].astype(np.int64), arrays[node["running_mad"]]
    up = e - node["running_exponent"]
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
    c = (rows << up if up >= 0 else round_shift(rows, -up, "nearest")) - mean
    top = (127 << up) if up >= 0 else max(int(round_shift(np.array([127]), -up, "nearest")[0]), 1)
    cbits = (max(top, 1) + int(np.abs(mean).max())).bit_length()
    r, w = reciprocals(node["kappa"] << node["frac_bits"], [int(m) << node["kappa_bits"] for m in mad.tolist()],
                       min(31, 62 - cbits))
    v = np.abs(c) * np.array(r, dtype=np.int64)
    wt = np.array(w, dtype=np.int64)
    q = np.minimum((v + ((np.int64(1) << wt) >> 1)) >> wt, (1 << node["xhat_bits"]) - 1)
    xhat = np.where(c < 0, -q, q)
    gamma = arrays[node["weight"]].astype(np.int64)
    total, e_sum = aligned_sum([(xhat * gamma, node["weight_e"] - node["frac_bits"], node["xhat_bits"] + 7),
                                (arrays[node["bias"]], node["bias_e"], 7)], 30)
    return narrow(total, s, mode).reshape(x.shape), e_sum + s


def convert_input(images: np.ndarray, inp: dict, mode: str, shift: int | None = None) -> tuple[np.ndarray, int]:
    """uint8 NHWC pixels to int8: ``(pixel - mean) · scale`` narrowed by the static (or given) shift."""
    s = inp["shift"] if shift is None else shift
    centred = (images.astype(np.int64) - np.array(inp["mean"], dtype=np.int64)) * np.array(inp["scale"], dtype=np.int64)
    return narrow(centred, s, mode), s - inp["scale_bits"]


def apply_node(node: dict, args: list, arrays: dict, mode: str, shift: int | None = None) -> tuple[np.ndarray, int]:
    """One layer on its inputs ``args`` (``(m, e)`` pairs); ``shift`` overrides the node's static shift."""
    op = node["op"]
    s = node.get("shift") if shift is None else shift
    x, e = args[0]
    if op in ("conv2d", "linear"):
        wm = arrays[node["weight"]]
        acc = conv2d(x, wm, node["stride"], node["padding"]) if op == "conv2d" else x @ wm.astype(np.int64).T
        e_acc = e + node["weight_e"]
        if node["bias"] is not None:
            acc, e_acc = aligned_sum([(acc, e_acc, node["acc_bits"]), (arrays[node["bias"]], node["bias_e"], 7)],
                                     node["headroom"])
        return narrow(acc, s, mode), e_acc + s
    if op == "relu":
        return np.maximum(x, 0), e
    if op == "maxpool":
        k, st, p = node["kernel"], node.get("stride", node["kernel"]), node.get("padding", 0)
        n, h, w, c = x.shape
        if st == k and p == 0:
            return x[:, :h // k * k, :w // k * k].reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4)), e
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-128)  # padding never wins a window
        ho, wo = (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1
        taps = [xp[:, i:i + st * (ho - 1) + 1:st, j:j + st * (wo - 1) + 1:st] for i in range(k) for j in range(k)]
        return np.max(np.stack(taps), axis=0), e
    if op == "avgpool":
        kh, kw = node["kernel"]
        n, h, w, c = x.shape
        sums = x[:, :h // kh * kh, :w // kw * kw].reshape(n, h // kh, kh, w // kw, kw, c).sum(axis=(2, 4))
        return narrow(sums * node["multiplier"], s, mode), e - node["q"] + s
    if op == "batchnorm":
        return batchnorm(x, e, node, arrays, mode, s)
    if op == "flatten":
        return x.reshape(x.shape[0], -1), e
    if op == "identity":
        return x, e
    if op == "add":
        (a, ea), (b, eb) = args
        total, e_sum = aligned_sum([(a, ea, 7), (b, eb, 7)], node["headroom"])
        return narrow(total, s, mode), e_sum + s
    raise ValueError(f"unknown op {op!r} in node {node['name']!r}")


def forward(model: dict, images: np.ndarray) -> tuple[np.ndarray, int]:
    """Int8 logits (as int64) and their exponent for uint8 NHWC ``images``."""
    graph, arrays = model["graph"], model["arrays"]
    mode = graph["activation_rounding"]
    h, w, c = graph["input_shape"]
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (h, w, c):
        raise ValueError(f"images must be uint8 (N, {h}, {w}, {c}), got {images.dtype} {images.shape}")
    values = [convert_input(images, graph["input"], mode)]
    for node in graph["nodes"]:
        values.append(apply_node(node, [values[i] for i in node["inputs"]], arrays, mode))
    return values[graph["output"]]


def load(path: str) -> dict:
    """``model.npz`` as written by ``niti export`` (no pickles)."""
    with np.load(path, allow_pickle=False) as f:
        if "graph" not in f.files:
            raise ValueError(f"{path} is not a niti model export (no 'graph' entry)")
        graph = json.loads(str(f["graph"]))
        if graph.get("format") != FORMAT or graph.get("version") != VERSION:
            raise ValueError(f"{path}: format {graph.get('format')!r} version {graph.get('version')!r}, "
                             f"expected {FORMAT!r} version {VERSION}")
        arrays = {k: f[k] for k in f.files if k != "graph"}
    return {"graph": graph, "arrays": arrays}


def predict(model: dict, images: np.ndarray) -> np.ndarray:
    """int64 class indices: the first maximum of each image's int8 logits."""
    logits, _ = forward(model, images)
    return logits.argmax(axis=1).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Integer inference of a niti export (numpy only).")
    p.add_argument("model", help="model.npz written by `niti export`")
    p.add_argument("images", help=".npy of uint8 images (N, H, W, C)")
    p.add_argument("-o", "--output", required=True, help="where to write the int64 predictions (.npy)")
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args(argv)
    model = load(a.model)
    images = np.load(a.images, allow_pickle=False)
    if images.ndim == 3 and model["graph"]["input_shape"][2] == 1:
        images = images[..., None]
    preds = [predict(model, images[i:i + a.batch_size]) for i in range(0, images.shape[0], a.batch_size)]
    np.save(a.output, np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
