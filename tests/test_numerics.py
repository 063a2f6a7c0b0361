"""numerics against a pure-Python integer reference (docs/numerics.md §2–3)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from niti.numerics import ROUNDING_MODES, IntTensor, RoundingPolicy, bits, rescale, round_shift


def ref_round(x: int, s: int, mode: str, u: int = 0) -> int:
    """docs/numerics.md §3 written with Python ints, sign-magnitude."""
    if s == 0:
        return x
    a, sign = abs(x), (-1 if x < 0 else 1)
    low, q = a % (1 << s), a >> s
    if mode == "nearest":
        q += low >= (1 << (s - 1))
    elif mode == "pseudo_stochastic":
        h = s // 2
        hi, lo = low >> h, low % (1 << h)
        if s % 2:
            lo *= 2
        q += hi > lo
    elif mode == "stochastic":
        q += u < low
    return sign * q


ints = st.integers(-(2**31) + 1, 2**31 - 1)


@pytest.mark.parametrize("x,s,want", [(1000, 4, 63), (-1000, 4, -63), (1000, 5, 32), (12345, 9, 24)])
def test_psr_worked_values(x: int, s: int, want: int) -> None:
    assert round_shift(torch.tensor([x], dtype=torch.int32), s, "pseudo_stochastic").item() == want


@settings(max_examples=300, deadline=None)
@given(st.lists(ints, min_size=1, max_size=40), st.integers(0, 30),
       st.sampled_from(["nearest", "pseudo_stochastic", "truncate"]))
def test_deterministic_modes_match_reference(xs: list[int], s: int, mode: str) -> None:
    t = torch.tensor(xs, dtype=torch.int64)
    got = round_shift(t, s, mode).tolist()
    assert got == [ref_round(x, s, mode) for x in xs]
    # int32 inputs take the int32 path; same answers.
    assert round_shift(t.to(torch.int32), s, mode).tolist() == got


@settings(max_examples=100, deadline=None)
@given(st.lists(ints, min_size=1, max_size=40), st.integers(1, 30), st.integers(0, 2**32))
def test_stochastic_matches_reference_given_noise(xs: list[int], s: int, seed: int) -> None:
    t = torch.tensor(xs, dtype=torch.int64)
    u = torch.randint(0, 1 << s, t.shape, generator=torch.Generator().manual_seed(seed))
    got = round_shift(t, s, "stochastic", noise=u).tolist()
    assert got == [ref_round(x, s, "stochastic", int(v)) for x, v in zip(xs, u)]


@settings(max_examples=200, deadline=None)
@given(st.lists(ints, min_size=1, max_size=40), st.integers(0, 30), st.sampled_from(ROUNDING_MODES))
def test_modes_symmetric_about_zero(xs: list[int], s: int, mode: str) -> None:
    t = torch.tensor(xs, dtype=torch.int64)
    noise = torch.randint(0, 1 << s, t.shape) if s else None
    assert torch.equal(round_shift(-t, s, mode, noise=noise), -round_shift(t, s, mode, noise=noise))


def test_stochastic_is_unbiased_on_average() -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.full((200_000,), 1000, dtype=torch.int32)  # 1000 / 16 = 62.5
    r = round_shift(t, 4, "stochastic", generator=g)
    assert set(r.unique().tolist()) == {62, 63}
    mean_x1000 = int(r.sum()) * 1000 // r.numel()
    assert abs(mean_x1000 - 62_500) < 150  # within ~7 standard errors of 62.5


def test_psr_rounds_up_with_the_frequency_its_definition_gives() -> None:
    # Over every value of the discarded bits, PSR rounds up exactly when hi > lo.
    for s in range(1, 11):
        low = torch.arange(1 << s, dtype=torch.int64)
        up = round_shift((1 << s) * 5 + low, s, "pseudo_stochastic") - 5
        h = s // 2
        want = sum(1 for v in range(1 << s) if (v >> h) > (v % (1 << h)) * (2 if s % 2 else 1))
        assert int(up.sum()) == want
        # Roughly unbiased: it rounds up about half of the time.
        assert abs(want - (1 << (s - 1))) <= (1 << (s - 1)) // 2 + 1


def test_nearest_ties_away_from_zero() -> None:
    t = torch.tensor([8, -8, 24, -24, 7, -7], dtype=torch.int32)
    assert round_shift(t, 4, "nearest").tolist() == [1, -1, 2, -2, 0, 0]


@settings(max_examples=200, deadline=None)
@given(st.lists(ints, min_size=0, max_size=40))
def test_bits_is_bit_length_of_max_magnitude(xs: list[int]) -> None:
    t = torch.tensor(xs, dtype=torch.int64)
    assert bits(t) == max((abs(x) for x in xs), default=0).bit_length()


@settings(max_examples=200, deadline=None)
@given(st.lists(ints, min_size=1, max_size=40), st.integers(1, 15), st.sampled_from(ROUNDING_MODES))
def test_rescale_clips_and_shifts(xs: list[int], target: int, mode: str) -> None:
    t = torch.tensor(xs, dtype=torch.int64)
    noise_gen = torch.Generator().manual_seed(0)
    r, shift = rescale(t, target, mode, noise_gen)
    assert shift == max(0, max(abs(x) for x in xs).bit_length() - target)
    assert int(r.abs().max()) <= (1 << target) - 1
    if mode != "stochastic":
        want = [max(-(1 << target) + 1, min((1 << target) - 1, ref_round(x, shift, mode))) for x in xs]
        assert r.tolist() == want


def test_rescale_never_wraps_128() -> None:
    # The reference's ceil(log2) let 128 through unshifted and wrapped it to -128.
    r, shift = rescale(torch.tensor([128, -128, 5], dtype=torch.int32), 7, "nearest")
    assert shift == 1 and r.dtype == torch.int8 and r.tolist() == [64, -64, 3]


def test_rescale_all_zero_and_small() -> None:
    r, shift = rescale(torch.zeros(5, dtype=torch.int32), 7, "nearest")
    assert shift == 0 and r.tolist() == [0] * 5
    r, shift = rescale(torch.tensor([127, -127], dtype=torch.int32), 7, "nearest")
    assert shift == 0 and r.tolist() == [127, -127]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="rounding mode"):
        round_shift(torch.tensor([1]), 1, "banker")
    with pytest.raises(ValueError, match="rounding mode for gradient"):
        RoundingPolicy(gradient="float")
    with pytest.raises(TypeError, match="integer tensor"):
        IntTensor(torch.zeros(2), 0)
    with pytest.raises(TypeError, match="exponent"):
        IntTensor(torch.zeros(2, dtype=torch.int8), 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["nearest", "pseudo_stochastic", "truncate"])
def test_int32_min_keeps_its_sign(mode: str) -> None:
    """abs(-2**31) wraps in int32; rounding must still see a negative value (and keep int32)."""
    t = torch.tensor([-2**31, 5, 2**31 - 1], dtype=torch.int32)
    r = round_shift(t, 25, mode)
    assert r.dtype == torch.int32 and r.tolist() == [-64, 0, 64 if mode != "truncate" else 63]
    narrow, shift = rescale(t, 7, mode)
    assert shift == 25 and narrow.tolist()[0] == -64


# --------------------------------------------------------------------------- aligned_sum (numerics.md §4)
def ref_aligned_sum(terms: list[tuple[list[int], int, int]]) -> tuple[list[int], int]:
    """The spec with Python ints: common exponent, exact left shifts, nearest-rounded right shifts."""
    top = max(e + b for _, e, b in terms)
    e = max(min(e for _, e, _ in terms), top + (len(terms) - 1).bit_length() - 30)
    out = [0] * len(terms[0][0])
    for m, e_i, _ in terms:
        for j, v in enumerate(m):
            out[j] += v << (e_i - e) if e_i >= e else ref_round(v, e - e_i, "nearest")
    return out, e


int8_lists = st.lists(st.integers(-127, 127), min_size=4, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(int8_lists, st.integers(-40, 40)), min_size=1, max_size=4))
def test_aligned_sum_matches_reference_and_never_overflows(terms) -> None:
    from niti.numerics import aligned_sum

    spec = [(m, e, 7) for m, e in terms]
    got, e = aligned_sum([(torch.tensor(m, dtype=torch.int8), e, 7) for m, e in terms])
    want, want_e = ref_aligned_sum(spec)
    assert got.dtype == torch.int32 and e == want_e and got.tolist() == want
    assert all(abs(v) < 2**31 for v in want)
    if max(e for _, e in terms) - min(e for _, e in terms) <= 23 - (len(terms) - 1).bit_length():  # exact
        exact = sum(sum(v * 2 ** (ei - e) for v in [m[j]]) for m, ei in terms for j in [0])
        assert got[0].item() == exact


def test_default_policy_rounds_errors_stochastically_and_reference_is_the_papers() -> None:
    """niti's default differs from the reference in one role, the errors (docs/numerics.md §9); a run's
    config records its modes, so the default's change does not alter a resumed run."""
    from niti.train import TrainConfig

    assert RoundingPolicy() == RoundingPolicy("nearest", "stochastic", "pseudo_stochastic", "stochastic")
    assert RoundingPolicy.reference() == RoundingPolicy("nearest", "nearest", "pseudo_stochastic", "stochastic")
    assert RoundingPolicy.rng_free() == RoundingPolicy("nearest", "nearest", "pseudo_stochastic", "pseudo_stochastic")
    assert TrainConfig().policy == RoundingPolicy()
    old = TrainConfig.from_dict({**TrainConfig().to_dict(), "err_round": "nearest"})
    assert old.policy == RoundingPolicy.reference()


