"""Fused chains: compiled == eager twin == the reference, bit for bit; fallbacks; the audit sees the twins.

The first run compiles each chain variant (seconds each on a busy 2-core
machine); later runs load them from inductor's on-disk cache.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import pytest
import torch

from niti import integer_only, numerics
from niti.kernels import conv, cpu_chains, fused, pool
from niti.kernels.matmul import MAX_K_INT32
from niti.kernels.workspace import Workspace
from niti.models import build
from niti.numerics import RoundingPolicy
from niti.optim import UpdateRule

CHAINS = {name: f for name, f in vars(fused).items() if isinstance(f, fused.Fused)}


@pytest.fixture(autouse=True)
def _compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fused.COMPILE_ENV, raising=False)


def _use_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from niti.kernels import cpu_chains

    if path != "chain" and not cpu_chains.available(torch.zeros(1)):
        pytest.skip("the C loops cannot be built here (no AVX2 or no C compiler)")
    if path == "chain":
        monkeypatch.setattr(fused, "c_loops_allowed", lambda: False)
    else:  # the C path must not fall back to a chain unnoticed
        monkeypatch.setattr(fused.Fused, "__call__", _no_chain)


@pytest.fixture(params=["c", "chain"])
def chain_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the C loops (``cpu_chains``, the pool's) where built, and on the chains (compiled)."""
    _use_path(request.param, monkeypatch)
    return request.param


