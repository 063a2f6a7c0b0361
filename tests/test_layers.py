"""Integer layers (docs/numerics.md §4) against float autograd on the same weights and inputs.

The float references live only in this file: integer ``m · 2**e`` is turned
into float64 here, outside niti, and pushed through ``torch.nn.functional``
(NCHW, hence the permutes) with autograd.  With a runtime whose rescale keeps
30 bits nothing is rounded away, so the integer results must equal the float
ones exactly (float64 holds these integers exactly); with the normal int8
rescale they must still point the same way (cosine ≥ 0.99).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from niti.nn import Add, AvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential, Tape
from niti.numerics import IntTensor, RoundingPolicy
from niti.runtime import Runtime

WIDE_BITS = 30


class WideRuntime(Runtime):
    """A runtime whose rescale keeps ``WIDE_BITS`` bits: int32 accumulators pass through unrounded."""

    def rescale(self, t: torch.Tensor, target_bits: int, role: str, *, batched: bool = True, clip_bits: int = 0,
                clip_share: int = 0):
        return super().rescale(t, WIDE_BITS, role, batched=batched, clip_bits=clip_bits, clip_share=clip_share)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _int8(shape: tuple[int, ...], seed: int, lo: int = -127, hi: int = 127) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=_gen(seed), dtype=torch.int8)


def to_float(t: IntTensor) -> torch.Tensor:
    """``m · 2**e`` as float64 (test-side only)."""
    return t.m.to(torch.float64) * (2.0 ** t.e)


def nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().to(torch.float64), b.flatten().to(torch.float64)
    return float((a @ b) / (a.norm() * b.norm()))


def _nearest() -> RoundingPolicy:
    return RoundingPolicy.all("nearest")


# --------------------------------------------------------------------------- Conv2d
CONV_CASES = [  # (c_in, c_out, kernel, stride, padding, hw)
    (3, 8, 3, 1, 1, (8, 8)),
    (3, 8, 3, 2, 1, (9, 9)),
    (4, 6, 5, 1, 2, (10, 8)),
    (2, 5, 5, 3, 0, (13, 11)),
    (3, 4, (3, 5), (2, 1), (1, 2), (9, 10)),
    (6, 16, 1, 1, 0, (5, 5)),
]


def _conv_float_grads(x: IntTensor, layer: Conv2d, err: IntTensor) -> tuple[torch.Tensor, ...]:
    xf = nchw(to_float(x)).detach().requires_grad_(True)
    wf = to_float(layer.weight).permute(0, 3, 1, 2).detach().requires_grad_(True)  # (out, in, kh, kw)
    y = F.conv2d(xf, wf, stride=layer.stride, padding=layer.padding)
    y.backward(nchw(to_float(err)))
    return nhwc(y.detach()), nhwc(xf.grad), wf.grad.permute(0, 2, 3, 1)


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,hw", CONV_CASES)
def test_conv2d_wide_matches_float_autograd_exactly(c_in, c_out, kernel, stride, padding, hw) -> None:
    layer = Conv2d(c_in, c_out, kernel, stride, padding, generator=_gen(1))
    layer.set_runtime(WideRuntime(_nearest()))
    x = IntTensor(_int8((2, *hw, c_in), 2), -5)
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(out.shape), 3), -11)
    gx = layer.backward(err, ctx)
    y_f, gx_f, gw_f = _conv_float_grads(x, layer, err)

    assert torch.equal(to_float(out), y_f)
    gw = layer.weight.grad
    assert gw.dtype in (torch.int32, torch.int64) and gw.shape == layer.weight.shape
    gw_value = gw.to(torch.float64) * 2.0 ** layer.weight.grad_e  # the exponent backward recorded
    assert cosine(gw_value, gw_f) >= 0.99
    assert torch.equal(gw_value, gw_f)
    assert cosine(to_float(gx), gx_f) >= 0.99
    assert torch.equal(to_float(gx), gx_f)


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,hw", CONV_CASES)
def test_conv2d_int8_error_points_like_float(c_in, c_out, kernel, stride, padding, hw) -> None:
    layer = Conv2d(c_in, c_out, kernel, stride, padding, generator=_gen(4))
    layer.set_runtime(Runtime(_nearest()))
    x = IntTensor(_int8((2, *hw, c_in), 5), -7)
    ctx: dict = {}
    out = layer.forward(x, ctx)
    assert out.m.dtype == torch.int8 and int(out.m.abs().max()) <= 127
    err = IntTensor(_int8(tuple(out.shape), 6), 0)
    gx = layer.backward(err, ctx)
    y_f, gx_f, gw_f = _conv_float_grads(x, layer, err)
    assert gx.m.dtype == torch.int8
    assert cosine(to_float(out), y_f) >= 0.99
    assert cosine(to_float(gx), gx_f) >= 0.99
    # The weight gradient itself is never rounded: exact.
    assert torch.equal(layer.weight.grad.to(torch.float64) * 2.0 ** layer.weight.grad_e, gw_f)


def test_conv2d_first_layer_propagates_no_error_but_gets_gradient() -> None:
    layer = Conv2d(1, 4, 3, generator=_gen(7))
    layer.propagate_error = False
    ctx: dict = {}
    out = layer.forward(IntTensor(_int8((2, 6, 6, 1), 8), 0), ctx)
    assert layer.backward(IntTensor(_int8(tuple(out.shape), 9), 0), ctx) is None
    assert layer.weight.grad is not None and layer.weight.grad.shape == (4, 3, 3, 1)


# --------------------------------------------------------------------------- Linear
@pytest.mark.parametrize("n,fin,fout", [(4, 20, 7), (3, 800, 500), (1, 33, 16)])
def test_linear_wide_matches_float_autograd(n: int, fin: int, fout: int) -> None:
    layer = Linear(fin, fout, generator=_gen(10))
    layer.set_runtime(WideRuntime(_nearest()))
    x = IntTensor(_int8((n, fin), 11), -3)
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(out.shape), 12), -8)
    gx = layer.backward(err, ctx)

    xf = to_float(x).requires_grad_(True)
    wf = to_float(layer.weight).requires_grad_(True)
    y = F.linear(xf, wf)
    y.backward(to_float(err))
    assert torch.equal(to_float(out), y.detach())
    gw_value = layer.weight.grad.to(torch.float64) * 2.0 ** layer.weight.grad_e
    assert cosine(gw_value, wf.grad) >= 0.99 and torch.equal(gw_value, wf.grad)
    assert cosine(to_float(gx), xf.grad) >= 0.99 and torch.equal(to_float(gx), xf.grad)


def test_linear_int8_error_points_like_float() -> None:
    layer = Linear(300, 40, generator=_gen(13))
    layer.set_runtime(Runtime(_nearest()))
    x = IntTensor(_int8((8, 300), 14), -6)
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(out.shape), 15), 0)
    gx = layer.backward(err, ctx)
    xf = to_float(x).requires_grad_(True)
    wf = to_float(layer.weight).requires_grad_(True)
    y = F.linear(xf, wf)
    y.backward(to_float(err))
    assert gx.m.dtype == torch.int8
    assert cosine(to_float(out), y.detach()) >= 0.99
    assert cosine(to_float(gx), xf.grad) >= 0.99
    assert cosine(layer.weight.grad.to(torch.float64), wf.grad) >= 0.99


# --------------------------------------------------------------------------- ReLU, MaxPool, Flatten, Dropout
def test_relu_matches_float_autograd() -> None:
    x = IntTensor(_int8((3, 5, 5, 4), 20, -3, 3), -2)  # many exact zeros: backward passes only where x > 0
    layer = ReLU()
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(x.shape), 21), -6)
    gx = layer.backward(err, ctx)
    xf = to_float(x).requires_grad_(True)
    y = F.relu(xf)
    y.backward(to_float(err))
    assert out.e == x.e and torch.equal(to_float(out), y.detach())
    assert gx.e == err.e and torch.equal(to_float(gx), xf.grad)
    assert cosine(to_float(gx), xf.grad) >= 0.99
    assert bool((gx.m[x.m == 0] == 0).all())


def test_maxpool_matches_float_autograd() -> None:
    n, h, w, c = 2, 6, 6, 3
    values = torch.randperm(255, generator=_gen(22))[: n * h * w * c] - 127  # distinct: no ties
    x = IntTensor(values.to(torch.int8).reshape(n, h, w, c), -4)
    layer = MaxPool2d(2)
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(out.shape), 23), -9)
    gx = layer.backward(err, ctx)
    xf = nchw(to_float(x)).detach().requires_grad_(True)
    y = F.max_pool2d(xf, 2)
    y.backward(nchw(to_float(err)))
    assert torch.equal(to_float(out), nhwc(y.detach()))
    assert gx.shape == x.shape
    assert cosine(to_float(gx), nhwc(xf.grad)) >= 0.99
    assert torch.equal(to_float(gx), nhwc(xf.grad))


def test_maxpool_rejects_impossible_windows() -> None:
    for args in ((3, 2, 2), (0, 1, 0), (2, 0, 0)):  # padding beyond half the kernel, empty kernel, zero stride
        with pytest.raises(ValueError, match="max pool needs"):
            MaxPool2d(*args)


def test_flatten_is_nhwc_order_and_backward_restores_shape() -> None:
    x = IntTensor(_int8((2, 3, 4, 5), 24), 3)
    layer = Flatten()
    ctx: dict = {}
    out = layer.forward(x, ctx)
    assert out.shape == (2, 60) and out.e == 3
    for b, i, j, ch in [(0, 0, 0, 1), (1, 2, 3, 4), (0, 1, 2, 0)]:
        assert out.m[b, (i * 4 + j) * 5 + ch] == x.m[b, i, j, ch]  # channel fastest (NHWC)
    err = IntTensor(_int8((2, 60), 25), -2)
    gx = layer.backward(err, ctx)
    xf = to_float(x).requires_grad_(True)
    xf.reshape(2, -1).backward(to_float(err))
    assert gx.shape == x.shape and gx.e == err.e
    assert cosine(to_float(gx), xf.grad) >= 0.99 and torch.equal(to_float(gx), xf.grad)


@pytest.mark.parametrize("mask", ["sample", "batch"])
def test_dropout_masks_match_float_autograd(mask: str) -> None:
    n, feats = 4, 4096
    signs = _int8((n, feats), 26, 0, 1) * 2 - 1
    x = IntTensor(signs * _int8((n, feats), 27, 1, 127), -5)  # no zeros, so the mask is visible
    layer = Dropout(mask)
    layer.set_runtime(Runtime(seed=3))
    ctx: dict = {}
    out = layer.forward(x, ctx)
    keep = out.m != 0
    if mask == "batch":
        assert torch.equal(keep, keep[:1].expand_as(keep))  # one mask for the whole batch
    else:  # one per element: the samples' masks are independent, each keeping about half
        assert all(not torch.equal(keep[i], keep[j]) for i in range(n) for j in range(i))
        assert abs(int((keep[0] & keep[1]).sum()) - feats // 4) < 200
    for kept in keep.sum(dim=1).tolist():
        assert abs(kept - feats // 2) < 200  # p = 1/2 (about 6 standard deviations)
    assert out.e == x.e + 1
    assert torch.equal(out.m[keep], x.m[keep])

    err = IntTensor(_int8((n, feats), 28), -7)
    gx = layer.backward(err, ctx)
    assert gx.e == err.e + 1
    mask_f = keep.to(torch.float64)
    xf = to_float(x).requires_grad_(True)
    y = xf * mask_f * 2.0
    y.backward(to_float(err))
    assert torch.equal(to_float(out), y.detach())
    assert cosine(to_float(gx), xf.grad) >= 0.99 and torch.equal(to_float(gx), xf.grad)


def test_dropout_refuses_an_unknown_mask() -> None:
    with pytest.raises(ValueError, match="dropout mask"):
        Dropout("channel")


def test_dropout_seeded_and_identity_in_eval() -> None:
    x = IntTensor(_int8((2, 64), 29, 1, 127), 0)

    def mask(seed: int) -> torch.Tensor:
        layer = Dropout()
        layer.set_runtime(Runtime(seed=seed))
        return layer.forward(x).m != 0

    assert torch.equal(mask(5), mask(5))
    assert not torch.equal(mask(5), mask(6))
    layer = Dropout()
    runtime = Runtime(seed=5)
    layer.set_runtime(runtime)
    state = dict(runtime.draws)
    layer.eval()
    ctx: dict = {}
    out = layer.forward(x, ctx)
    assert out is x or (torch.equal(out.m, x.m) and out.e == x.e)
    assert runtime.draws == state  # eval draws nothing
    layer.train()
    layer.forward(x, ctx)
    assert runtime.draws == {**state, "dropout": state["dropout"] + 1}


# --------------------------------------------------------------------------- Sequential and bookkeeping
def _small_net(seed: int) -> Sequential:
    g = _gen(seed)
    return Sequential(Conv2d(2, 6, 3, 1, 1, generator=g), ReLU(), MaxPool2d(2),
                      Conv2d(6, 8, 3, 2, 1, generator=g), ReLU(), Flatten(), Linear(32, 10, generator=g))


def test_sequential_gradients_point_like_float_autograd() -> None:
    """The whole int8 chain (rescaled at every layer) against float autograd on the same weights."""
    net = _small_net(30)
    net.set_runtime(Runtime(_nearest()))
    x = IntTensor(_int8((8, 8, 8, 2), 31), -6)
    tape = Tape()
    logits = net.forward(x, tape)
    err = IntTensor(_int8(tuple(logits.shape), 32), 0)
    assert net.backward(err, tape) is None  # the first layer propagates no error

    conv1, conv2, fc = net[0], net[3], net[6]
    w1 = to_float(conv1.weight).permute(0, 3, 1, 2).requires_grad_(True)
    w2 = to_float(conv2.weight).permute(0, 3, 1, 2).requires_grad_(True)
    w3 = to_float(fc.weight).requires_grad_(True)
    h = F.max_pool2d(F.relu(F.conv2d(nchw(to_float(x)), w1, padding=1)), 2)
    h = F.relu(F.conv2d(h, w2, stride=2, padding=1))
    y = F.linear(nhwc(h).reshape(8, -1), w3)  # NHWC flatten, as the integer net does
    y.backward(to_float(err))
    assert cosine(to_float(logits), y.detach()) >= 0.99
    assert cosine(fc.weight.grad, w3.grad) >= 0.99
    # Every rounded error widens the gap a little further down (seeds 30-39 measured: conv2 >= 0.95, conv1 >= 0.95).
    assert cosine(conv2.weight.grad, w2.grad.permute(0, 2, 3, 1)) >= 0.93
    assert cosine(conv1.weight.grad, w1.grad.permute(0, 2, 3, 1)) >= 0.9


def test_sequential_marks_only_layers_above_the_first_weighted_one() -> None:
    g = _gen(33)
    net = Sequential(ReLU(), Conv2d(1, 2, 3, generator=g), ReLU(), Flatten(), Linear(8, 3, generator=g))
    assert [layer.propagate_error for layer in net.layers] == [False, False, True, True, True]
    assert len(net.parameters()) == 2


def test_backward_without_training_forward_raises() -> None:
    layer = Linear(4, 3, generator=_gen(34))
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        layer.backward(IntTensor(_int8((2, 3), 35), 0), {})
    ctx: dict = {}
    layer.forward(IntTensor(_int8((2, 4), 36), 0))  # no context: nothing saved for a backward
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        layer.backward(IntTensor(_int8((2, 3), 37), 0), ctx)
    # What a forward saves belongs to its context, not to the layer: two calls, two backwards.
    ctx_a, ctx_b = {}, {}
    layer.forward(IntTensor(_int8((2, 4), 36), 0), ctx_a)
    layer.forward(IntTensor(_int8((2, 4), 39), 0), ctx_b)
    layer.backward(IntTensor(_int8((2, 3), 37), 0), ctx_a)
    grad_a = layer.weight.grad
    layer.backward(IntTensor(_int8((2, 3), 37), 0), ctx_b)
    assert not torch.equal(grad_a, layer.weight.grad)


def test_forward_exponents_follow_the_rescale_shift() -> None:
    layer = Linear(64, 8, generator=_gen(38))
    layer.set_runtime(Runtime(_nearest()))
    x = IntTensor(torch.full((2, 64), 127, dtype=torch.int8), -3)
    out = layer.forward(x)
    acc = x.m.to(torch.int64) @ layer.weight.m.to(torch.int64).t()
    shift = max(0, int(acc.abs().max()).bit_length() - 7)
    assert out.e == x.e + layer.weight.e + shift


def test_int_parameter_refuses_minus_128() -> None:
    """The ±127 invariant behind the int32 accumulation bound is enforced where weights enter."""
    from niti.nn.module import IntParameter

    with pytest.raises(ValueError, match=r"\[-127, 127\].*-128"):
        IntParameter(torch.tensor([5, -128], dtype=torch.int8), -7)
    assert IntParameter(torch.tensor([127, -127], dtype=torch.int8), -7, accumulator_bits=16).master.tolist() == \
        [127 << 8, -127 << 8]


# --------------------------------------------------------------------------- biases, average pooling, addition
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_bias_matches_float_autograd_exactly(kind: str) -> None:
    """A bias sits on its weight's grid; forward adds it exactly, its gradient is the error summed exactly."""
    if kind == "conv":
        layer = Conv2d(3, 5, 3, 2, 1, generator=_gen(40), bias=True)
        x = IntTensor(_int8((2, 7, 7, 3), 41), -5)
    else:
        layer = Linear(12, 5, generator=_gen(40), bias=True)
        x = IntTensor(_int8((3, 12), 41), -5)
    layer.bias.m = _int8((5,), 42)
    layer.set_runtime(WideRuntime(_nearest()))
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(out.shape), 43), -9)
    layer.backward(err, ctx)
    bf = to_float(IntTensor(layer.bias.m, layer.bias.e)).requires_grad_(True)
    if kind == "conv":
        wf = to_float(layer.weight).permute(0, 3, 1, 2)
        y = nhwc(F.conv2d(nchw(to_float(x)), wf, bf, stride=2, padding=1))
    else:
        y = F.linear(to_float(x), to_float(layer.weight), bf)
    y.backward(to_float(err))
    assert torch.equal(to_float(out), y.detach())
    assert torch.equal(layer.bias.grad.to(torch.float64) * 2.0 ** layer.bias.grad_e, bf.grad)


