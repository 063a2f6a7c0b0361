"""Counter-based random bits (docs/numerics.md §14): exact against the pure-Python definition, uniform enough,
rank-independent, resumable, and the first version's generator scheme still available."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import niti
from niti import counter_bits
from niti.numerics import RoundingPolicy
from niti.runtime import Runtime


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), stream=st.sampled_from(sorted(counter_bits.STREAMS)),
       draw=st.integers(0, 2**64 - 1), start=st.integers(0, 2**32 - 40), count=st.integers(0, 40),
       part=st.integers(0, 1))
def test_words_equal_the_pure_python_definition(seed: int, stream: str, draw: int, start: int, count: int,
                                                part: int) -> None:
    got = counter_bits.words(seed, stream, draw, start, count, part=part).tolist()
    assert got == [counter_bits.word_reference(seed, stream, draw, i, part) for i in range(start, start + count)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), draw=st.integers(0, 2**64 - 1), start=st.integers(0, 2**32 - 5000),
       count=st.integers(0, 5000), part=st.integers(0, 1))
def test_the_c_loop_and_the_tensor_code_give_the_same_words(seed: int, draw: int, start: int, count: int,
                                                            part: int) -> None:
    """On the CPU ``words`` runs ``kernels/csrc/counter_words.c``; elsewhere the int64 tensor code: same bits."""
    from niti.kernels import cpu_counter

    if not cpu_counter.available():
        pytest.skip("no C compiler here: the tensor code is the only path")
    k1, k2 = counter_bits.draw_keys(seed, "rounding", draw, part)
    index = torch.arange(start, start + count, dtype=torch.int64)
    tensor_code = counter_bits._mix(counter_bits._mix(index ^ k1) ^ k2)
    assert torch.equal(counter_bits.words(seed, "rounding", draw, start, count, part=part), tensor_code)
    assert torch.equal(cpu_counter.words(start, count, k1, k2, bits=9), tensor_code & 511)
    last = cpu_counter.words(2**32 - 1, 1, k1, k2)  # the last index of a draw: no wrap into the next
    assert last.tolist() == [counter_bits.word_reference(seed, "rounding", draw, 2**32 - 1, part)]
    with pytest.raises(ValueError, match="2\\*\\*32"):
        cpu_counter.words(2**32 - 1, 2, k1, k2)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(0, counter_bits.MAX_BITS), n=st.integers(1, 30), draw=st.integers(0, 1000))
def test_uniform_bits_are_the_low_bits_of_one_or_two_words(bits: int, n: int, draw: int) -> None:
    got = counter_bits.uniform_bits(7, "rounding", draw, bits, (n,), start=3).tolist()
    for i, v in enumerate(got):
        word = counter_bits.word_reference(7, "rounding", draw, 3 + i)
        if bits > 32:
            word |= counter_bits.word_reference(7, "rounding", draw, 3 + i, 1) << 32
        assert v == word & ((1 << bits) - 1)
        assert 0 <= v < 1 << bits


def test_words_are_near_uniform_and_independent_of_their_neighbours() -> None:
    """Fixed inputs, so a fixed outcome: each of 16 bit positions is set in 50 % ± 1 % of 2**18 words, the
    low byte's 256 values pass a chi-square bound, and neighbouring elements and draws agree in half the bits."""
    n = 1 << 18
    w = counter_bits.words(0, "rounding", 0, 0, n)
    for b in range(16):
        assert abs(int(((w >> b) & 1).sum()) - n // 2) < n // 100
    counts = torch.bincount(w & 255, minlength=256)
    chi2 = int(((counts * 256 - n) ** 2).sum()) / (n * 256)
    assert chi2 < 330  # 255 degrees of freedom: p ≈ 0.001
    for other in (torch.roll(w, 1), counter_bits.words(0, "rounding", 1, 0, n),
                  counter_bits.words(1, "rounding", 0, 0, n), counter_bits.words(0, "dropout", 0, 0, n)):
        differ = torch.bitwise_xor(w, other)
        flipped = sum(int(((differ >> b) & 1).sum()) for b in range(32))
        assert abs(flipped - 16 * n) < 16 * n // 100


def test_bad_draw_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="2\\*\\*32"):
        counter_bits.words(0, "rounding", 0, 2**32 - 1, 2)
    with pytest.raises(ValueError, match="stream"):
        counter_bits.draw_keys(0, "weights", 0)
    with pytest.raises(ValueError, match="bits"):
        counter_bits.uniform_bits(0, "rounding", 0, 63, (2,))
    with pytest.raises(ValueError, match="power-of-two"):
        Runtime().uniform(6, (2,), batched=False, device=torch.device("cpu"))