@pytest.fixture(params=["c", "c-avx2", "chain"])
def sgd_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``chain_path`` for the update, whose C loop has an AVX-512 build the CPU may choose: "c-avx2" keeps it on the
    AVX2 one (on a CPU without AVX-512 "c" runs that too)."""
    from niti.kernels import cpu_chains

    _use_path("c" if request.param == "c-avx2" else request.param, monkeypatch)
    cpu_chains.set_avx512(request.param != "c-avx2")
    yield request.param
    cpu_chains.set_avx512(True)


def _no_chain(self: fused.Fused, *args: object, **kwargs: object) -> None:
    raise AssertionError(f"{self.__name__} ran as a chain where its C loop should have")


def _assert_compiled(chain: fused.Fused) -> None:
    assert chain.broken is None, f"{chain.__name__} fell back to eager: {chain.broken}"


def _wide_values(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """Random magnitudes of every bit width, plus 0, ±1, powers of two and rounding ties."""
    g = torch.Generator().manual_seed(seed)
    top = {torch.int16: 15, torch.int32: 31, torch.int64: 40}[dtype]
    widths = torch.randint(0, top + 1, (n,), generator=g)
    mags = torch.randint(0, 2**62, (n,), generator=g) % (torch.ones(n, dtype=torch.int64) << widths)
    signs = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    special = [0, 1, -1, 2, -2, 3, 8, -8, 24, -24, 2**(top - 1), -(2**(top - 1)), 2**top - 1, -(2**top - 1)]
    return torch.cat([torch.tensor(special), mags * signs]).to(dtype)


# ---------------------------------------------------------------- rounding


@pytest.mark.parametrize("mode", numerics.ROUNDING_MODES)
@pytest.mark.parametrize("dtype,target_bits", [(torch.int32, 7), (torch.int64, 7), (torch.int16, 7),
                                               (torch.int32, 13)])
def test_round_clip_matches_numerics_rescale(mode: str, dtype: torch.dtype, target_bits: int) -> None:
    g = torch.Generator().manual_seed(7)
    for seed in range(3):
        t = _wide_values(dtype, 3000, seed)
        for width in {numerics.bits(t), target_bits, target_bits + 1, target_bits + 9}:
            shift = max(0, width - target_bits)
            noise = (torch.randint(0, 1 << shift, t.shape, generator=g)
                     if mode == "stochastic" and shift else None)
            want, want_shift = numerics.rescale(t, target_bits, mode, bit_width=width, noise=noise)
            out_dtype = numerics.int_dtype_for_bits(target_bits)
            got = fused.round_clip(t, shift, mode, target_bits, out_dtype, noise)
            work = torch.int64 if dtype == torch.int64 else torch.int32
            limit = fused._scalar((1 << target_bits) - 1, work)
            if shift:
                args = [t, fused._scalar(shift, work), limit] + ([noise] if noise is not None else [])
                eager = fused._round_clip.eager(*args, mode=mode, work=work, out=out_dtype)
            else:
                eager = fused._clip.eager(t, limit, work=work, out=out_dtype)
            assert want_shift == shift
            assert got.dtype == want.dtype == eager.dtype
            assert torch.equal(got, want) and torch.equal(eager, want), (mode, dtype, width)
    _assert_compiled(fused._round_clip)
    _assert_compiled(fused._clip)


@pytest.mark.parametrize("mode", numerics.ROUNDING_MODES)
def test_int32_minimum_keeps_its_sign(mode: str) -> None:
    """-2**31's int32 magnitude wraps; the chains (compiled and eager) round it as ``numerics.round_shift`` does in
    int64, at every shift (the first version returned +64 for it at width 32)."""
    t = torch.tensor([-(2**31), -(2**31) + 1, 2**31 - 1, -(2**30), 5, -5, 0], dtype=torch.int32)
    g = torch.Generator().manual_seed(2)
    for shift in (1, 2, 17, 24, 25, 30):
        noise = torch.randint(0, 1 << shift, t.shape, generator=g) if mode == "stochastic" else None
        want = numerics.round_shift(t, shift, mode, noise=noise).clamp(-(2**31 - 1), 2**31 - 1)
        args = [t, fused._scalar(shift, torch.int32), fused._scalar(2**31 - 1, torch.int32)]
        args += [noise] if noise is not None else []
        for chain in (fused._round_clip, fused._round_clip.eager):
            got = chain(*args, mode=mode, work=torch.int32, out=torch.int64)
            assert torch.equal(got, want.to(torch.int64)), (mode, shift, chain)
        assert int(fused.round_clip(t, shift, mode, 7, torch.int8, noise)[0]) < 0


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "avx2"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, torch.int8])
def test_max_abs_is_exact(dtype: torch.dtype, avx512: bool) -> None:
    """``max_abs`` equals a Python max of magnitudes (the C loop for int32 in either build, ``aminmax`` else), with
    -2**31, sizes across the one-thread threshold, a non-contiguous view and an empty tensor."""
    cpu_chains.set_avx512(avx512)
    try:
        for seed, n in enumerate((1, 17, 5000, (1 << 16) + 3)):
            t = _wide_values(dtype, n, seed) if dtype != torch.int8 else torch.randint(-128, 128, (n,), dtype=dtype)
            assert fused.max_abs(t) == max(abs(v) for v in t.tolist())
            assert fused.max_abs(t[::2]) == max(abs(v) for v in t[::2].tolist())
            if dtype == torch.int32:
                assert cpu_chains.max_abs(t) in (None, fused.max_abs(t))
                t[n // 2] = -(2**31)
                assert fused.max_abs(t) == 2**31
        assert fused.max_abs(torch.zeros(0, dtype=dtype)) == 0
    finally:
        cpu_chains.set_avx512(True)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16])
def test_count_at_least_is_exact(dtype: torch.dtype) -> None:
    """``count_at_least`` (the share-bounded clip's counts, docs/numerics.md §2) equals a Python count of
    magnitudes, in the C loop, compiled and eager, with ±2**31 and the thresholds' own values present; empty and no
    thresholds."""
    for seed in range(3):
        t = _wide_values(dtype, 5000, seed)
        if dtype == torch.int32:
            t = torch.cat([t, torch.tensor([-(2**31), 2**31 - 1, 1 << 20, -(1 << 20)], dtype=dtype)])
        values = t.tolist()
        for thresholds in ([1], [1 << 20, 1 << 19, 1 << 18], [128, 128], [1 << 31], [1 << 14, 3]):
            want = [sum(abs(v) >= th for v in values) for th in thresholds]
            assert fused.count_at_least(t, thresholds) == want, (dtype, thresholds)
            limits = torch.tensor(thresholds, dtype=torch.int64)
            assert fused._count_at_least.eager(t, limits, n=len(thresholds)).tolist() == want
            assert fused._count_at_least(t, limits, n=len(thresholds)).tolist() == want  # compiled
            if dtype == torch.int32 and cpu_chains.available(t):  # the C loop, over the one-thread threshold
                assert cpu_chains.count_at_least(t.repeat(20), thresholds) == [20 * w for w in want]
    assert fused.count_at_least(torch.zeros(0, dtype=dtype), [4, 2]) == [0, 0]
    assert fused.count_at_least(t, []) == []
    _assert_compiled(fused._count_at_least)


def test_round_clip_keeps_shape_and_checks_noise() -> None:
    t = torch.arange(-60, 60, dtype=torch.int32).view(3, 4, 10) * 1000
    out = fused.round_clip(t, 10, "nearest", 7, torch.int8)
    assert out.shape == t.shape and torch.equal(out, numerics.rescale(t, 7, "nearest", bit_width=17)[0])
    with pytest.raises(ValueError, match="noise"):
        fused.round_clip(t, 3, "stochastic", 7, torch.int8)


@pytest.mark.parametrize("mode", ["nearest", "pseudo_stochastic", "stochastic", "truncate"])
@pytest.mark.parametrize("accumulator_bits", [8, 16])
def test_update_matches_rescale_subtract_clip(mode: str, accumulator_bits: int) -> None:
    g = torch.Generator().manual_seed(3)
    w_dtype, w_limit = (torch.int8, 127) if accumulator_bits == 8 else (torch.int16, 32767)
    w = torch.randint(-w_limit, w_limit + 1, (37, 11), dtype=w_dtype, generator=g)
    w.view(-1)[:4] = torch.tensor([w_limit, -w_limit, 0, 1], dtype=w_dtype)
    for gb in (3, 5):
        bits = gb if accumulator_bits == 8 else gb + 8
        for grad in (torch.randint(-2**24, 2**24, w.shape, generator=g, dtype=torch.int32),
                     torch.randint(-2**36, 2**36, w.shape, generator=g, dtype=torch.int64),
                     torch.randint(-3, 4, w.shape, generator=g, dtype=torch.int32)):
            shift = max(0, numerics.bits(grad) - bits)
            noise = torch.randint(0, 1 << shift, grad.shape, generator=g) if mode == "stochastic" and shift else None
            step, _ = numerics.rescale(grad, bits, mode, noise=noise)
            want = (w.to(torch.int64) - step.to(torch.int64)).clamp(-w_limit, w_limit).to(w_dtype)
            got = fused.update(w, grad, shift, mode, bits, w_limit, noise)
            assert got.dtype == w_dtype and torch.equal(got, want)
    _assert_compiled(fused._update)


# ------------------------------------------------------ ReLU, pool, col2im


def _ref_maxpool(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first formulation: window view, amax, smallest position holding the max."""
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    win = x[:, :ho * k, :wo * k].reshape(n, ho, k, wo, k, c).permute(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, k * k)
    out = win.amax(dim=-1)
    positions = torch.arange(k * k, dtype=torch.int8)
    index = torch.where(win == out.unsqueeze(-1), positions, torch.tensor(k * k, dtype=torch.int8)).amin(dim=-1)
    return out, index


def _ref_maxpool_backward(err: torch.Tensor, index: torch.Tensor, k: int, shape: tuple) -> torch.Tensor:
    n, h, w, c = shape
    ho, wo = err.shape[1], err.shape[2]
    mask = index.unsqueeze(-1) == torch.arange(k * k, dtype=index.dtype)
    routed = torch.where(mask, err.unsqueeze(-1), torch.zeros((), dtype=err.dtype))
    routed = routed.reshape(n, ho, wo, c, k, k).permute(0, 1, 4, 2, 5, 3).reshape(n, ho * k, wo * k, c)
    out = err.new_zeros((n, h, w, c))
    out[:, :ho * k, :wo * k] = routed
    return out


@pytest.mark.parametrize("shape,k,hi", [((4, 8, 8, 20), 2, 3), ((2, 9, 7, 16), 2, 127), ((3, 6, 6, 5), 3, 1),
                                        ((1, 4, 4, 33), 2, 0)])
def test_maxpool_forward_backward_match_reference(shape: tuple, k: int, hi: int, chain_path: str) -> None:
    g = torch.Generator().manual_seed(sum(shape) + k)
    x = torch.randint(-hi, hi + 1, shape, dtype=torch.int8, generator=g)  # small ranges: many ties
    want_out, want_idx = _ref_maxpool(x, k)
    out, idx = pool.maxpool2d(x, k)
    assert torch.equal(out, want_out) and torch.equal(idx, want_idx) and idx.dtype == torch.int8
    ho, wo = out.shape[1], out.shape[2]
    e_out, e_idx = fused._maxpool.eager(x[:, :ho * k, :wo * k].contiguous().view(-1, k, wo, k, shape[3]), k=k)
    assert torch.equal(e_out.view(out.shape), want_out) and torch.equal(e_idx.view(out.shape), want_idx)
    err = torch.randint(-127, 128, out.shape, dtype=torch.int8, generator=g)
    want = _ref_maxpool_backward(err, want_idx, k, shape)
    assert torch.equal(pool.maxpool2d_backward(err, idx, k, x.shape), want)
    eager = fused._maxpool_backward.eager(err.view(-1, wo, shape[3]), idx.view(-1, wo, shape[3]), k=k)
    assert torch.equal(eager.reshape(shape[0], ho * k, wo * k, shape[3]), want[:, :ho * k, :wo * k])
    _assert_compiled(fused._maxpool)
    _assert_compiled(fused._maxpool_backward)


def test_relu_backward_passes_error_where_output_positive(chain_path: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-127, 128, (3, 5, 5, 17), dtype=torch.int8, generator=g)
    y = x.clamp_min(0)
    err = torch.randint(-127, 128, x.shape, dtype=torch.int8, generator=g)
    want = torch.where(x > 0, err, torch.zeros((), dtype=torch.int8))
    assert torch.equal(fused.relu_backward(err, y), want)
    assert torch.equal(fused._relu_backward.eager(err.view(-1), y.view(-1)).view(x.shape), want)
    _assert_compiled(fused._relu_backward)


@pytest.mark.parametrize("n,h,c_in,c_out,k,p", [(3, 12, 20, 50, 5, 0), (2, 9, 4, 40, 3, 1), (2, 8, 3, 30, 5, 2)])
def test_col2im_grad_input_matches_im2col_path(n: int, h: int, c_in: int, c_out: int, k: int, p: int,
                                               chain_path: str) -> None:
    g = torch.Generator().manual_seed(n + h + c_in)
    wt = torch.randint(-127, 128, (c_out, k, k, c_in), dtype=torch.int8, generator=g)
    ho = h + 2 * p - k + 1
    err = torch.randint(-127, 128, (n, ho, ho, c_out), dtype=torch.int8, generator=g)
    assert conv._col2im_pays(err.shape, wt.shape, (h, h), (1, 1))
    want = conv.conv2d_grad_input(err, wt, (h, h), (1, 1), (p, p))
    got = conv.conv2d_grad_input(err, wt, (h, h), (1, 1), (p, p), workspace=Workspace())
    assert got.dtype == torch.int32 and torch.equal(got, want)
    contrib = (err.reshape(-1, c_out).to(torch.int64) @ wt.reshape(c_out, -1).to(torch.int64)).to(torch.int32)
    eager = fused._col2im.eager(contrib.view(n, ho, ho, k, k, c_in), kernel=(k, k), padding=(p, p))
    assert torch.equal(eager, want)
    _assert_compiled(fused._col2im)


# ------------------------------------------------ convolution with a workspace


@pytest.mark.parametrize("shape,c_out,k,s,p", [((5, 9, 7, 24), 6, 3, 1, 1), ((4, 8, 8, 32), 5, 3, 2, 1),
                                               ((3, 10, 10, 40), 7, 5, 1, 2), ((3, 6, 6, 70), 4, 1, 1, 0),
                                               ((2, 12, 11, 3), 8, 3, 1, 1), ((3, 9, 9, 1), 4, 5, 1, 0)])
def test_workspace_conv_matches_plain_path_across_chunks(monkeypatch: pytest.MonkeyPatch, shape: tuple,
                                                          c_out: int, k: int, s: int, p: int) -> None:
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 5000)  # several chunks of images even for tiny inputs
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(-127, 128, shape, dtype=torch.int8, generator=g)
    wt = torch.randint(-127, 128, (c_out, k, k, shape[3]), dtype=torch.int8, generator=g)
    ws = Workspace()
    want, cols = conv.conv2d(x, wt, (s, s), (p, p))
    got, stand_in = conv.conv2d(x, wt, (s, s), (p, p), workspace=ws)
    assert torch.equal(got, want)
    assert isinstance(stand_in, conv.TransposedColumns if k * shape[3] < conv._SHORT_ROW else conv.Im2colColumns)
    err = torch.randint(-127, 128, want.shape, dtype=torch.int8, generator=g)
    assert torch.equal(conv.conv2d_grad_weight(err, stand_in, (k, k)), conv.conv2d_grad_weight(err, cols, (k, k)))
    for _ in range(2):  # the second time reuses zero-bordered buffers that already hold data
        gi = conv.conv2d_grad_input(err, wt, shape[1:3], (s, s), (p, p), workspace=ws)
        assert torch.equal(gi, conv.conv2d_grad_input(err, wt, shape[1:3], (s, s), (p, p)))


