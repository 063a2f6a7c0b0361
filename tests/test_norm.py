"""Integer L1 batch norm (docs/numerics.md §13) against float references of the same formula, and the ResNets.

The float references live here only: the integer ``m · 2**e`` values are
turned into float64 and pushed through the L1 batch-norm formula of Hoffer
et al. (2018), ``x̂ = (x − mean) / (√(π/2) · mean|x − mean|)`` (with √(2/π)
as niti's 15-bit constant), with autograd for the backward.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch import nn as tnn

import niti
from niti.audit import integer_only
from niti.models.convert import UnsupportedModule
from niti.nn import BatchNorm2d, MaxPool2d, Tape
from niti.nn.norm import KAPPA, KAPPA_BITS, NORM_FRAC_BITS, RUNNING_EXPONENT, round_div
from niti.numerics import IntTensor, RoundingPolicy
from niti.runtime import Runtime


def _x(shape: tuple[int, ...], seed: int, lo: int = -127, hi: int = 127) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def _value(t: IntTensor) -> torch.Tensor:
    return t.m.to(torch.float64) * (2.0 ** t.e)


def _l1_bn(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Float L1 batch norm over all but the last (channel) dimension, with niti's √(2/π) (KAPPA / 2**15)."""
    dims = tuple(range(x.dim() - 1))
    mu = x.mean(dim=dims, keepdim=True)
    mad = (x - mu).abs().mean(dim=dims, keepdim=True)
    return (x - mu) * (KAPPA / 2 ** KAPPA_BITS) / mad * gamma + beta


def _layer(channels: int, seed: int = 0) -> BatchNorm2d:
    bn = BatchNorm2d(channels)
    bn.set_runtime(Runtime(policy=RoundingPolicy.all("nearest"), seed=seed))
    # Non-trivial γ and β (mantissas at exponent -6).
    bn.weight.m = _x((channels,), seed + 1, 20, 120)
    bn.bias.m = _x((channels,), seed + 2, -60, 60)
    return bn


def test_constants_and_rounding() -> None:
    assert KAPPA == round(2 ** KAPPA_BITS * math.sqrt(2 / math.pi))
    for a in range(-50, 51):
        for b in (1, 2, 3, 7, 10):
            q = abs(a) / b
            want = math.floor(q + 0.5) * (1 if a >= 0 else -1)
            assert round_div(a, b) == want, (a, b)


@pytest.mark.parametrize("shape,e", [((8, 5, 5, 6), -3), ((3, 4, 4, 4), 2), ((64, 2, 2, 3), -9)])
def test_forward_matches_float_formula(shape: tuple[int, ...], e: int) -> None:
    bn = _layer(shape[-1])
    x = IntTensor(_x(shape, 5), e)
    ctx: dict = {}
    out = bn.forward(x, ctx)
    xf = _value(x)
    gamma, beta = _value(IntTensor(bn.weight.m, bn.weight.e)), _value(IntTensor(bn.bias.m, bn.bias.e))
    want_xhat = _l1_bn(xf, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    got_xhat = bn.normalised(ctx).reshape(shape).to(torch.float64) / 2 ** NORM_FRAC_BITS
    # x̂ is rounded to 2**-12 and the reciprocal has >= 30 significant bits.
    assert (got_xhat - want_xhat).abs().max() <= 2 ** -NORM_FRAC_BITS * 0.51 + 1e-6 * want_xhat.abs().max()
    want = _l1_bn(xf, gamma, beta)
    lsb = 2.0 ** out.e
    assert out.m.dtype == torch.int8 and int(out.m.abs().max()) <= 127
    assert (_value(out) - want).abs().max() <= lsb * 0.51 + 2 ** -NORM_FRAC_BITS * float(gamma.abs().max())


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (16, 3, 3, 4)])
def test_backward_is_the_derivative_of_l1_batch_norm(shape: tuple[int, ...]) -> None:
    bn = _layer(shape[-1], seed=3)
    x = IntTensor(_x(shape, 7), -4)
    ctx: dict = {}
    bn.forward(x, ctx)
    err = IntTensor(_x(shape, 8), -10)
    dx = bn.backward(err, ctx)
    xf = _value(x).requires_grad_(True)
    gamma = _value(IntTensor(bn.weight.m, bn.weight.e)).requires_grad_(True)
    beta = _value(IntTensor(bn.bias.m, bn.bias.e)).requires_grad_(True)
    _l1_bn(xf, gamma, beta).backward(_value(err))
    want = xf.grad
    scale = float(want.abs().max())
    # The integer error is int8 (one LSB is 2**-7 of the largest) plus the per-channel constants' rounding.
    assert (_value(dx) - want).abs().max() <= scale * 2 ** -5
    # γ and β gradients are exact integer sums: Σ g·x̂ (x̂ at 2**-12) and Σ g.
    g = err.m.reshape(-1, shape[-1]).to(torch.int64)
    assert torch.equal(bn.bias.grad, g.sum(0))
    assert bn.bias.grad_e == err.e and bn.weight.grad_e == err.e - NORM_FRAC_BITS
    assert torch.equal(bn.weight.grad, (g * bn.normalised(ctx).to(torch.int64)).sum(0))
    xhat = bn.normalised(ctx).to(torch.float64) / 2 ** NORM_FRAC_BITS
    want_dgamma = (_value(err).reshape(-1, shape[-1]) * xhat).sum(0)
    assert torch.allclose(bn.weight.grad.to(torch.float64) * 2.0 ** bn.weight.grad_e, want_dgamma)
    assert torch.allclose(gamma.grad.flatten(), want_dgamma, rtol=1e-3, atol=scale * 1e-3 + 1e-9)