@pytest.mark.parametrize("kernel,hw", [(2, (6, 6)), ((2, 4), (4, 8)), (3, (7, 6))])
def test_avgpool_matches_float_autograd(kernel, hw) -> None:
    """Exact where the window size is a power of two; within the 2**-q multiplier's rounding otherwise."""
    x = IntTensor(_int8((2, *hw, 3), 44), -3)
    layer = AvgPool2d(kernel)
    layer.set_runtime(WideRuntime(_nearest()))
    ctx: dict = {}
    out = layer.forward(x, ctx)
    err = IntTensor(_int8(tuple(out.shape), 45), -6)
    gx = layer.backward(err, ctx)
    xf = nchw(to_float(x)).detach().requires_grad_(True)
    y = F.avg_pool2d(xf, kernel)
    y.backward(nchw(to_float(err)))
    n = layer.kernel_size[0] * layer.kernel_size[1]
    if n & (n - 1) == 0:
        assert torch.equal(to_float(out), nhwc(y.detach()))
        assert torch.equal(to_float(gx), nhwc(xf.grad))
    else:
        assert torch.allclose(to_float(out), nhwc(y.detach()), rtol=2.0 ** -12, atol=0)
        assert torch.allclose(to_float(gx), nhwc(xf.grad), rtol=2.0 ** -12, atol=0)
    # The int8 datapath rounds, and still points the same way.
    layer.set_runtime(Runtime(_nearest()))
    out8 = layer.forward(x)
    assert out8.m.dtype == torch.int8 and cosine(to_float(out8), nhwc(y.detach())) >= 0.99


def test_add_aligns_exponents_and_passes_the_error_to_both_inputs() -> None:
    a = IntTensor(_int8((2, 3, 3, 4), 46), -4)
    b = IntTensor(_int8((2, 3, 3, 4), 47), -10)
    layer = Add()
    layer.set_runtime(WideRuntime(_nearest()))
    ctx: dict = {}
    out = layer.forward(a, b, ctx)
    assert torch.equal(to_float(out), to_float(a) + to_float(b))  # exact: exponents 6 apart
    err = IntTensor(_int8((2, 3, 3, 4), 48), -2)
    ea, eb = layer.backward(err, ctx)
    assert ea is err and eb is err
    with pytest.raises(ValueError, match="equal shapes"):
        layer.forward(a, IntTensor(_int8((2, 3, 3, 5), 49), 0))