def test_chunked_grad_weight_widens_to_int64_like_int_matmul() -> None:
    # 2·260·260 = 135,200 output positions > MAX_K_INT32: the worst case must not wrap.
    x = torch.full((2, 260, 260, 32), 127, dtype=torch.int8)
    wt = torch.ones((3, 3, 3, 32), dtype=torch.int8)
    err = torch.full((2, 260, 260, 3), -127, dtype=torch.int8)
    _, stand_in = conv.conv2d(x, wt, (1, 1), (1, 1), workspace=Workspace())
    _, cols = conv.conv2d(x, wt, (1, 1), (1, 1))
    got = conv.conv2d_grad_weight(err, stand_in, (3, 3))
    assert 2 * 260 * 260 > MAX_K_INT32 and got.dtype == torch.int64
    assert torch.equal(got, conv.conv2d_grad_weight(err, cols, (3, 3)))
    assert int(got[0, 1, 1, 0]) == -127 * 127 * 2 * 260 * 260


# ------------------------------------------------- whole steps and the audit


def _run(name: str, batch: int, steps: int, **kw: object) -> tuple[str, list]:
    model = build(name, total_steps=steps, **kw)
    h, w, c = model.arch.input_shape
    g = torch.Generator().manual_seed(5)
    logits = []
    for _ in range(steps):
        x = torch.randint(0, 256, (batch, h, w, c), dtype=torch.uint8, generator=g)
        y = torch.randint(0, model.arch.num_classes, (batch,), generator=g)
        out = model.train_step(x, y)
        logits.append((out.e, out.m.tolist()))
    return model.weights_sha256(), logits