@settings(max_examples=150, deadline=None)
@given(st.lists(ints, min_size=1, max_size=300), st.integers(0, 4), st.sampled_from(ROUNDING_MODES))
def test_activation_clip_bits_shift_less_and_saturate(xs: list[int], clip: int, mode: str) -> None:
    """``Runtime.rescale(..., clip_bits=c)`` (§2): the shift is ``max(0, width - 7 - c)``, every value is rounded
    at that shift and the ones past ±127 saturate; the C stochastic pass (int32, > 256 elements) agrees."""
    from niti.runtime import Runtime

    t = torch.tensor(xs, dtype=torch.int32)
    rt = Runtime(RoundingPolicy(activation=mode), seed=3)
    out, shift = rt.rescale(t, 7, "activation", clip_bits=clip)
    assert shift == max(0, max(abs(x) for x in xs).bit_length() - 7 - clip)
    assert out.dtype == torch.int8
    if mode == "stochastic":
        assert all(abs(ref_round(x, shift, "truncate") - int(o)) <= 1 or abs(int(o)) == 127 for x, o in zip(xs, out))
    else:
        assert out.tolist() == [max(-127, min(127, ref_round(x, shift, mode))) for x in xs]
    big = t.repeat(4)  # past the C pass's threshold; the same draws as the tensor code
    again = Runtime(RoundingPolicy(activation=mode), seed=3)
    wide, s2 = again.rescale(big, 7, "activation", clip_bits=clip)
    mode_, s3, noise = Runtime(RoundingPolicy(activation=mode), seed=3).rounding(big, 7, "activation", clip_bits=clip)
    want, _ = rescale(big, 7, mode_, bit_width=max(abs(x) for x in xs).bit_length() - clip, noise=noise)
    assert s2 == s3 == shift and torch.equal(wide, want)