def test_constant_channel_normalises_to_zero_and_passes_no_error() -> None:
    bn = _layer(2)
    m = _x((4, 3, 3, 2), 1)
    m[..., 1] = 9
    ctx: dict = {}
    bn.forward(IntTensor(m, -2), ctx)
    assert int(bn.normalised(ctx)[:, 1].abs().max()) == 0
    dx = bn.backward(IntTensor(_x((4, 3, 3, 2), 2), 0), ctx)
    assert int(dx.m[..., 1].abs().max()) == 0 and int(dx.m[..., 0].abs().max()) > 0


def test_running_statistics_and_batch_independent_evaluation() -> None:
    bn = _layer(3)
    x = IntTensor(_x((32, 4, 4, 3), 11, -40, 100), -5)
    bn.forward(x, {})
    xf = _value(x).reshape(-1, 3)
    mean = bn.running_mean.to(torch.float64) * 2.0 ** RUNNING_EXPONENT
    mad = bn.running_mad.to(torch.float64) * 2.0 ** RUNNING_EXPONENT
    assert torch.allclose(mean, xf.mean(0), atol=2.0 ** -20)
    assert torch.allclose(mad, (xf - xf.mean(0)).abs().mean(0), atol=2.0 ** -20)
    first = bn.running_mean.clone()
    bn.forward(IntTensor(x.m // 2, -5), {})  # a second step moves the statistics 1/16 of the way
    assert torch.equal(bn.running_mean, first + ((((x.m // 2).to(torch.float64).reshape(-1, 3).mean(0) * 2 ** 19)
                                                  .round().to(torch.int64) - first) >> 4))
    bn.eval()
    bn.set_static_inference(True)
    together = bn.forward(x)
    alone = [bn.forward(IntTensor(x.m[i:i + 1], x.e)) for i in range(4)]
    assert all(a.e == together.e and torch.equal(a.m, together.m[i:i + 1]) for i, a in enumerate(alone))


def test_strided_max_pool_matches_torch() -> None:
    # Distinct values: torch and niti then agree on which element is each window's maximum.
    perm = torch.randperm(9 * 9 * 3, generator=torch.Generator().manual_seed(0))
    m = (perm - 127).to(torch.int8).reshape(1, 9, 9, 3)
    pool = MaxPool2d(3, 2, 1)
    pool.set_runtime(Runtime(policy=RoundingPolicy.all("nearest")))
    ctx: dict = {}
    out = pool.forward(IntTensor(m, 0), ctx)
    xf = m.permute(0, 3, 1, 2).to(torch.float64).requires_grad_(True)
    want = tnn.functional.max_pool2d(xf, 3, 2, 1)
    assert torch.equal(out.m.permute(0, 3, 1, 2).to(torch.float64), want.detach())
    err = _x(tuple(out.m.shape), 4, -40, 40)
    want.backward(err.permute(0, 3, 1, 2).to(torch.float64))
    dx = pool.backward(IntTensor(err, 0), ctx)
    assert torch.equal(_value(dx), xf.grad.permute(0, 2, 3, 1))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 11), w=st.integers(1, 11), c=st.integers(1, 20), k=st.integers(1, 5),
       stride=st.integers(1, 3), pad=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_strided_max_pool_c_loops_equal_the_taps_loop(n: int, h: int, w: int, c: int, k: int, stride: int, pad: int,
                                                      seed: int) -> None:
    from niti.kernels import pool

    from unittest import mock

    if pad >= k or h + 2 * pad < k or w + 2 * pad < k or pool._pool_library() is None:
        return  # torch's rule (padding below the window) / no window / no C loops here
    # Few distinct values (ties), -128 included (a padded first tap can stay the maximum).
    x = _x((n, h, w, c), seed, -128, -120)
    err = _x((n, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1, c), seed + 1, -128, 127)
    got = []
    for in_c in (True, False):
        with mock.patch.object(pool, "_c_pool", pool._c_pool if in_c else (lambda *args: None)):
            out, index = pool.maxpool2d_strided(x, k, stride, pad)
            total = pool.maxpool2d_strided_backward(err, index, k, stride, pad, x.shape)
        got.append((out, index, total.to(torch.int32)))
    # The C loops did run unpatched: their sums come back as int16.
    assert pool.maxpool2d_strided_backward(err, index, k, stride, pad, x.shape).dtype == torch.int16
    assert all(torch.equal(a, b) for a, b in zip(*got))


def test_converter_refuses_batch_norm_without_affine_or_statistics() -> None:
    for bn in (tnn.BatchNorm2d(4, affine=False), tnn.BatchNorm2d(4, track_running_stats=False)):
        net = tnn.Sequential(tnn.Conv2d(1, 4, 3), bn, tnn.Flatten(), tnn.Linear(4 * 6 * 6, 3))
        with pytest.raises(UnsupportedModule, match="BatchNorm2d"):
            niti.from_torch(net, input_shape=(8, 8, 1))


def _tiny_resnet() -> tnn.Module:
    from niti.models.zoo import resnet

    stem = tnn.Sequential(tnn.Conv2d(3, 8, 3, 1, 1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU(),
                          tnn.MaxPool2d(3, 2, 1))
    return resnet(stem, [8, 16], [1, 1], 10)


def _batch(n: int, hw: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, hw, hw, 3), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def test_resnet_steps_are_integer_only_thread_independent_and_resumable() -> None:
    images, labels = _batch(8, 16)
    hashes = []
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model = niti.from_torch(_tiny_resnet(), input_shape=(16, 16, 3), seed=1)
            with integer_only():
                for _ in range(2):
                    model.train_step(images, labels)
            hashes.append(model.weights_sha256())
        finally:
            torch.set_num_threads(old)
    assert hashes[0] == hashes[1]
    assert len(model.buffers()) == 2 * 6  # 6 batch norms (stem, 2 per block, 1 projection)
    # A state round trip keeps the running statistics; a third step then agrees bit for bit.
    state = model.state_dict()
    twin = niti.from_torch(_tiny_resnet(), input_shape=(16, 16, 3), seed=1)
    twin.load_state_dict(state)
    assert twin.weights_sha256() == model.weights_sha256()
    model.train_step(images, labels)
    twin.train_step(images, labels)
    assert twin.weights_sha256() == model.weights_sha256()
    # Evaluation uses the running statistics: a prediction does not depend on its batch.
    logits = model.predict_logits(images)
    assert torch.equal(model.predict_logits(images[:1]).m, logits.m[:1])


def test_state_with_bad_buffers_is_refused_and_changes_nothing() -> None:
    model = niti.from_torch(_tiny_resnet(), input_shape=(16, 16, 3), seed=1)
    model.train_step(*_batch(4, 16))
    before = model.weights_sha256()
    state = model.state_dict()
    state["buffers"]["stem.1.running_mean"] = state["buffers"]["stem.1.running_mean"].to(torch.int32)
    with pytest.raises(ValueError, match="running_mean"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["buffers"]["nowhere.running_mean"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="nowhere"):
        model.load_state_dict(state)
    assert model.weights_sha256() == before


def test_failed_step_restores_running_statistics() -> None:
    model = niti.from_torch(_tiny_resnet(), input_shape=(16, 16, 3), seed=1)
    model.train_step(*_batch(4, 16))
    before = model.weights_sha256()
    images, labels = _batch(4, 16, seed=1)
    labels[0] = 10  # out of range: refused before the step
    with pytest.raises(ValueError):
        model.train_step(images, labels)
    # A failure inside backward (after the forward moved the statistics) restores them too.
    fc = model.net.nodes[-1].op

    def broken(err, ctx):  # noqa: ANN001, ANN202
        raise RuntimeError("injected")

    original = fc.backward
    fc.backward = broken
    try:
        with pytest.raises(RuntimeError, match="injected"):
            model.train_step(*_batch(4, 16, seed=2))
    finally:
        fc.backward = original
    assert model.weights_sha256() == before


def test_builtin_resnets() -> None:
    r20 = niti.build("resnet-20")
    assert r20.num_classes == 10 and r20.arch.input_shape == (32, 32, 3)
    assert sum(p.m.numel() for p in r20.parameters()) == sum(p.numel() for p in r20.arch.module().parameters())
    r18 = niti.build("resnet-18")
    assert r18.num_classes == 1000 and r18.arch.input_shape == (224, 224, 3) and r18.accumulator_bits == 16
    assert all(p.accumulator_bits == 16 for p in r18.parameters())
    assert sum(p.m.numel() for p in r18.parameters()) == sum(p.numel() for p in r18.arch.module().parameters())


def test_resnet18_step_at_224_is_integer_only() -> None:
    model = niti.build("resnet-18", seed=0)
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 999])
    with integer_only():
        logits = model.train_step(images, labels)
    assert logits.m.shape == (2, 1000) and logits.m.dtype == torch.int8
    assert all(p.grad is None for p in model.parameters()) and model.step == 1


def test_exported_numpy_runner_matches_predict_on_a_batch_norm_resnet(tmp_path, shared_data_dir) -> None:
    """The numpy-only runner (niti export) reproduces a trained ResNet's static-inference logits bit for bit."""
    import numpy as np

    from niti import infer_numpy
    from niti.export import export

    with np.load(shared_data_dir / "cifar10.npz") as z:
        images = torch.from_numpy(z["x_test"][:64].copy())
        labels = torch.from_numpy(z["y_test"][:64].astype(np.int64))
    model = niti.from_torch(_tiny_resnet(), input_shape=(32, 32, 3), seed=2)
    for i in range(3):
        model.train_step(images[i * 16:(i + 1) * 16], labels[i * 16:(i + 1) * 16])
    want = model.predict_logits(images)
    got_m, got_e = infer_numpy.forward(infer_numpy.load(str(export(model, tmp_path / "deploy"))), images.numpy())
    assert got_e == want.e and np.array_equal(got_m, want.m.numpy())


def test_recalibration_stores_the_exact_average_of_the_batches_statistics() -> None:
    bn = _layer(3)
    xs = [IntTensor(_x((16, 3, 3, 3), 20 + i, -50, 90), -4) for i in range(3)]
    bn.forward(xs[0], {})  # running averages exist; recalibration replaces them
    bn.begin_recalibration()
    for x in xs:
        bn.forward(x)  # training mode without a context: statistics only, nothing for a backward
    bn.end_recalibration()
    # Each batch's mean and MAD in 2**-24 units, rounded to nearest, then their nearest-rounded average.
    n = 16 * 9
    means, mads = [], []
    for x in xs:
        rows = [[int(v) for v in row] for row in x.m.reshape(-1, 3).tolist()]
        s = [sum(r[c] for r in rows) for c in range(3)]
        d = [sum(abs(n * r[c] - s[c]) for r in rows) for c in range(3)]
        up = x.e - RUNNING_EXPONENT
        means.append([round_div(v << up, n) for v in s])
        mads.append([round_div(v << up, n * n) for v in d])
    assert bn.running_mean.tolist() == [round_div(sum(m[c] for m in means), 3) for c in range(3)]
    assert bn.running_mad.tolist() == [round_div(sum(m[c] for m in mads), 3) for c in range(3)]
    # Outside a recalibration a context-free training forward leaves the statistics alone.
    before = bn.running_mean.clone()
    bn.forward(xs[0])
    assert torch.equal(bn.running_mean, before)


def test_model_recalibration_changes_only_the_running_statistics() -> None:
    model = niti.from_torch(_tiny_resnet(), input_shape=(16, 16, 3), seed=1)
    images, labels = _batch(8, 16)
    for _ in range(2):
        model.train_step(images, labels)
    params = {k: v for k, v in model.state_dict().items() if k != "buffers"}
    calibration, generators, old = model.calibration_state(), model.runtime.state_dict(), model.buffers()
    mode = model.net.training
    batches = [_batch(8, 16, seed=s)[0] for s in (5, 6)]
    with integer_only():
        assert model.recalibrate_norm(iter(batches)) == 2
    new = model.buffers()
    assert sorted(new) == sorted(old) and any(not torch.equal(new[k], old[k]) for k in new)
    state = model.state_dict()
    assert all(_same(state[k], v) for k, v in params.items())
    assert model.calibration_state() == calibration and _same(model.runtime.state_dict(), generators)
    assert model.net.training == mode
    # Deterministic: a twin recalibrated on the same batches holds the same bits; the order does not matter
    # for the average but the batches do.
    twin = niti.from_torch(_tiny_resnet(), input_shape=(16, 16, 3), seed=1)
    twin.load_state_dict(state)
    twin.recalibrate_norm(reversed(batches))
    assert all(torch.equal(twin.buffers()[k], new[k]) for k in new)
    # Evaluation stays batch-independent; no batches change nothing; a bad batch is refused and restores.
    logits = model.predict_logits(images)
    assert torch.equal(model.predict_logits(images[:1]).m, logits.m[:1])
    assert model.recalibrate_norm([]) == 0 and all(torch.equal(model.buffers()[k], new[k]) for k in new)
    with pytest.raises(ValueError, match="uint8"):
        model.recalibrate_norm([batches[0], batches[1].to(torch.int32)])
    assert all(torch.equal(model.buffers()[k], new[k]) for k in new)
    assert not any(bn._collected for bn in model.net.modules() if isinstance(bn, BatchNorm2d))


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and sorted(a) == sorted(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_float_twin_recalibration_averages_batch_statistics() -> None:
    from niti.baseline import FloatModel
    from niti.models.architectures import Architecture

    arch = Architecture("tiny-resnet", (16, 16, 3), 10, None, _tiny_resnet)
    model = FloatModel(arch, seed=1)
    images, labels = _batch(8, 16)
    model.train_step(images, labels)
    batches = [_batch(8, 16, seed=s)[0] for s in (5, 6)]
    weights = {k: v.clone() for k, v in model.net.state_dict().items() if "running" not in k and "tracked" not in k}
    assert model.recalibrate_norm(batches) == 2
    # The stem's batch norm sees the first conv's output: its running mean is the two batches' average mean.
    stem_bn, conv = model.net.stem[1], model.net.stem[0]
    with torch.no_grad():
        outs = [conv(model.normalise(b)) for b in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    assert torch.allclose(stem_bn.running_mean, mean, atol=1e-5)
    assert stem_bn.momentum == 0.1 and stem_bn.training  # restored
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in weights.items())


def test_training_recalibrates_batch_norm_before_evaluating(tmp_path, cifar10) -> None:  # noqa: ANN001
    from niti.train import TrainConfig, fit
    from niti.train.loop import recalibration_batches

    data = tmp_path / "cifar-slice.npz"
    np.savez(data, x_train=cifar10["x_train"][:48], y_train=cifar10["y_train"][:48],
             x_test=cifar10["x_test"][:16], y_test=cifar10["y_test"][:16])
    runs = {}
    for images in (0, 16):
        config = TrainConfig(model="resnet-20", dataset=str(data), out=str(tmp_path / f"r{images}"), batch_size=8,
                             max_steps=3, val_size=16, norm_recalibration=images, progress=False, threads=1)
        summary = fit(config)
        runs[images] = niti.load(config.out)
    plain, recalibrated = runs[0], runs[16]
    assert summary["steps"] == 3
    same = {k: v for k, v in plain.state_dict().items() if k != "buffers"}
    assert all(_same(recalibrated.state_dict()[k], v) for k, v in same.items())  # training is not affected
    assert any(not torch.equal(plain.buffers()[k], v) for k, v in recalibrated.buffers().items())
    # What the loop stored is the average over the first 16 training images, in batches of 8.
    assert plain.recalibrate_norm(recalibration_batches(config, cifar10["x_train"][:32])) == 2
    assert all(torch.equal(plain.buffers()[k], v) for k, v in recalibrated.buffers().items())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), ch=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_value_tables_match_elementwise_references(rows: int, ch: int, seed: int) -> None:
    from niti.kernels import fused

    x, g = _x((rows, ch), seed, -128, 127), _x((rows, ch), seed + 1, -128, 127)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(-2**40, 2**40, (256, ch), dtype=torch.int64, generator=gen)
    k = torch.randint(-2**15, 2**15 + 1, (ch,), dtype=torch.int64, generator=gen)
    index = fused.bn_value_index(x)
    counts, sums = fused.bn_value_counts(index, ch), fused.bn_value_sums(index, g)
    xs, gs = x.tolist(), g.tolist()
    for c in range(ch):
        for v in {row[c] for row in xs} | {-128, 0, 127}:
            assert int(counts[v + 128, c]) == sum(row[c] == v for row in xs)
            assert int(sums[v + 128, c]) == sum(gr[c] for xr, gr in zip(xs, gs) if xr[c] == v)
    looked_up = fused.bn_gather(table, index).tolist()
    g_table = (fused.VALUES * k) << 24
    wide = fused.bn_error(g, index, table, g_table)
    err = wide.tolist()
    for r in range(rows):
        for c in range(ch):
            assert looked_up[r][c] == int(table[xs[r][c] + 128, c])
            assert err[r][c] == (int(k[c]) * gs[r][c] << 24) + int(table[xs[r][c] + 128, c])
    from niti.kernels import cpu_bn  # the C loops: the same bit width and the same rounding

    if cpu_bn.available(g):
        assert torch.equal(cpu_bn.value_sums(x, None), counts) and torch.equal(cpu_bn.value_sums(x, g), sums)
        table8 = torch.randint(-128, 128, (256, ch), dtype=torch.int8, generator=gen)
        assert torch.equal(cpu_bn.gather(table8, x), fused.bn_gather(table8, index))
        sums_, lo, hi = cpu_bn.value_ranges(x, g)
        assert torch.equal(sums_, sums)
        for c in range(ch):
            for v in range(-128, 128):
                present = [gr[c] for xr, gr in zip(xs, gs) if xr[c] == v]
                assert (int(lo[v + 128, c]), int(hi[v + 128, c])) == ((min(present), max(present)) if present
                                                                      else (127, -128))
        mult = k << 24
        assert cpu_bn.error_max(table, mult, lo, hi) == int(wide.abs().max())
        from niti import counter_bits

        for mode in cpu_bn.MODES:
            for shift in (0, 1, 17, 23, 24, 25, 31, 32, 33, 40, 49, 50):
                keys, noise = None, None
                if mode == "stochastic" and shift:
                    keys = counter_bits.DrawKeys.of(seed, "rounding", 3, 5)
                    noise = counter_bits.uniform_bits(seed, "rounding", 3, shift, tuple(wide.shape), start=5)
                assert torch.equal(cpu_bn.error_round(g, x, table, mult, shift, mode, keys=keys),
                                   fused.round_clip(wide, shift, mode, 7, torch.int8, noise))
        with pytest.raises(ValueError, match="keys"):
            cpu_bn.error_round(g, x, table, mult, 3, "stochastic")


def _both_error_loops(err: torch.Tensor, x: torch.Tensor, table: torch.Tensor, mult: torch.Tensor, shift: int,
                      mode: str, keys) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """``cpu_bn.error_round``'s 32-bit loop (asserted to accept) and its 64-bit loop on the same operands."""
    import ctypes

    from niti.kernels import cpu_bn

    rows, ch = err.shape
    words = None if keys is None else (ctypes.c_uint32 * 4)(keys.k1, keys.k2, keys.hi1, keys.hi2)
    outs = []
    for name in ("niti_bn_error_round32", "niti_bn_error_round"):
        out = torch.empty((rows, ch), dtype=torch.int8)
        declined = getattr(cpu_bn._lib(), name)(err.data_ptr(), x.data_ptr(), table.data_ptr(), mult.data_ptr(),
                                                rows, ch, shift, cpu_bn.MODES[mode], 127, out.data_ptr(),
                                                0 if keys is None else keys.start, words, torch.get_num_threads())
        assert not declined
        outs.append(out)
    assert torch.equal(outs[0], cpu_bn.error_round(err, x, table, mult, shift, mode, keys=keys))
    return outs[0], outs[1]


def test_error_rounding_32_bit_loop_declines_other_operands() -> None:
    """A shift outside 24-49, a limit above 127, channels not a power of two, a multiplier not a multiple of
    2**24 or a table past the int32 bound: the 32-bit loop declines (and error_round takes the 64-bit loop)."""
    from niti.kernels import cpu_bn

    err = torch.ones((4, 8), dtype=torch.int8)
    if not cpu_bn.available(err):
        pytest.skip("batch norm's C loops are not built here")

    def declined(table, mult, shift, limit=127, e=err):  # noqa: ANN001, ANN202
        out = torch.empty(e.shape, dtype=torch.int8)
        return cpu_bn._lib().niti_bn_error_round32(e.data_ptr(), e.data_ptr(), table.data_ptr(), mult.data_ptr(),
                                                   e.shape[0], e.shape[1], shift, 0, limit, out.data_ptr(), 0, None, 1)

    table, mult = torch.zeros((256, 8), dtype=torch.int64), torch.full((8,), 5 << 24, dtype=torch.int64)
    assert declined(table, mult, 30) == 0
    assert declined(table, mult, 23) == 1 and declined(table, mult, 50) == 1 and declined(table, mult, 30, 128) == 1
    assert declined(table, mult + 1, 30) == 1
    assert declined(table + (1 << 55), mult, 30) == 1
    odd = torch.ones((4, 6), dtype=torch.int8)
    assert declined(torch.zeros((256, 6), dtype=torch.int64), mult[:6], 30, e=odd) == 1


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3000), ch=st.sampled_from([1, 2, 16, 32, 64]), shift=st.integers(24, 49),
       mode=st.sampled_from(["nearest", "pseudo_stochastic", "truncate", "stochastic"]), seed=st.integers(0, 2**16))
def test_error_rounding_in_32_bit_lanes_equals_the_64_bit_loop(rows: int, ch: int, shift: int, mode: str,
                                                              seed: int) -> None:
    """Batch norm's error rounding with its own operands (multipliers k · 2**24, shifts 24-49, a power of two of
    channels) runs in 32-bit lanes; the 64-bit loop, itself pinned to the PyTorch rescale above, gives the same bits
    for every mode, across blocks and threads, with the stochastic ties of the part-1 bits (shift > 32) included."""
    from niti import counter_bits
    from niti.kernels import cpu_bn

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (rows, ch), dtype=torch.int8, generator=g)
    err = torch.randint(-128, 128, (rows, ch), dtype=torch.int8, generator=g)
    if not cpu_bn.available(err):
        pytest.skip("batch norm's C loops are not built here")
    k = torch.randint(-2**15, 2**15 + 1, (ch,), dtype=torch.int64, generator=g)
    table = torch.randint(-2**(shift + 3), 2**(shift + 3), (256, ch), dtype=torch.int64, generator=g)
    mult = k << 24
    keys = counter_bits.DrawKeys.of(seed, "rounding", 2, 7) if mode == "stochastic" else None
    fast, wide = _both_error_loops(err, x, table, mult, shift, mode, keys)
    assert torch.equal(fast, wide)