@pytest.mark.parametrize("name,batch,kw", [
    ("lenet", 16, {}),
    ("lenet", 8, {"policy": RoundingPolicy.all("stochastic"), "accumulator_bits": 16}),
    ("vgg-small-7", 4, {"policy": RoundingPolicy.all("pseudo_stochastic")}),
    ("resnet-20", 4, {}),  # batch norm, the strided max pool, the residual add
])
def test_train_steps_compiled_equal_eager(monkeypatch: pytest.MonkeyPatch, name: str, batch: int, kw: dict) -> None:
    c_loops = _run(name, batch, 3, **kw)  # the C loops where built, compiled chains for the rest
    monkeypatch.setattr(fused, "c_loops_allowed", lambda: False)
    compiled = _run(name, batch, 3, **kw)  # every chain compiled
    assert compiled == c_loops
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    assert not fused._round_clip.use_compiled(torch.zeros(1))
    assert compiled == _run(name, batch, 3, **kw)  # every chain's eager twin
    for chain in CHAINS.values():
        _assert_compiled(chain)


@pytest.mark.parametrize("name", ["lenet", "vgg-small-7-quarter", "resnet-20"])
def test_a_default_cpu_step_runs_no_chain_where_the_c_loops_build(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """With the C loops built, a default training step calls no fused chain, so nothing compiles at run time
    (results/first-step/)."""
    from niti.kernels import cpu_chains

    if not cpu_chains.available(torch.zeros(1)):
        pytest.skip("the C loops cannot be built here (no AVX2 or no C compiler)")
    monkeypatch.setattr(fused.Fused, "__call__", _no_chain)
    _run(name, 4, 2)


def test_audit_runs_the_eager_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    want, _ = _run("lenet", 8, 1, rule=UpdateRule.paper())  # compiled; the paper's update is the fused _update chain
    calls = {name: 0 for name in CHAINS}
    for name, chain in CHAINS.items():
        def counting(*args, _eager=chain.eager, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[_name] += 1
            return _eager(*args, **kwargs)

        def no_compiled(*_a, _name=name, **_k):  # noqa: ANN002, ANN003, ANN202
            raise AssertionError(f"{_name} compiled inside integer_only()")
        monkeypatch.setattr(chain, "eager", counting)
        monkeypatch.setattr(chain, "compiled", no_compiled)
    model = build("lenet", total_steps=1, rule=UpdateRule.paper())
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (8, 28, 28, 1), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    with integer_only() as audit:
        model.train_step(x, y)
    assert audit.ops > 100
    assert all(calls[n] > 0 for n in ("_round_clip", "_update", "_relu_backward", "_maxpool", "_maxpool_backward"))
    assert model.weights_sha256() == want


def test_compile_failure_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def chain(x: torch.Tensor) -> torch.Tensor:
        return x.abs() + 1

    f = fused.Fused(chain)
    monkeypatch.setattr(f, "compiled", lambda small, **kw: (_ for _ in ()).throw(RuntimeError("no C++ compiler")))
    x = torch.tensor([-3, 4], dtype=torch.int32)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert f(x).tolist() == [4, 5]
    assert f.broken and "no C++ compiler" in f.broken
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(x).tolist() == [4, 5]  # eager from now on, silently


def test_bad_input_raises_the_eager_error_and_keeps_compiling() -> None:
    f = fused.Fused(lambda a, b: a + b)
    with pytest.raises(RuntimeError, match="size"):
        f(torch.zeros(3, dtype=torch.int32), torch.zeros(4, dtype=torch.int32))
    assert f.broken is None


def test_no_compile_env_and_non_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(2, dtype=torch.int32)
    assert fused._round_clip.use_compiled(x)
    assert not fused._round_clip.use_compiled(x.to("meta"))
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    assert not fused.compile_enabled() and not fused._round_clip.use_compiled(x)


_FLOAT_WORDS = re.compile(r"\b(float|double|half|bfloat16|float16|float32|float64|Half|BFloat16|complex)\b")
#: Inductor types the lane masks of masked vector loads as ``VecMask<float, n>`` (32-bit lanes of all-ones or
#: zeros, turned into an integer bitmask for _mm512_mask_loadu_epi32); the loaded and computed values stay
#: int32.  That tag is the only "float" allowed.
_LANE_MASK = re.compile(r"VecMask<float,\s*\d+>")


@pytest.mark.slow
def test_generated_code_has_no_floating_point_types() -> None:
    """Compile every chain afresh and scan inductor's output (C++ kernels and wrapper) for float types."""
    import functools

    from torch._inductor.utils import fresh_cache, run_and_get_code

    i32, g = torch.int32, torch.Generator().manual_seed(0)
    acc = torch.randint(-2**20, 2**20, (4096,), dtype=i32, generator=g)
    x8 = torch.randint(-127, 128, (2, 8, 8, 16), dtype=torch.int8, generator=g)
    out, idx = fused._maxpool.eager(x8.view(8, 2, 4, 2, 16), k=2)
    s, lim = fused._scalar(9, i32), fused._scalar(127, i32)
    cases = [
        (fused._round_clip, (acc, s, lim), {"mode": "nearest", "work": i32, "out": torch.int8}),
        (fused._round_clip, (acc, s, lim), {"mode": "pseudo_stochastic", "work": i32, "out": torch.int8}),
        (fused._round_clip, (acc, s, lim, torch.randint(0, 512, acc.shape, generator=g)),
         {"mode": "stochastic", "work": i32, "out": torch.int8}),
        (fused._clip, (acc, lim), {"work": i32, "out": torch.int8}),
        (fused._update, (acc.to(torch.int8), acc, s, fused._scalar(31, i32), lim), {"mode": "pseudo_stochastic",
                                                                                  "work": i32}),
        (fused._relu_backward, (x8.view(-1), x8.view(-1).flip(0)), {}),
        (fused._maxpool, (x8.view(8, 2, 4, 2, 16),), {"k": 2}),
        (fused._maxpool_backward, (out, idx), {"k": 2}),
        (fused._col2im, (acc[:2 * 4 * 4 * 3 * 3 * 8].view(2, 4, 4, 3, 3, 8),), {"kernel": (3, 3), "padding": (1, 1)}),
        (fused._sgd_update, (acc, acc.to(torch.int16), acc, *(fused._scalar(v, torch.int64, f"t{v}")
                                                             for v in (3, 2**20, 9, 300, 9, 4, 8, 32767))),
         {"mode": "pseudo_stochastic", "grad_down": True, "decay": "right", "momentum": True}),
        (fused._sgd_update, (acc, acc.to(torch.int16), acc, *(fused._scalar(v, torch.int64, f"t{v}")
                                                             for v in (3, 2**20, 9, 300, 9, 4, 8, 32767)),
                             None, None, (acc % 257 - 128).to(torch.int16)),
         {"mode": "pseudo_stochastic", "grad_down": True, "decay": "right", "momentum": True, "carry": True}),
    ]
    with fresh_cache():
        for chain, args, static in cases:
            compiled = torch.compile(chain.eager, dynamic=chain.dynamic, fullgraph=True,
                                     options={"cpp.dynamic_threads": True})
            result, codes = run_and_get_code(functools.partial(compiled, **static), *args)
            assert codes, f"{chain.__name__}: nothing was compiled"
            for code in codes:
                bad = [line.strip() for line in code.splitlines() if _FLOAT_WORDS.search(_LANE_MASK.sub("", line))]
                assert not bad, f"{chain.__name__} compiled to floating-point code: {bad[:3]}"
            want = chain.eager(*args, **static)
            for r, w in zip(result if isinstance(result, tuple) else (result,), want if isinstance(want, tuple)
                            else (want,)):
                assert torch.equal(r, w)


def _sgd_reference(grad, w, v, grad_shift, grad_bits, decay_shift, mult, mult_shift, k, fv, limit, mode,  # noqa: ANN001
                   g_noise, s_noise):  # noqa: ANN001, ANN202
    """The update of docs/numerics.md §5 step by step with ``numerics.round_shift`` (int64 tensors)."""
    from niti.numerics import round_shift

    x = grad.to(torch.int64)
    if grad_shift > 0:
        x = round_shift(x, grad_shift, mode, noise=g_noise).clamp(-(2**grad_bits - 1), 2**grad_bits - 1)
    else:
        x = x << -grad_shift
    w64 = w.to(torch.int64)
    if decay_shift is not None:
        x = x + (round_shift(w64, decay_shift, "nearest") if decay_shift > 0 else w64 << -decay_shift)
    x = round_shift(x * mult, mult_shift, "nearest")
    if k:
        v64 = torch.zeros_like(x) if v is None else v.to(torch.int64)
        x = v64 + round_shift(x - v64, k, "nearest")
    step = round_shift(x, fv, mode, noise=s_noise)
    return (w64 - step).clamp(-limit, limit).to(w.dtype), (x.to(torch.int32) if k else None)


@pytest.mark.parametrize("mode", ["nearest", "pseudo_stochastic", "truncate", "stochastic"])
@pytest.mark.parametrize("grad_shift,decay_shift,k", [(6, 3, 3), (-2, -1, 0), (1, None, 2), (12, 0, 1), (0, 2, 1)])
@pytest.mark.parametrize("grad_dtype,w_dtype", [(torch.int32, torch.int16), (torch.int64, torch.int8)])
def test_sgd_update_matches_the_step_by_step_reference(mode: str, grad_shift: int, decay_shift: int | None,
                                                       k: int, grad_dtype: torch.dtype, w_dtype: torch.dtype,
                                                       sgd_path: str) -> None:
    if sgd_path == "chain" and grad_dtype == torch.int64:
        pytest.skip("the compiled chain is checked on one dtype pair (each pair compiles afresh); the C loop on both")
    g = torch.Generator().manual_seed(grad_shift + 7 * k)
    n = 3000
    limit = torch.iinfo(w_dtype).max
    grad = torch.randint(-2**24, 2**24, (n,), dtype=grad_dtype, generator=g)
    w = torch.randint(-limit, limit + 1, (n,), dtype=w_dtype, generator=g)
    v = torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, generator=g) if k else None
    g_noise = torch.randint(0, 1 << max(grad_shift, 1), (n,), generator=g) if mode == "stochastic" and grad_shift > 0 \
        else None
    s_noise = torch.randint(0, 1 << 8, (n,), generator=g) if mode == "stochastic" else None
    args = dict(grad_shift=grad_shift, grad_bits=30, decay_shift=decay_shift, mult=3 * 181, mult_shift=9,
                momentum_shift=k, frac_bits=8, weight_limit=limit, mode=mode)
    for velocity in ([v, None] if k else [v]):  # a first step has no velocity yet: it starts at 0
        got_w, got_v = fused.sgd_update(grad, w, velocity, grad_noise=g_noise, step_noise=s_noise, **args)
        want_w, want_v = _sgd_reference(grad, w, velocity, grad_shift, 30, decay_shift, 3 * 181, 9, k, 8, limit, mode,
                                        g_noise, s_noise)
        assert got_w.dtype == w_dtype and torch.equal(got_w, want_w)
        assert (got_v is None) == (k == 0) and (got_v is None or torch.equal(got_v, want_v))
    _assert_compiled(fused._sgd_update)


@pytest.mark.parametrize("mode", ["pseudo_stochastic", "stochastic"])
@pytest.mark.parametrize("grad_shift,decay_shift,k", [(6, 3, 3), (-2, -1, 0), (12, 0, 1)])
def test_sgd_update_with_step_carry_matches_the_step_by_step_reference(mode: str, grad_shift: int,
                                                                       decay_shift: int | None, k: int,
                                                                       sgd_path: str) -> None:
    """The step carry (docs/numerics.md §5): the fractional step x plus the residual r, rounded to nearest; the
    new residual is what that rounding left (x + r = 2**8 · step + new r, exactly); the velocity is unchanged."""
    from niti.numerics import round_shift

    g = torch.Generator().manual_seed(grad_shift + 7 * k)
    n = 3000
    grad = torch.randint(-2**24, 2**24, (n,), dtype=torch.int32, generator=g)
    w = torch.randint(-30000, 30001, (n,), dtype=torch.int16, generator=g)
    v = torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, generator=g) if k else None
    r = torch.randint(-128, 129, (n,), dtype=torch.int16, generator=g)
    g_noise = torch.randint(0, 1 << grad_shift, (n,), generator=g) if mode == "stochastic" and grad_shift > 0 \
        else None
    args = dict(grad_shift=grad_shift, grad_bits=30, decay_shift=decay_shift, mult=3 * 181, mult_shift=9,
                momentum_shift=k, frac_bits=8, weight_limit=2**62, mode=mode)
    # The fractional step x, from the step-by-step reference with no rounding of the step (fv 0, an int64 weight).
    w64 = w.to(torch.int64)
    wide_w, want_v = _sgd_reference(grad, w64, v, grad_shift, 30, decay_shift, 3 * 181, 9, k, 0, 2**62, mode,
                                    g_noise, None)
    x = w64 - wide_w
    total = x + r.to(torch.int64)
    want_step = round_shift(total, 8, "nearest")
    args["weight_limit"] = 32767
    got_w, got_v, got_r = fused.sgd_update(grad, w, v, residual=r, grad_noise=g_noise, **args)
    want_w = (w64 - want_step).clamp(-32767, 32767).to(torch.int16)
    assert torch.equal(got_w, want_w)
    assert torch.equal(got_r, (total - (want_step << 8)).to(torch.int16)) and int(got_r.abs().max()) <= 128
    assert (got_v is None) == (k == 0) and (got_v is None or torch.equal(got_v, want_v))
    with pytest.raises(ValueError, match="step residual must be int16"):
        fused.sgd_update(grad, w, v, residual=r.to(torch.int32), **args)