def test_clip_bits_must_not_be_negative() -> None:
    from niti.runtime import Runtime

    with pytest.raises(ValueError, match="clip_bits"):
        Runtime().rescale(torch.tensor([5], dtype=torch.int32), 7, "activation", clip_bits=-1)


def ref_share_shift(xs: list[int], target: int, clip: int, k: int) -> int:
    """§2's share-bounded clip with Python ints: the smallest shift at most ``clip`` below the fitting one (and
    >= 0) at which at most 2**-k of the values are past the target's range before rounding."""
    fit = max(0, max(abs(x) for x in xs).bit_length() - target)
    for shift in range(max(0, fit - clip), fit + 1):
        past = sum(abs(x) >> shift >= 1 << target for x in xs)
        if past * 2**k <= len(xs):
            return shift
    raise AssertionError("the fitting shift saturates nothing")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ints, st.sampled_from([-(2**31), 2**31 - 1, 127, 128, -128, 0])), min_size=1, max_size=300),
       st.integers(0, 4), st.integers(1, 10), st.integers(1, 4))
def test_clip_share_saturates_at_most_its_share(xs: list[int], clip: int, k: int, copies: int) -> None:
    """``clip_share`` k (§2): the shift is the smallest within ``clip_bits`` of the fitting one that saturates at
    most 2**-k of the values, as the pure-Python reference counts them; the output is ``rescale`` at that shift
    (the C stochastic pass too, once past its size threshold)."""
    from niti.runtime import Runtime

    t = torch.tensor(xs * copies, dtype=torch.int32)
    want_shift = ref_share_shift(xs * copies, 7, clip, k)
    for mode in ("nearest", "stochastic"):
        rt = Runtime(RoundingPolicy(activation=mode), seed=5)
        out, shift = rt.rescale(t, 7, "activation", clip_bits=clip, clip_share=k)
        assert shift == want_shift
        _, _, noise = Runtime(RoundingPolicy(activation=mode), seed=5).rounding(t, 7, "activation", clip_bits=clip,
                                                                                  clip_share=k)
        want, _ = rescale(t, 7, mode, bit_width=shift + 7, noise=noise)
        assert torch.equal(out, want)