def test_a_rank_hashes_its_own_slice_of_the_whole_batch_draw() -> None:
    whole = Runtime(seed=4).uniform(1 << 13, (8, 10), batched=True, device=torch.device("cpu"))
    for rank in range(4):
        local = Runtime(seed=4, rank=rank, world_size=4).uniform(1 << 13, (2, 10), batched=True,
                                                                  device=torch.device("cpu"))
        assert torch.equal(local, whole[rank * 2:(rank + 1) * 2])


@pytest.mark.parametrize("random_bits", ["counter", "generator"])
def test_a_rank_gets_its_slice_of_the_whole_batch_dropout_mask(random_bits: str) -> None:
    whole = Runtime(seed=4, random_bits=random_bits).dropout_mask((8, 3, 10), "cpu", batched=True)
    assert set(whole.unique().tolist()) == {0, 1} and not torch.equal(whole[0], whole[1])  # a mask per sample
    for rank in range(4):
        local = Runtime(seed=4, rank=rank, world_size=4, random_bits=random_bits).dropout_mask((2, 3, 10), "cpu",
                                                                                              batched=True)
        assert torch.equal(local, whole[rank * 2:(rank + 1) * 2])


def test_each_draw_and_stream_moves_its_own_counter() -> None:
    rt = Runtime(seed=1)
    a = rt.uniform(16, (5,), batched=False, device=torch.device("cpu"))
    b = rt.uniform(16, (5,), batched=False, device=torch.device("cpu"))
    mask = rt.dropout_mask((5,), "cpu")
    assert rt.draws == {"rounding": 2, "dropout": 1}
    assert not torch.equal(a, b) and mask.dtype == torch.int8 and set(mask.tolist()) <= {0, 1}
    fresh = Runtime(seed=1)
    fresh.load_state_dict({**Runtime(seed=1).state_dict(), "rounding_draws": torch.tensor(1)})
    assert torch.equal(fresh.uniform(16, (5,), batched=False, device=torch.device("cpu")), b)


def test_state_carries_the_seed_and_the_scheme() -> None:
    a, b = Runtime(seed=2**64 - 1), Runtime(seed=5)
    a.uniform(8, (3,), batched=False, device=torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert b.stream_seed == 2**64 - 1 and b.draws == a.draws
    assert torch.equal(a.uniform(8, (9,), batched=False, device=torch.device("cpu")),
                       b.uniform(8, (9,), batched=False, device=torch.device("cpu")))
    old = Runtime(seed=5, random_bits="generator")
    c = Runtime(seed=5)
    c.load_state_dict(old.state_dict())  # a checkpoint from before the counter scheme resumes with generators
    assert c.random_bits == "generator" and set(c.state_dict()) == {"rounding_generator", "dropout_generator"}
    assert torch.equal(c.uniform(8, (9,), batched=False, device=torch.device("cpu")),
                       old.uniform(8, (9,), batched=False, device=torch.device("cpu")))
    with pytest.raises(ValueError, match="random_bits"):
        Runtime(random_bits="philox")


def _train(random_bits: str, steps: int = 3) -> niti.models.IntegerModel:
    model = niti.build("vgg-small-7-quarter", seed=3, total_steps=8, random_bits=random_bits,
                       policy=RoundingPolicy.all("stochastic"))
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        model.train_step(torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8),
                         torch.randint(0, 10, (8,), generator=g))
    return model


def test_models_train_with_either_scheme_and_resume_exactly() -> None:
    """Every role on stochastic rounding, dropout on: the schemes differ, each is reproducible, and a state
    saved mid-run continues with the same bits."""
    counter, generator = _train("counter"), _train("generator")
    assert counter.weights_sha256() == _train("counter").weights_sha256()
    assert counter.weights_sha256() != generator.weights_sha256()
    assert counter.runtime.draws["dropout"] == 3 and counter.runtime.draws["rounding"] > 3
    resumed = niti.build("vgg-small-7-quarter", seed=11, total_steps=8, policy=RoundingPolicy.all("stochastic"))
    resumed.load_state_dict(_train("counter", 2).state_dict())
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8),
                torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    resumed.train_step(*batches[2])
    assert resumed.weights_sha256() == counter.weights_sha256()