@pytest.mark.parametrize("shift", [24, 25, 33, 38, 39, 49])
def test_error_rounding_in_32_bit_lanes_at_the_rounding_boundaries(shift: int) -> None:
    """Values on every rounding boundary: discarded bits exactly half (nearest), high half equal to the (doubled)
    low half (pseudo-stochastic), multiples of 2**24 (R = 0) and their neighbours, both signs."""
    from niti import counter_bits
    from niti.kernels import cpu_bn

    h, odd = shift >> 1, shift & 1
    values = []
    for q in [q for q in (0, 1, 5, 31, 126, 127, 128) if (q + 1) << (shift - 24) < 1 << 30]:  # |T| < 2**30
        for low in (0, 1, 1 << (shift - 1), (1 << (shift - 1)) - 1, (1 << (shift - 1)) + 1, (1 << shift) - 1,
                    (37 << odd << h) | 37, (1 << 24), (3 << 24) - 1, 5 << 24):
            a = (q << shift) + (low & ((1 << shift) - 1))
            values += [a, -a]
    ch = 16
    table = torch.tensor((values * (256 * ch // len(values) + 1))[:256 * ch], dtype=torch.int64).view(256, ch)
    x = torch.arange(-128, 128, dtype=torch.int8).repeat_interleave(ch).view(256, ch)
    err = torch.zeros((256, ch), dtype=torch.int8)  # the value is the table entry itself
    mult = torch.full((ch,), 3 << 24, dtype=torch.int64)
    if not cpu_bn.available(err):
        pytest.skip("batch norm's C loops are not built here")
    keys = counter_bits.DrawKeys.of(1, "rounding", 0, 0)
    for mode in cpu_bn.MODES:
        fast, wide = _both_error_loops(err, x, table, mult, shift, mode, keys if mode == "stochastic" else None)
        assert torch.equal(fast, wide), mode


class _Collect:
    """A recorder: asks every layer for its element-wise path (traces record whole tensors)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str, value: object) -> None:
        self.names.append(name)


@pytest.mark.parametrize("mode", ["nearest", "pseudo_stochastic", "truncate"])
def test_table_rescale_equals_rescaling_every_element(mode: str) -> None:
    x = IntTensor(_x((16, 5, 5, 4), 31, -90, 127), -3)
    outs = []
    for recorder in (None, _Collect()):
        bn = _layer(4)
        bn.set_runtime(Runtime(policy=RoundingPolicy.all(mode), seed=0))
        bn.runtime.recorder = recorder
        train = bn.forward(x, {})
        bn.eval()
        bn.set_static_inference(True)
        outs.append((train, bn.forward(x)))
    for (a, b) in zip(*outs):
        assert a.e == b.e and torch.equal(a.m, b.m)


@pytest.mark.parametrize("channels", [6, 16])
@pytest.mark.parametrize("mode", ["nearest", "pseudo_stochastic", "truncate", "stochastic"])
def test_c_table_loops_equal_the_pytorch_path(mode: str, channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C loops against the PyTorch path through a whole forward and backward; at 16 channels (a power of two)
    the error rounding selects each element's entry by its sign (``error_round_signs``), at 6 it gathers."""
    from niti.kernels import cpu_bn

    if not cpu_bn.available(torch.zeros(1)):
        pytest.skip("the C loops cannot be built here (no AVX2 or no C compiler)")
    shape = (12, 5, 5, channels)
    x = IntTensor(_x(shape, 41, -128, 127), -3)
    by_signs = []
    signs_loop = cpu_bn.error_round_signs
    monkeypatch.setattr(cpu_bn, "error_round_signs", lambda *a, **k: by_signs.append(out := signs_loop(*a, **k)) or out)
    results = []
    for use_c in (True, False):
        monkeypatch.setattr(cpu_bn, "available", lambda *t, _on=use_c: _on)
        bn = _layer(channels)
        bn.set_runtime(Runtime(policy=RoundingPolicy.all(mode), seed=0))
        bn.propagate_error = True
        ctx: dict = {}
        y = bn.forward(x, ctx)
        # Errors of every magnitude, -128 included: shifts from 0 (small errors) up.
        for scale in (1, 127):
            err = IntTensor(torch.clamp(_x(shape, 42, -128, 127) * scale // 127, -128, 127).to(torch.int8), -9)
            dx = bn.backward(err, ctx)
            results.append((y.e, y.m, dx.e, dx.m, bn.weight.grad, bn.bias.grad))
    half = len(results) // 2
    for got, want in zip(results[:half], results[half:]):
        assert all((a == b) if isinstance(a, int) else torch.equal(a, b) for a, b in zip(got, want))
    assert len(by_signs) == 2 and all((out is not None) == (channels == 16) for out in by_signs)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 300), ch=st.sampled_from([1, 2, 16, 32, 64, 512]), shift=st.integers(24, 49),
       mode=st.sampled_from(["nearest", "pseudo_stochastic", "truncate", "stochastic"]),
       cuts=st.tuples(st.integers(-129, 127), st.integers(-129, 127)), seed=st.integers(0, 2**16))
def test_error_rounding_by_sign_equals_the_table_loop(rows: int, ch: int, shift: int, mode: str,
                                                      cuts: tuple[int, int], seed: int) -> None:
    """``error_round_signs`` (three rows and two thresholds per channel, no gather) gives the bits of
    ``error_round`` on the (256, C) table they describe: every mode, blocks of 256 elements against rows of 1-512
    channels, thresholds anywhere in and just outside the int8 range (all one sign, no zeros); ``value_ranges`` per
    sign class gives the same sums and the same bound on the values as per input value."""
    from niti import counter_bits
    from niti.kernels import cpu_bn
    from niti.nn.norm import _sign_thresholds

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (rows, ch), dtype=torch.int8, generator=g)
    err = torch.randint(-128, 128, (rows, ch), dtype=torch.int8, generator=g)
    if not cpu_bn.available(err):
        pytest.skip("batch norm's C loops are not built here")
    lo, hi = min(cuts), max(cuts)
    # Per channel its own sign boundaries around the drawn ones (a monotone column: -1s, 0s, +1s).
    below = torch.clamp(lo + torch.randint(-3, 4, (ch,), generator=g), -128, 128)
    above = torch.maximum(below - 1, torch.clamp(hi + torch.randint(-3, 4, (ch,), generator=g), -129, 127))
    values = torch.arange(-128, 128).view(256, 1)
    sign = ((values > above).to(torch.int8) - (values < below).to(torch.int8))
    got_above, got_below = _sign_thresholds(sign)
    assert torch.equal(sign, (values > got_above).to(torch.int8) - (values < got_below).to(torch.int8))
    rows3 = torch.randint(-2**(shift + 3), 2**(shift + 3), (3, ch), dtype=torch.int64, generator=g)
    table = rows3.gather(0, sign.to(torch.int64) + 1)
    mult = torch.randint(-2**15, 2**15 + 1, (ch,), dtype=torch.int64, generator=g) << 24
    keys = counter_bits.DrawKeys.of(seed, "rounding", 2, 7) if mode == "stochastic" else None
    fast = cpu_bn.error_round_signs(err, x, rows3, got_above, got_below, mult, shift, mode, keys=keys)
    assert fast is not None
    assert torch.equal(fast, cpu_bn.error_round(err, x, table, mult, shift, mode, keys=keys))
    # The ranges per sign class: the same sums, each class's smallest and largest error, the same bound.
    sums, lo, hi = cpu_bn.value_ranges(x, err)
    sums3, lo3, hi3 = cpu_bn.value_ranges(x, err, got_above, got_below)
    assert torch.equal(sums3, sums) and lo3.shape == hi3.shape == (3, ch)
    cls = ((x > got_above).to(torch.int64) - (x < got_below).to(torch.int64) + 1)
    for s in range(3):
        for c in range(ch):
            members = err[:, c][cls[:, c] == s]
            want = (int(members.min()), int(members.max())) if members.numel() else (127, -128)
            assert (int(lo3[s, c]), int(hi3[s, c])) == want
    wide = table.gather(0, x.to(torch.int64) + 128) + mult * err.to(torch.int64)
    assert cpu_bn.error_max(rows3, mult, lo3, hi3) == cpu_bn.error_max(table, mult, lo, hi) == int(wide.abs().max())


def test_error_rounding_by_sign_declines_what_the_32_bit_loop_declines() -> None:
    from niti.kernels import cpu_bn

    err = torch.ones((4, 8), dtype=torch.int8)
    if not cpu_bn.available(err):
        pytest.skip("batch norm's C loops are not built here")
    rows3, mult = torch.zeros((3, 8), dtype=torch.int64), torch.full((8,), 5 << 24, dtype=torch.int64)
    above, below = torch.zeros(8, dtype=torch.int32), torch.zeros(8, dtype=torch.int32)

    def run(rows3=rows3, mult=mult, shift=30, e=err, above=above, below=below):  # noqa: ANN001, ANN202
        return cpu_bn.error_round_signs(e, e, rows3, above, below, mult, shift, "nearest")

    assert run() is not None
    assert run(shift=23) is None and run(shift=50) is None
    assert run(mult=mult + 1) is None and run(rows3=rows3 + (1 << 55)) is None
    odd = torch.ones((4, 6), dtype=torch.int8)
    assert run(rows3=rows3[:, :6], mult=mult[:6], e=odd, above=above[:6], below=below[:6]) is None
    with pytest.raises(ValueError, match="rows3"):
        run(rows3=rows3[:2])
    with pytest.raises(ValueError, match="together"):
        cpu_bn.value_ranges(err, err, above)
    with pytest.raises(ValueError, match=r"\(8,\)"):
        cpu_bn.value_ranges(err, err, above[:4], below[:4])
    with pytest.raises(ValueError, match="shape"):
        cpu_bn.error_max(rows3, mult, torch.zeros((256, 8), dtype=torch.int8), torch.zeros((256, 8), dtype=torch.int8))