def test_clip_share_zero_is_the_full_clip_and_bounds_are_checked() -> None:
    """k = 0 bounds nothing (the fixed clip); a share bound lets a short-tailed batch keep its fitting shift and a
    long-tailed one clip; negative values and out-of-range settings are refused by name."""
    from niti.numerics import check_act_clip_share, clip_for_share, clip_thresholds
    from niti.runtime import Runtime

    flat = torch.arange(-1000, 1001, dtype=torch.int32)  # uniform: c = 1 saturates |x| >= 512, about half
    tail = torch.cat([torch.full((999,), 10, dtype=torch.int32), torch.tensor([1000], dtype=torch.int32)])
    rt = Runtime()
    assert rt.rescale(flat, 7, "activation", clip_bits=2, clip_share=0)[1] == 1
    assert rt.rescale(flat, 7, "activation", clip_bits=2, clip_share=1)[1] == 2  # 978 of 2,001 saturate
    assert rt.rescale(flat, 7, "activation", clip_bits=2, clip_share=2)[1] == 3
    assert rt.rescale(tail, 7, "activation", clip_bits=2, clip_share=6)[1] == 1  # one in 1,000 saturates
    assert rt.rescale(tail, 7, "activation", clip_bits=2, clip_share=10)[1] == 3
    from niti import integer_only

    with integer_only() as mode:  # the count is integer work too
        assert rt.rescale(tail, 7, "activation", clip_bits=2, clip_share=6)[1] == 1
    assert mode.ops > 0
    assert clip_thresholds(10, 7, 3) == [512, 256, 128] and clip_thresholds(8, 7, 2) == [128, 128]
    assert clip_for_share([0, 3, 9], 200, 3, 6) == 2 and clip_for_share([5, 5], 10, 2, 0) == 2
    assert check_act_clip_share(6) == 6
    for bad in (-1, 31, True, 2.0):
        with pytest.raises(ValueError, match="act_clip_share"):
            check_act_clip_share(bad)
    with pytest.raises(ValueError, match="clip_share"):
        rt.rescale(flat, 7, "activation", clip_bits=1, clip_share=-1)
