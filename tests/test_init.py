"""Integer Xavier initialisation (docs/numerics.md §8): 7-bit bound, integer draws, seeded."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from niti.nn import Conv2d, Linear
from niti.nn.init import xavier_exponent, xavier_int8


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2_000_000), st.integers(1, 2_000_000))
def test_xavier_exponent_fills_seven_bits_and_is_the_floor_of_the_bound(fan_in: int, fan_out: int) -> None:
    bound_m, e = xavier_exponent(fan_in, fan_out)
    assert 64 <= bound_m <= 127
    assert e <= 0
    fans, k = fan_in + fan_out, -e
    # bound_m = floor(sqrt(6 / fans) · 2**k), checked with integers: bound_m² ≤ 6·4**k / fans < (bound_m+1)².
    assert bound_m**2 * fans <= 6 * 4**k < (bound_m + 1) ** 2 * fans
    # Read as a value (test-side float), within 1/64 below the Xavier bound.
    xavier = math.sqrt(6 / fans)
    assert xavier * (1 - 1 / 64) <= bound_m * 2.0**e <= xavier


@pytest.mark.parametrize("fan_in,fan_out,want", [
    (1, 1, (110, -6)),        # sqrt(6/2) = 1.7321 · 2**6 = 110.85
    (25, 500, (109, -10)),    # sqrt(6/525) = 0.10690 · 2**10 = 109.47
    (800, 500, (69, -10)),    # sqrt(6/1300) = 0.067937 · 2**10 = 69.57 (LeNet fc1)
    (4608, 4608, (104, -12)), # sqrt(6/9216) = 0.025516 · 2**12 = 104.5
])
def test_xavier_exponent_known_values(fan_in: int, fan_out: int, want: tuple[int, int]) -> None:
    assert xavier_exponent(fan_in, fan_out) == want


def test_xavier_exponent_rejects_empty_fans() -> None:
    with pytest.raises(ValueError, match="positive"):
        xavier_exponent(0, 0)


def test_draws_fill_the_int8_range() -> None:
    """The Xavier range mapped onto ±127 (the reference's init): every value in [-127, 127] occurs."""
    m, e = xavier_int8((500, 800), 800, 500, torch.Generator().manual_seed(0))
    assert m.dtype == torch.int8 and e == xavier_exponent(800, 500)[1]
    assert int(m.min()) == -127 and int(m.max()) == 127 and m.unique().numel() == 255
    assert abs(int(m.to(torch.int64).sum())) < 400_000 * 3


def test_draws_within_bound_and_cover_it() -> None:
    g = torch.Generator().manual_seed(0)
    m, e = xavier_int8((500, 800), 800, 500, g, full_range=False)
    bound_m, e_want = xavier_exponent(800, 500)
    assert m.dtype == torch.int8 and m.shape == (500, 800) and e == e_want
    assert int(m.min()) == -bound_m and int(m.max()) == bound_m  # 400k uniform draws reach both ends
    assert int(m.abs().max()) <= 127
    # Roughly uniform: the mean is near zero and every value in the range occurs.
    assert abs(int(m.to(torch.int64).sum())) < 400_000 * 3
    assert m.unique().numel() == 2 * bound_m + 1


def test_seeded_determinism() -> None:
    def draw(seed: int) -> torch.Tensor:
        return xavier_int8((64, 3, 3, 32), 288, 576, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


@pytest.mark.parametrize("c_in,c_out,k", [(1, 20, 5), (20, 50, 5), (128, 256, 3), (3, 8, (3, 5))])
def test_conv_layer_uses_xavier_fans(c_in: int, c_out: int, k) -> None:
    layer = Conv2d(c_in, c_out, k, generator=torch.Generator().manual_seed(3))
    kh, kw = (k, k) if isinstance(k, int) else k
    bound_m, e = xavier_exponent(c_in * kh * kw, c_out * kh * kw)
    assert layer.weight.shape == (c_out, kh, kw, c_in)
    assert layer.weight.e == e and int(layer.weight.m.abs().max()) <= 127
    assert layer.weight.m.dtype == torch.int8
    narrow = Conv2d(c_in, c_out, k, generator=torch.Generator().manual_seed(3), full_range_init=False)
    assert narrow.weight.e == e and int(narrow.weight.m.abs().max()) <= bound_m


def test_linear_layer_uses_xavier_fans() -> None:
    layer = Linear(800, 500, generator=torch.Generator().manual_seed(3), full_range_init=False)
    bound_m, e = xavier_exponent(800, 500)
    assert layer.weight.shape == (500, 800) and layer.weight.e == e
    assert int(layer.weight.m.abs().max()) == bound_m
    assert int(Linear(800, 500, generator=torch.Generator().manual_seed(3)).weight.m.abs().max()) == 127
