"""The integer update and the gb schedule (docs/numerics.md §5–6)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import niti
from niti.nn.module import IntParameter
from niti.numerics import RoundingPolicy, rescale
from niti.optim import GbSchedule, apply_update
from niti.runtime import Runtime


def _nearest_runtime() -> Runtime:
    return Runtime(RoundingPolicy.all("nearest"))


# --------------------------------------------------------------------------- schedule
def ref_gb(schedule: GbSchedule, step: int, total: int) -> int:
    """gb from exact fractions: the last boundary b with step / total >= b picks the value."""
    index = sum(Fraction(step, total) >= Fraction(str(b)) for b in schedule.boundaries)
    return schedule.values[index]


def test_reference_schedule_boundaries_per_step() -> None:
    s = GbSchedule.reference()
    assert (s.values, s.boundaries) == ((5, 4, 3), (0.5, 0.75))
    seq = [s.gb_at(i, 100) for i in range(100)]
    assert seq == [5] * 50 + [4] * 25 + [3] * 25
    seq = [s.gb_at(i, 10) for i in range(10)]
    assert seq == [5] * 5 + [4] * 3 + [3] * 2  # step 7 is 0.7 < 0.75
    assert s.gb_at(0, None) == 5 and s.gb_at(10_000, None) == 5  # unknown length: first value


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 9999), min_size=0, max_size=4, unique=True), st.integers(1, 5000), st.data())
def test_gb_at_matches_exact_fractions(bounds: list[int], total: int, data) -> None:
    boundaries = tuple(b / 10_000 for b in sorted(bounds))
    values = tuple(data.draw(st.lists(st.integers(1, 7), min_size=len(bounds) + 1, max_size=len(bounds) + 1)))
    s = GbSchedule(values, boundaries)
    step = data.draw(st.integers(0, total - 1))
    assert s.gb_at(step, total) == ref_gb(s, step, total)


def test_one_epoch_run_decays_5_4_3_inside_the_epoch(mnist) -> None:
    """The model places each step on the schedule: a single short run still goes 5 → 4 → 3."""
    total = 8
    model = niti.build("lenet", seed=0, total_steps=total, schedule=GbSchedule.reference())
    images = torch.from_numpy(mnist["x_train"][:8 * total]).reshape(-1, 28, 28, 1)
    labels = torch.from_numpy(mnist["y_train"][:8 * total]).to(torch.int64)
    used: list[int] = []
    real_apply = niti.models.integer.apply_update

    def spy(param, gb, *args):
        used.append(gb)
        return real_apply(param, gb, *args)

    mp = pytest.MonkeyPatch()
    mp.setattr(niti.models.integer, "apply_update", spy)
    try:
        per_step = []
        for i in range(total):
            per_step.append(model.current_gb())
            model.train_step(images[8 * i:8 * i + 8], labels[8 * i:8 * i + 8])
    finally:
        mp.undo()
    assert per_step == [5, 5, 5, 5, 4, 4, 3, 3]
    n_params = len(model.parameters())
    assert used == [gb for gb in per_step for _ in range(n_params)]


@pytest.mark.parametrize("text", ["5,4,3@0.5,0.75", "5", "6,2@0.125", "7,5,3,1@0.1,0.25,0.9", "3,0,-3@0.5,0.75"])
def test_parse_str_round_trip(text: str) -> None:
    s = GbSchedule.parse(text)
    assert str(s) == text
    assert GbSchedule.parse(str(s)) == s


def test_parse_values() -> None:
    assert GbSchedule.parse("5,4,3@0.5,0.75") == GbSchedule.reference()
    assert GbSchedule.parse("4") == GbSchedule.constant(4) == GbSchedule((4,), ())
    from niti.train import TrainConfig

    assert str(GbSchedule()) == "5,5/3,-5/3@0.5,0.75" == TrainConfig().gb_schedule
    assert GbSchedule.parse("5,5/3,-5/3@1/2,3/4") == GbSchedule()
    assert str(GbSchedule.per_tensor()) == "5,4,3,2@0.25,0.5,0.75"
    assert GbSchedule.parse("5,4,3,2@0.25,0.5,0.75") == GbSchedule.per_tensor()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 999), min_size=0, max_size=4, unique=True), st.data())
def test_round_trip_any_schedule(bounds: list[int], data) -> None:
    boundaries = tuple(b / 1000 for b in sorted(bounds))
    values = tuple(data.draw(st.lists(st.integers(-7, 7), min_size=len(bounds) + 1, max_size=len(bounds) + 1)))
    s = GbSchedule(values, boundaries)
    assert GbSchedule.parse(str(s)) == s


@pytest.mark.parametrize("values,boundaries,match", [
    ((5, 4), (0.5, 0.75), "one more value"),
    ((5, 4, 3), (0.5,), "one more value"),
    ((8,), (), "-7..7"),
    ((-8, 3), (0.5,), "-7..7"),
    ((5, 4, 3), (0.75, 0.5), "increasing"),
    ((5, 4), (0.0,), r"\(0, 1\)"),
    ((5, 4), (1.0,), r"\(0, 1\)"),
    ((5, 4), (-0.5,), r"\(0, 1\)"),
])
def test_schedule_validation(values, boundaries, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GbSchedule(values, boundaries)


def test_gb_below_1_needs_16bit_accumulators() -> None:
    """With the per-tensor rescale a step below one int8 LSB needs an int16 master."""
    from niti.optim import UpdateRule

    s = GbSchedule.parse("3,0,-3@0.5,0.75")
    s.check_accumulator_bits(16)
    with pytest.raises(ValueError, match="16-bit weight accumulators"):
        s.check_accumulator_bits(8)
    GbSchedule.parse("5,4,3@0.5,0.75").check_accumulator_bits(8)
    per_tensor = UpdateRule(step_scale="max")
    with pytest.raises(ValueError, match="16-bit weight accumulators"):
        niti.build("lenet", schedule=s, accumulator_bits=8, rule=per_tensor)  # rejected before any weight exists
    assert niti.build("lenet", schedule=s, accumulator_bits=16, rule=per_tensor).schedule == s


def test_float_sgd_step_takes_any_gb_with_int8_weights() -> None:
    """With float SGD's step gb is a log2 learning rate: int8 masters take gb below 1 (the default schedule's
    -5/3), where a step rounds mostly to 0, and never move further than at gb 5."""
    from niti.optim import UpdateRule

    s = GbSchedule.parse("3,0,-3@0.5,0.75")
    s.check_accumulator_bits(8, step_scale="exponent")
    assert niti.build("lenet", schedule=s, accumulator_bits=8).schedule == s
    model = niti.build("lenet", accumulator_bits=8, total_steps=4)  # the default schedule reaches -5/3
    assert model.rule == UpdateRule() and model.rule.step_scale == "exponent" and min(model.schedule.values) < 1
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,), generator=g)
    moved = {}
    for gb in (Fraction(5), Fraction(-5, 3)):
        m = niti.build("lenet", accumulator_bits=8, schedule=GbSchedule.constant(gb), total_steps=1)
        before = [p.m.clone() for p in m.parameters()]
        m.train_step(images, labels)
        moved[gb] = sum(int((p.m.int() - b.int()).abs().sum()) for p, b in zip(m.parameters(), before))
    assert moved[Fraction(-5, 3)] < moved[Fraction(5)] and moved[Fraction(5)] > 0


def test_per_layer_gb_offsets_are_added_to_the_scheduled_gb() -> None:
    """gb_offsets[i] moves weight layer i's gb: its update is the one apply_update makes at gb + offset."""
    offsets = (-1, 0, 0, 2)
    model = niti.build("lenet", seed=0, schedule=GbSchedule.constant(3), accumulator_bits=16, gb_offsets=offsets)
    twin = niti.build("lenet", seed=0, schedule=GbSchedule.constant(3), accumulator_bits=16)
    assert model.gb_offsets == offsets and twin.gb_offsets == (0, 0, 0, 0)
    used: list[int] = []
    real_apply = niti.models.integer.apply_update

    def spy(param, gb, *args):
        used.append(gb)
        return real_apply(param, gb, *args)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,), generator=g)
    mp = pytest.MonkeyPatch()
    mp.setattr(niti.models.integer, "apply_update", spy)
    try:
        model.train_step(images, labels)
    finally:
        mp.undo()
    assert used == [2, 3, 3, 5]
    twin.train_step(images, labels)
    # Same gradients, different steps: the layers with offset 0 match the twin, the others do not.
    same = [torch.equal(a.master, b.master) for a, b in zip(model.parameters(), twin.parameters())]
    assert same == [False, True, True, False]


@pytest.mark.parametrize("offsets,bits,match", [
    ((0, 0, 1), 16, "one value per parameter tensor"),
    ((0, 0, 0, 3), 16, "outside -7..7"),  # 5 + 3 = 8
    ((-5, 0, 0, 0), 8, "16-bit weight accumulators"),  # 2 - 5 < 1 with int8 weights and the per-tensor rescale
])
def test_bad_gb_offsets_are_rejected(offsets, bits: int, match: str) -> None:
    from niti.optim import UpdateRule

    with pytest.raises(ValueError, match=match):
        niti.build("lenet", gb_offsets=offsets, accumulator_bits=bits, rule=UpdateRule(step_scale="max"),
                   schedule=GbSchedule.per_tensor())


def test_parse_offsets() -> None:
    assert GbSchedule.parse_offsets("") == ()
    assert GbSchedule.parse_offsets("0,0,-1, 2") == (0, 0, -1, 2)
    with pytest.raises(ValueError, match="comma-separated integers"):
        GbSchedule.parse_offsets("0,x")


@pytest.mark.parametrize("text", ["", "a,b", "5,4@x", "5,4,3@0.5", "9", "-8"])
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        GbSchedule.parse(text)


# --------------------------------------------------------------------------- 8-bit update
def test_apply_update_8bit_exact_and_clipped_at_127() -> None:
    m = torch.tensor([[120, -120, 0, 5, 127, -127]], dtype=torch.int8)
    grad = torch.tensor([[-5000, 5000, 100, -40, 9999, -9999]], dtype=torch.int32)
    p = IntParameter(m.clone(), -7)
    p.grad = grad.clone()
    apply_update(p, 5, _nearest_runtime())
    g, shift = rescale(grad, 5, "nearest")
    assert shift == grad.abs().max().item().bit_length() - 5 and int(g.abs().max()) <= 31
    want = (m.to(torch.int32) - g).clamp(-127, 127)
    assert p.m.dtype == torch.int8 and p.m.tolist() == want.tolist()
    # shift 9: g = [-10, 10, 0, 0, 20, -20]; 120 + 10 clips at 127 and -120 - 10 at -127 (never -128).
    assert p.m.tolist() == [[127, -127, 0, 5, 107, -107]]
    assert p.e == -7 and p.grad is None  # exponent fixed; the gradient is consumed


def test_apply_update_respects_gb_and_mode() -> None:
    grad = torch.randint(-2**20, 2**20, (64, 32), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    for gb in (1, 3, 5, 7):
        for mode in ("nearest", "pseudo_stochastic", "truncate"):
            p = IntParameter(torch.zeros((64, 32), dtype=torch.int8), 0)
            p.grad = grad
            apply_update(p, gb, Runtime(RoundingPolicy(gradient=mode)))
            want, _ = rescale(grad, gb, mode)
            assert torch.equal(p.m.to(torch.int32), -want.to(torch.int32))
            assert int(p.m.abs().max()) == (1 << gb) - 1 or mode != "nearest"
            assert int(p.m.abs().max()) <= (1 << gb) - 1


def test_apply_update_handles_int64_gradients() -> None:
    p = IntParameter(torch.tensor([0, 0], dtype=torch.int8), 0)
    p.grad = torch.tensor([3 * 2**40, -(2**39)], dtype=torch.int64)  # a split (int64) weight gradient
    apply_update(p, 5, _nearest_runtime())
    assert p.m.tolist() == [-24, 4]  # 3·2**40 has 42 bits: shift 37 gives g = [24, -4]


def test_apply_update_8bit_rejects_gb_below_1_and_changes_nothing() -> None:
    p = IntParameter(torch.tensor([5, -5], dtype=torch.int8), 0)
    p.grad = torch.tensor([100, -100], dtype=torch.int32)
    with pytest.raises(ValueError, match="16-bit"):
        apply_update(p, 0, _nearest_runtime())
    assert p.m.tolist() == [5, -5] and p.grad is not None


def test_apply_update_without_gradient_raises() -> None:
    p = IntParameter(torch.zeros(3, dtype=torch.int8), 0)
    with pytest.raises(RuntimeError, match="no gradient"):
        apply_update(p, 5, _nearest_runtime())


def test_parameter_validation() -> None:
    with pytest.raises(TypeError, match="int8"):
        IntParameter(torch.zeros(3, dtype=torch.int16), 0)
    with pytest.raises(ValueError, match="8 or 16"):
        IntParameter(torch.zeros(3, dtype=torch.int8), 0, accumulator_bits=32)


# --------------------------------------------------------------------------- 16-bit accumulation
def test_16bit_master_layout() -> None:
    m = torch.tensor([100, -50, 127, -127, 0], dtype=torch.int8)
    p = IntParameter(m, -6, accumulator_bits=16)
    assert p.master.dtype == torch.int16 and p.master_e == -14
    assert p.master.tolist() == [v * 256 for v in m.tolist()]  # same values, 8 more bits
    assert p.m.tolist() == m.tolist() and p.e == -6


def test_16bit_update_saturates_at_32767_and_refreshes_datapath() -> None:
    p = IntParameter(torch.tensor([120, -120, 3], dtype=torch.int8), -6, accumulator_bits=16)
    p.grad = torch.tensor([-2**20, 2**20, 0], dtype=torch.int32)
    apply_update(p, 5, _nearest_runtime())
    # g is rescaled to gb + 8 = 13 bits: ∓8191; 30720 + 8191 saturates at +32767 (never wraps to negative).
    assert p.master.dtype == torch.int16
    assert p.master.tolist() == [32767, -32767, 768]
    want, shift = rescale(p.master, 7, "nearest")
    assert p.m.dtype == torch.int8 and p.m.tolist() == want.tolist() == [127, -127, 3]
    assert p.e == p.master_e + shift == -14 + 8
    for _ in range(3):  # staying saturated keeps it there
        p.grad = torch.tensor([-2**20, 2**20, 0], dtype=torch.int32)
        apply_update(p, 5, _nearest_runtime())
    assert p.master.tolist() == [32767, -32767, 768]


def test_16bit_small_updates_accumulate_where_8bit_loses_them() -> None:
    """Element 1's gradient is 1/128 of element 0's: at gb = 5 it rounds to 0 in 8-bit mode every step,
    while the int16 accumulator collects it in its low byte until it moves the datapath weight."""
    grad = torch.tensor([2048, 16], dtype=torch.int32)
    w8 = IntParameter(torch.tensor([100, 50], dtype=torch.int8), -7)
    w16 = IntParameter(torch.tensor([100, 50], dtype=torch.int8), -7, accumulator_bits=16)
    steps = 16
    for _ in range(steps):
        w8.grad, w16.grad = grad.clone(), grad.clone()
        apply_update(w8, 5, _nearest_runtime())
        apply_update(w16, 5, _nearest_runtime())
        want, shift = rescale(w16.master, 7, "nearest")
        assert torch.equal(w16.m, want) and w16.e == w16.master_e + shift  # refreshed after every update
    assert w8.m[1].item() == 50  # 16 / 2**7 → 0 every step: lost
    # 16-bit: g = [2048, 16] unshifted (12 bits <= 13): the master moved by exactly 16 · 16 = 256 = one int8 unit.
    assert w16.master.tolist() == [100 * 256 - steps * 2048, 50 * 256 - steps * 16]
    value = lambda m, e: m * 2.0**e  # noqa: E731  (test-side float, for reading the result)
    assert value(w16.master[1].item(), w16.master_e) == value(49, -7)
    assert value(w16.m[1].item(), w16.e) < value(50, -7)  # and the datapath weight followed


@settings(max_examples=60, deadline=None)
@given(st.integers(-7, 7), st.sampled_from(["nearest", "pseudo_stochastic", "truncate"]),
       st.lists(st.integers(-2**24, 2**24), min_size=1, max_size=40), st.data())
def test_16bit_update_any_gb_matches_python_reference(gb: int, mode: str, grads: list[int], data) -> None:
    """gb in -7..7 rescales against gb + 8 bits (1..15) of the int16 master: small gb, sub-LSB steps."""
    masters = data.draw(st.lists(st.integers(-127, 127), min_size=len(grads), max_size=len(grads)))
    p = IntParameter(torch.tensor(masters, dtype=torch.int8), -7, accumulator_bits=16)
    before = [v * 256 for v in masters]
    p.grad = torch.tensor(grads, dtype=torch.int32)
    apply_update(p, gb, Runtime(RoundingPolicy(gradient=mode)))
    g, _ = rescale(torch.tensor(grads, dtype=torch.int32), gb + 8, mode)
    assert max(abs(v) for v in g.tolist()) <= 2 ** (gb + 8) - 1
    want = [max(-32767, min(32767, b - gi)) for b, gi in zip(before, g.tolist())]
    assert p.master.tolist() == want


def test_16bit_apply_update_rejects_gb_below_minus_7() -> None:
    p = IntParameter(torch.tensor([5], dtype=torch.int8), 0, accumulator_bits=16)
    p.grad = torch.tensor([100], dtype=torch.int32)
    with pytest.raises(ValueError, match="-7"):
        apply_update(p, -8, _nearest_runtime())


def test_16bit_model_masters_are_int16() -> None:
    model = niti.build("lenet", accumulator_bits=16)
    for p in model.parameters():
        assert p.accumulator_bits == 16 and p.master.dtype == torch.int16 and p.master_e == p.e - 8


@given(st.lists(st.integers(-127, 127), min_size=1, max_size=30), st.integers(0, 8))
def test_headroom_moves_the_master_exponent_and_keeps_the_weights(masters: list[int], bits: int) -> None:
    p = IntParameter(torch.tensor(masters, dtype=torch.int8), -7, accumulator_bits=16)
    p.make_headroom(bits)
    assert p.master_e == -15 + bits and p.master.dtype == torch.int16
    assert [v * 2 ** p.master_e for v in p.master.tolist()] == [v * 2 ** -7 for v in masters]  # exact (dyadic)
    assert p.m.tolist() == masters and p.e == -7  # the datapath weight is untouched
    if any(masters):
        want, shift = rescale(p.master, 7, "nearest")
        e = p.master_e + shift  # what refresh_datapath would give: the same real values
        assert [v * 2 ** e for v in want.tolist()] == [v * 2 ** -7 for v in masters]


def test_headroom_lets_a_weight_grow_past_its_initial_range() -> None:
    """Without headroom the master of a full-range weight stops at ±32767 (1.0 × its first range); with 2 bits the
    same steps carry it to 4 × and the datapath exponent follows."""
    grad = torch.tensor([-2**20, 0], dtype=torch.int32)
    plain = IntParameter(torch.tensor([127, 64], dtype=torch.int8), -7, accumulator_bits=16)
    room = IntParameter(torch.tensor([127, 64], dtype=torch.int8), -7, accumulator_bits=16)
    room.make_headroom(2)
    for _ in range(40):
        for p in (plain, room):
            p.grad = grad.clone()
            apply_update(p, 5, _nearest_runtime())
    assert plain.master[0].item() == 32767 and plain.e == -7
    assert room.master[0].item() == 32767 and room.e == -5  # 127 · 2**-5: four times the first range
    assert room.m[1].item() == 16  # 64 · 2**-7 = 16 · 2**-5: unchanged in value


def test_headroom_needs_16bit_masters_and_an_untrained_weight() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        IntParameter(torch.tensor([5], dtype=torch.int8), 0).make_headroom(1)
    IntParameter(torch.tensor([5], dtype=torch.int8), 0).make_headroom(0)  # no headroom: nothing to do
    p = IntParameter(torch.tensor([5], dtype=torch.int8), 0, accumulator_bits=16)
    with pytest.raises(ValueError, match="0..8"):
        p.make_headroom(9)
    p.master = p.master + 1
    with pytest.raises(ValueError, match="before training"):
        p.make_headroom(1)
    with pytest.raises(ValueError, match="16-bit"):
        niti.build("lenet", accumulator_bits=8, weight_headroom=1)


def test_model_headroom_covers_conv_and_linear_weights_only() -> None:
    plain, room = niti.build("resnet-20", seed=3), niti.build("resnet-20", seed=3, weight_headroom=3)
    norm_names = {n for n, _ in room.named_parameters() if _ is not None and n.rsplit(".", 1)[0].endswith(
        ("bn1", "bn2", "stem.1", "shortcut.1"))}
    for (name, a), (_, b) in zip(plain.named_parameters(), room.named_parameters()):
        assert torch.equal(a.m, b.m) and a.e == b.e, name
        assert b.master_e == a.master_e + (0 if name in norm_names else 3), name


@pytest.mark.parametrize("name, ends", [("lenet", ("features.0.weight", "classifier.3.weight")),
                                        ("vgg-small-7", ("features.0.weight", "classifier.2.weight")),
                                        ("resnet-20", ("stem.0.weight", "fc.weight", "fc.bias"))])
def test_end_headroom_covers_the_first_and_last_weighted_layers_only(name: str, ends: tuple[str, ...]) -> None:
    """The layers that read the input and write the logits get ``end_headroom`` bits more room (on top of
    ``weight_headroom``); every datapath weight, and so every forward, is unchanged (docs/numerics.md §6)."""
    plain = niti.build(name, seed=3)
    room = niti.build(name, seed=3, weight_headroom=1, end_headroom=2)
    norms = ("bn1", "bn2", "stem.1", "shortcut.1")  # ResNet-20's batch norms get no headroom
    weighted = {n for n, _ in room.named_parameters() if not n.rsplit(".", 1)[0].endswith(norms)}
    seen = set()
    for (n, a), (_, b) in zip(plain.named_parameters(), room.named_parameters()):
        assert torch.equal(a.m, b.m) and a.e == b.e, n
        want = 3 if n in ends else 1 if n in weighted else 0
        assert b.master_e == a.master_e + want, n
        seen.add(n)
    assert set(ends) <= seen


def test_end_headroom_is_checked_and_old_configs_resume_without_it() -> None:
    from niti.train.config import TrainConfig

    for weight, end in ((4, 5), (2, -1)):
        with pytest.raises(ValueError, match="at most 8 bits"):
            niti.build("lenet", weight_headroom=weight, end_headroom=end)
    with pytest.raises(ValueError, match="16-bit"):
        niti.build("lenet", accumulator_bits=8, end_headroom=1)
    for bad in (-1, 9, True, "2"):
        with pytest.raises(ValueError, match="end_headroom"):
            TrainConfig(end_headroom=bad)
    with pytest.raises(ValueError, match="end_headroom"):
        TrainConfig(weight_headroom=7, end_headroom=2)
    with pytest.raises(ValueError, match="16-bit"):
        TrainConfig(end_headroom=1, accumulator_bits=8)
    on = TrainConfig(end_headroom=2).to_dict()
    assert TrainConfig.from_dict(on).end_headroom == 2
    del on["end_headroom"]
    assert TrainConfig.from_dict(on).end_headroom == 0


# --------------------------------------------------------------------------- numerics 2: scaled steps, momentum, decay
def _py_round(x: int, s: int, mode: str) -> int:
    """Sign-magnitude rounding of x / 2**s (docs/numerics.md §3), pure Python."""
    if s <= 0:
        return x << -s
    a = abs(x)
    q, low = a >> s, a & ((1 << s) - 1)
    if mode == "nearest":
        q += low >= 1 << (s - 1)
    elif mode == "pseudo_stochastic":
        h = s // 2
        hi, lo = low >> h, (low & ((1 << h) - 1)) << (s & 1)
        q += hi > lo
    return q if x >= 0 else -q


def _py_pow2_q8(frac: Fraction) -> int:
    """round(2**(8 + frac)) by brute force over candidates (pure Python, exact comparisons)."""
    a, b = frac.numerator, frac.denominator
    # p = round(x) with x**b = 2**(8b + a): the p with (p - 1/2)**b <= x**b < (p + 1/2)**b.
    return next(p for p in range(256, 513) if (2 * p + 1) ** b > 2 ** (b * 9 + a))


def ref_update(w: list[int], grads: list[int], vel: list[int] | None, gb: Fraction, mode: str, wide: bool,
               batch_ref: int, k: int, d: int, batch: int) -> tuple[list[int], list[int] | None]:
    """numerics.md §5 for one tensor with unbounded Python ints."""
    fv, limit = 8, (32767 if wide else 127)
    gi = gb.numerator // gb.denominator
    if batch_ref == k == d == 0 and gb.denominator == 1:  # UpdateRule.paper(): the step is the gradient rescaled to
        bits = gi + (8 if wide else 0)  # gb bits and clipped there (no fractional bits, so a rounding up to 2**gb
        shift = max(0, max(abs(g) for g in grads).bit_length() - bits)  # is clipped to 2**gb - 1)
        step = [max(1 - 2**bits, min(2**bits - 1, _py_round(g, shift, mode))) for g in grads]
        return [max(-limit, min(limit, wi - si)) for wi, si in zip(w, step)], vel
    target = gi + (8 if wide else 0) + fv
    shift = max(0, max(abs(g) for g in grads).bit_length() - (target - fv)) - fv  # < 0: a left shift
    x = [max(-(2**target - 1), min(2**target - 1, _py_round(g, shift, mode))) for g in grads]
    if d:
        x = [xi + _py_round(wi, d - gi - fv, "nearest") for xi, wi in zip(x, w)]
    mult, ms = _py_pow2_q8(gb - gi), 8
    if batch_ref:
        mult, ms = mult * batch, ms + batch_ref.bit_length() - 1
    x = [_py_round(xi * mult, ms, "nearest") for xi in x]
    if k:
        vel = [v + _py_round(xi - v, k, "nearest") for v, xi in zip(vel or [0] * len(x), x)]
        x = vel
    step = [_py_round(xi, fv, mode) for xi in x]
    return [max(-limit, min(limit, wi - si)) for wi, si in zip(w, step)], vel


def test_pow2_fraction_q8_matches_brute_force() -> None:
    from niti.optim import pow2_fraction_q8

    for frac in (Fraction(0), Fraction(1, 2), Fraction(1, 4), Fraction(3, 4), Fraction(1, 3), Fraction(63, 64)):
        assert pow2_fraction_q8(frac) == _py_pow2_q8(frac)
    assert pow2_fraction_q8(Fraction(1, 2)) == 362  # 256 · sqrt(2) = 362.04


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([Fraction(v) for v in (1, 3, 5, 7)] + [Fraction(9, 2), Fraction(13, 4), Fraction(-3, 2)]),
       st.sampled_from(["nearest", "pseudo_stochastic", "truncate"]), st.booleans(),
       st.sampled_from([0, 64, 256]), st.integers(0, 5), st.sampled_from([0, 12, 20]),
       st.integers(1, 1024), st.lists(st.integers(-2**26, 2**26), min_size=1, max_size=24), st.data())
def test_update_rule_matches_python_reference(gb, mode, wide, batch_ref, k, d, batch, grads, data) -> None:
    """Batch scaling, fractional gb, momentum and weight decay: three consecutive steps, bit for bit."""
    from niti.optim import UpdateRule

    if not wide and gb < 1:
        gb = Fraction(3)
    rule = UpdateRule(batch_ref, k, d, step_scale="max")
    ms = data.draw(st.lists(st.integers(-127, 127), min_size=len(grads), max_size=len(grads)))
    p = IntParameter(torch.tensor(ms, dtype=torch.int8), -7, accumulator_bits=16 if wide else 8)
    w = [v * 256 for v in ms] if wide else list(ms)
    vel = None
    for step in range(3):
        g = [v * (step + 1) // 2 - step for v in grads]  # vary the gradient between steps
        p.grad = torch.tensor(g, dtype=torch.int32)
        apply_update(p, gb, Runtime(RoundingPolicy(gradient=mode)), rule, batch)
        w, vel = ref_update(w, g, vel, gb, mode, wide, batch_ref, k, d, batch)
        assert (p.master if wide else p.m).tolist() == w
        assert (p.velocity is None) == (k == 0)
        if k:
            assert p.velocity.dtype == torch.int32 and p.velocity.tolist() == vel


def test_batch_scaled_step_is_proportional_to_batch() -> None:
    """At batch_ref the step is the paper's; at half the batch it is half (same gb, same gradient)."""
    from niti.optim import UpdateRule

    grad = torch.tensor([2**20, -2**19, 3 * 2**18, 0], dtype=torch.int32)
    steps = {}
    for batch in (256, 128, 64):
        p = IntParameter(torch.zeros(4, dtype=torch.int8), 0, accumulator_bits=16)
        p.grad = grad.clone()
        apply_update(p, 5, _nearest_runtime(), UpdateRule(256, 0, 0, step_scale="max"), batch)
        steps[batch] = (-p.master).tolist()
    assert steps[256] == [4096, -2048, 3072, 0]  # 21 bits rescaled to gb 5 + 8 = 13: the paper's step
    assert steps[128] == [2048, -1024, 1536, 0] and steps[64] == [1024, -512, 768, 0]


def test_momentum_velocity_is_checkpointed_and_restored() -> None:
    model = niti.build("lenet", seed=0, total_steps=10)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,), generator=g)
    model.train_step(images, labels)
    state = model.state_dict()
    assert all(p["velocity"] is not None and p["velocity"].dtype == torch.int32 for p in state["params"].values())
    twin = niti.build("lenet", seed=5, total_steps=10)
    twin.load_state_dict(state)
    model.train_step(images, labels)
    twin.train_step(images, labels)
    assert model.weights_sha256() == twin.weights_sha256()


def test_fractional_gb_schedule_parses_exactly() -> None:
    s = GbSchedule.parse("5,4.5,4@1/3,0.75")
    assert s.values == (Fraction(5), Fraction(9, 2), Fraction(4)) and s.boundaries == (Fraction(1, 3), Fraction(3, 4))
    assert str(s) == "5,4.5,4@1/3,0.75" and GbSchedule.parse(str(s)) == s
    assert [s.gb_at(i, 12) for i in range(12)] == [5] * 4 + [Fraction(9, 2)] * 5 + [4] * 3
    with pytest.raises(ValueError, match="denominator"):
        GbSchedule.parse("5,4.001@0.5")


def test_update_rule_validation() -> None:
    from niti.optim import UpdateRule

    for kwargs, match in (({"batch_ref": 100}, "power of two"), ({"momentum_shift": 17}, "0..16"),
                          ({"decay_shift": 3}, "8..40")):
        with pytest.raises(ValueError, match=match):
            UpdateRule(**kwargs)
    p = IntParameter(torch.zeros(2, dtype=torch.int8), 0)
    p.grad = torch.tensor([5, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="batch size"):
        apply_update(p, 5, _nearest_runtime(), UpdateRule(step_scale="max"))
    with pytest.raises(ValueError, match="batch size"):  # the default scales float SGD's step by 128 / batch
        apply_update(p, 5, _nearest_runtime(), UpdateRule())
    with pytest.raises(ValueError, match="grad_e"):  # float SGD's step (the default) places G by its exponent
        apply_update(p, 5, _nearest_runtime(), UpdateRule(), 128)


# --------------------------------------------------------------------------- float SGD's step (step_scale="exponent")
class _Unrepresentable(Exception):
    """The reference's shift is outside what the update can do: apply_update must refuse it."""


def ref_exponent_update(w: list[int], grads: list[int], grad_e: int, master_e: int, vel: list[int] | None,
                        gb: Fraction, mode: str, wide: bool, k: int, d: int,
                        batch: int | None = None, res: list[int] | None = None,
                        fv: int = 8) -> tuple[list[int], list[int] | None, int]:
    """numerics.md §5 with ``step_scale="exponent"``, unbounded Python ints: (weights, velocity, clipped count).
    ``batch``: the step is scaled by 128 / batch (a shift by ceil(log2 batch) - 7 and a Q8 multiplier).
    ``res``: the step carry's residuals, updated in place (the step is then rounded to nearest); ``fv``: the
    fractional bits (``UpdateRule.step_frac_bits``)."""
    limit, bits = (32767 if wide else 127), (15 if wide else 7)
    gi = gb.numerator // gb.denominator
    s = master_e + 20 - gi - grad_e  # the summed gradient times 2**(gb - 20), in master units: a right shift s
    p = _py_pow2_q8(gb - gi)
    if batch is not None:
        j = 0
        while 2**j < batch:
            j += 1
        s += j - 7
        p = (2 * p * 2**j + batch) // (2 * batch)  # round(p · 2**j / batch)
    if not -bits <= s <= fv + 62:
        raise _Unrepresentable(s)
    g_max = (2 ** (bits + s) - 1) if s > 0 else (2 ** bits - 1) >> -s
    clipped = sum(abs(g) > g_max for g in grads)
    x = [max(-(2 ** (bits + fv) - 1), min(2 ** (bits + fv) - 1, _py_round(max(-g_max, min(g_max, g)), s - fv, mode)))
         for g in grads]
    if d:
        x = [xi + _py_round(wi, d - gi - fv, "nearest") for xi, wi in zip(x, w)]
    x = [_py_round(xi * p, 8, "nearest") for xi in x]
    if k:
        vel = [v + _py_round(xi - v, k, "nearest") for v, xi in zip(vel or [0] * len(x), x)]
        x = vel
    if res is None:
        step = [_py_round(xi, fv, mode) for xi in x]
    else:
        total = [xi + ri for xi, ri in zip(x, res)]
        step = [_py_round(t, fv, "nearest") for t in total]
        res[:] = [t - (si << fv) for t, si in zip(total, step)]
    return [max(-limit, min(limit, wi - si)) for wi, si in zip(w, step)], vel, clipped


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([Fraction(v) for v in (1, 3, 5, 7)] + [Fraction(5, 3), Fraction(-5, 3), Fraction(-7)]),
       st.sampled_from(["nearest", "pseudo_stochastic", "truncate"]), st.booleans(), st.integers(0, 5),
       st.sampled_from([0, 12, 17]), st.integers(-40, 10), st.sampled_from([1, 64, 100, 128, 256, 1000]),
       st.booleans(), st.lists(st.integers(-2**30, 2**30), min_size=1, max_size=24), st.data())
def test_exponent_step_matches_python_reference(gb, mode, wide, k, d, grad_e, batch, per_mean, grads, data) -> None:
    """Float SGD's step from the gradient's exponent, with momentum, decay, the counted clip and (batch_ref set)
    the scale 128 / batch: bit for bit."""
    from niti.optim import UpdateRule

    if not wide and gb < 1:
        gb = Fraction(3)
    rule = UpdateRule(256 if per_mean else 0, k, d, "exponent")
    ms = data.draw(st.lists(st.integers(-127, 127), min_size=len(grads), max_size=len(grads)))
    p = IntParameter(torch.tensor(ms, dtype=torch.int8), -7, accumulator_bits=16 if wide else 8)
    w, master_e = ([v * 256 for v in ms], -15) if wide else (list(ms), -7)
    vel, clipped = None, 0
    for step in range(3):
        g = [v * (step + 1) // 2 - step for v in grads]
        p.grad, p.grad_e = torch.tensor(g, dtype=torch.int64), grad_e + step
        try:
            w, vel, c = ref_exponent_update(w, g, grad_e + step, master_e, vel, gb, mode, wide, k, d,
                                            batch if per_mean else None)
        except _Unrepresentable:
            with pytest.raises(ValueError, match="outside what"):
                apply_update(p, gb, Runtime(RoundingPolicy(gradient=mode)), rule, batch)
            return
        apply_update(p, gb, Runtime(RoundingPolicy(gradient=mode)), rule, batch)
        clipped += c
        assert (p.master if wide else p.m).tolist() == w
        assert p.step_clips == clipped
        if k:
            assert p.velocity.tolist() == vel


def test_exponent_step_is_float_sgd_in_real_units() -> None:
    """Without momentum the real weight moves by 2**(gb - 20) times the real summed gradient, whatever the
    gradient's exponent; the same real gradient at another exponent gives the same step (no per-tensor max)."""
    from niti.optim import UpdateRule

    rule = UpdateRule(0, 0, 0, "exponent")
    for grad_e, scale in ((-10, 1), (-12, 4)):
        p = IntParameter(torch.zeros(3, dtype=torch.int8), -7, accumulator_bits=16)  # master exponent -15
        p.grad, p.grad_e = torch.tensor([3 << 12, -(1 << 12), 0], dtype=torch.int32) * scale, grad_e
        apply_update(p, 5, _nearest_runtime(), rule)
        # real step = 2**(5 - 20) · grad · 2**-10 = grad · 2**-25; in master units (2**-15): grad · 2**-10
        assert (p.master * 2**-15).tolist() == [-(3 << 12) * 2**-25, (1 << 12) * 2**-25, 0.0]
        assert p.step_clips == 0


def test_exponent_step_needs_the_gradient_exponent_and_changes_nothing() -> None:
    from niti.optim import UpdateRule

    p = IntParameter(torch.tensor([5, -5], dtype=torch.int8), -7, accumulator_bits=16)
    before = p.master.clone()
    p.grad = torch.tensor([100, 200], dtype=torch.int32)
    with pytest.raises(ValueError, match="grad_e"):
        apply_update(p, 5, _nearest_runtime(), UpdateRule(step_scale="exponent"), 128)
    assert torch.equal(p.master, before) and p.velocity is None
    for grad_e in (-80, 20):  # a shift past 62 bits; one gradient unit already past the step cap
        p.grad_e = grad_e
        with pytest.raises(ValueError, match="outside what"):
            apply_update(p, 5, _nearest_runtime(), UpdateRule(step_scale="exponent"), 128)
        assert torch.equal(p.master, before) and p.velocity is None and p.step_clips == 0
    with pytest.raises(ValueError, match="step_scale"):
        UpdateRule(step_scale="lr")


def test_exponent_step_trains_every_model_under_the_audit() -> None:
    """Every weighted layer (conv, linear, bias, batch norm) records its gradient's exponent; the step stays
    integer-only."""
    from niti.optim import UpdateRule

    g = torch.Generator().manual_seed(3)
    for (name, shape), carry in ((("lenet", (8, 28, 28, 1)), False), (("resnet-20", (4, 32, 32, 3)), False),
                                 (("resnet-20", (4, 32, 32, 3)), True)):
        model = niti.build(name, seed=0, total_steps=4, rule=UpdateRule(step_scale="exponent", step_carry=carry,
                                                                        step_frac_bits=12 if carry else 8))
        images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (shape[0],), generator=g)
        before = model.weights_sha256()
        with niti.integer_only():
            model.train_step(images, labels)
            model.train_step(images, labels)  # the second step reads the residuals the first one left
        assert model.weights_sha256() != before
        assert all(p.grad is None for p in model.parameters())


def test_exponent_step_is_float_sgd_on_the_mean_loss_at_any_batch() -> None:
    """With batch_ref set (the default) the step is 128 / batch times the summed gradient's: the same real gradient
    summed over twice the images moves the weights as far (float SGD's lr on the mean loss), and batch 128 is
    the summed rule's step bit for bit."""
    from niti.optim import UpdateRule

    def step(batch: int, rule: UpdateRule) -> list[int]:
        p = IntParameter(torch.zeros(3, dtype=torch.int8), -7, accumulator_bits=16)
        p.grad, p.grad_e = torch.tensor([3 << 20, -(1 << 20), 5 << 16], dtype=torch.int32) * batch, -30
        apply_update(p, 5, _nearest_runtime(), rule, batch)
        return p.master.tolist()

    mean, summed = UpdateRule(256, 0, 0, "exponent"), UpdateRule(0, 0, 0, "exponent")
    assert step(128, mean) == step(128, summed) == [v // 128 for v in step(1, summed)]
    assert step(64, mean) == step(128, mean) == step(256, mean) == step(1, mean)
    assert step(100, mean) == step(128, mean)  # 128 / 100 = 1.28: a Q8 multiplier, exact here


# --------------------------------------------------------------------------- the velocity follows a gb change
def _py_rescaled_velocity(vel: list[int], delta: Fraction, bound: int) -> tuple[list[int], int]:
    """v · 2**delta, nearest (ties away from zero), clipped to ±(bound - 1) when delta > 0: pure Python."""
    d = delta.numerator // delta.denominator
    q = _py_pow2_q8(delta - d)
    out = [_py_round(v * q, 8 - d, "nearest") for v in vel]
    if delta <= 0:
        return out, 0
    clipped = sum(abs(v) > bound - 1 for v in out)
    return [max(-(bound - 1), min(bound - 1, v)) for v in out], clipped


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-2**31 + 1, 2**31 - 1), min_size=1, max_size=16),
       st.integers(-14, 14), st.sampled_from([1, 2, 3, 4, 64]), st.integers(1, 2**31))
def test_rescaled_velocity_matches_python_reference(vel: list[int], num: int, den: int, bound: int) -> None:
    from niti.optim import rescaled_velocity

    delta = Fraction(num, den)
    out, clipped = rescaled_velocity(torch.tensor(vel, dtype=torch.int32), delta, bound)
    ref, ref_clipped = _py_rescaled_velocity(vel, delta, bound)
    if delta <= 0:
        assert clipped is None
    else:
        assert int(clipped) == ref_clipped
    assert out.dtype == torch.int32 and out.tolist() == ref


def test_velocity_follows_a_gb_change_as_float_sgds_buffer_follows_its_lr() -> None:
    """With a constant gradient, PyTorch's momentum (buf = μ·buf + g, step = lr_t · buf) across a rate change is
    the integer velocity rescaled by 2**(gb_new - gb_old): exact rationals against the int32 velocity."""
    from niti.optim import UpdateRule

    k, grad, grad_e = 3, 3 << 20, -10
    schedule = [Fraction(5)] * 6 + [Fraction(5, 3)] * 6 + [Fraction(-5, 3)] * 6
    mu = 1 - Fraction(1, 2**k)
    for rescale in (True, False):
        rule = UpdateRule(0, k, 0, "exponent", velocity_rescale=rescale)
        p = IntParameter(torch.zeros(1, dtype=torch.int8), -7, accumulator_bits=16)
        buf, before = Fraction(0), None
        worst = Fraction(0)
        for gb in schedule:
            p.grad, p.grad_e = torch.tensor([grad], dtype=torch.int64), grad_e
            apply_update(p, gb, _nearest_runtime(), rule, gb_before=before)
            before = gb
            buf = mu * buf + grad
            # velocity in master units (2**-15) with 8 fractional bits: (1 - μ) · lr_t · buf, lr_t = 2**(gb - 20)
            # per unit of the real gradient grad · 2**grad_e (2**frac as the update's Q8 multiplier)
            gi = gb.numerator // gb.denominator
            rate = Fraction(_py_pow2_q8(gb - gi), 256) * Fraction(2) ** (gi - 20 + grad_e + 15 + 8)
            expected = (1 - mu) * buf * rate
            worst = max(worst, abs(p.velocity.item() - expected) / expected)
        if rescale:
            assert worst < Fraction(1, 100)  # within the Q8 multiplier's and the rounding's error
        else:
            assert worst > Fraction(1, 2)  # the velocity carries the old rate's steps after the drop


def test_velocity_rescale_is_opt_in_and_old_configs_resume_without_it() -> None:
    from niti.cli import _config_from_args, build_parser
    from niti.optim import UpdateRule
    from niti.train.config import TrainConfig

    assert not UpdateRule().velocity_rescale and not TrainConfig().rule.velocity_rescale
    assert not UpdateRule.paper().velocity_rescale
    on = TrainConfig(velocity_rescale=True).to_dict()
    assert TrainConfig.from_dict(on).rule.velocity_rescale
    del on["velocity_rescale"]
    assert not TrainConfig.from_dict(on).rule.velocity_rescale
    for flags, expected in (([], False), (["--velocity-rescale"], True), (["--no-velocity-rescale"], False)):
        assert _config_from_args(build_parser().parse_args(["train", *flags])).velocity_rescale is expected
    with pytest.raises(ValueError, match="bool"):
        UpdateRule(velocity_rescale=1)


def test_model_rescales_every_velocity_at_a_schedule_boundary_only() -> None:
    """Two LeNets, the rule on and off: the same bits up to the boundary, different after it; at the boundary the
    velocities of the rule-on model are the others' (before that step) times 2**(gb_new - gb_old)."""
    from niti.optim import UpdateRule, rescaled_velocity

    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (8, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,), generator=g)
    schedule = GbSchedule.parse("5,2@1/2")
    on, off = (niti.build("lenet", seed=0, total_steps=4, schedule=schedule,
                          rule=UpdateRule(velocity_rescale=flag)) for flag in (True, False))
    for _ in range(2):
        on.train_step(images, labels)
        off.train_step(images, labels)
    assert on.weights_sha256() == off.weights_sha256()
    expected = {n: rescaled_velocity(p.velocity, Fraction(-3), 1 << 31)[0] for n, p in off.named_parameters()}
    # the boundary step: rescale, then the same update on both would give the rescaled velocity's EMA
    seen = []
    original = niti.optim.rescaled_velocity

    def spy(velocity, delta, bound):  # noqa: ANN001, ANN202
        out = original(velocity, delta, bound)
        seen.append((delta, out[0]))
        return out

    import niti.optim as optim_module

    optim_module.rescaled_velocity = spy
    try:
        on.train_step(images, labels)
    finally:
        optim_module.rescaled_velocity = original
    off.train_step(images, labels)
    assert len(seen) == len(expected) and all(delta == -3 for delta, _ in seen)
    assert [v.tolist() for _, v in seen] == [v.tolist() for v in expected.values()]
    assert on.weights_sha256() != off.weights_sha256()


# --------------------------------------------------------------------------- the step carry (UpdateRule.step_carry)
@settings(max_examples=60, deadline=None)
@given(st.sampled_from([Fraction(5), Fraction(5, 3), Fraction(-5, 3)]), st.booleans(), st.integers(0, 4),
       st.sampled_from([0, 17]), st.integers(-30, 0), st.lists(st.integers(-2**20, 2**20), min_size=1, max_size=16),
       st.booleans(), st.sampled_from([8, 10, 12]), st.data())
def test_step_carry_and_frac_bits_match_python_reference(gb, wide, k, d, grad_e, grads, carry, fv, data) -> None:
    """Five steps with the carry (the fractional step plus the residual, rounded to nearest, the remainder kept)
    or without it, with 8 to 12 fractional bits."""
    from niti.optim import UpdateRule

    rule = UpdateRule(0, k, d, "exponent", step_carry=carry, step_frac_bits=fv)
    ms = data.draw(st.lists(st.integers(-127, 127), min_size=len(grads), max_size=len(grads)))
    p = IntParameter(torch.tensor(ms, dtype=torch.int8), -7, accumulator_bits=16 if wide else 8)
    w, master_e = ([v * 256 for v in ms], -15) if wide else (list(ms), -7)
    vel, res = None, ([0] * len(grads) if carry else None)
    for step in range(5):
        g = [v * (step + 1) // 2 - step for v in grads]
        p.grad, p.grad_e = torch.tensor(g, dtype=torch.int64), grad_e
        try:
            w, vel, _ = ref_exponent_update(w, g, grad_e, master_e, vel, gb, "pseudo_stochastic", wide, k, d,
                                            res=res, fv=fv)
        except _Unrepresentable:
            with pytest.raises(ValueError, match="outside what"):
                apply_update(p, gb, Runtime(RoundingPolicy(gradient="pseudo_stochastic")), rule)
            return
        apply_update(p, gb, Runtime(RoundingPolicy(gradient="pseudo_stochastic")), rule)
        assert (p.master if wide else p.m).tolist() == w
        if k:
            assert p.velocity.tolist() == vel
        if carry:
            assert p.step_residual.dtype == torch.int16 and p.step_residual.tolist() == res
            assert max(map(abs, res)) <= 1 << (fv - 1)
        else:
            assert p.step_residual is None


def test_step_carry_applies_steps_that_pseudo_stochastic_rounding_drops() -> None:
    """A constant step of 3/64 master unit: PSR (below 1/16 unit) never moves the weight; the carry moves it by
    the steps' sum rounded to the nearest unit, with no random bits."""
    from niti.optim import UpdateRule

    moved = {}
    for carry in (False, True):
        p = IntParameter(torch.zeros(4, dtype=torch.int8), -7, accumulator_bits=16)  # master exponent -15
        for _ in range(200):
            # real step 2**(5 - 20) · grad · 2**grad_e; in master units (2**-15): grad · 2**grad_e = 3/64
            p.grad, p.grad_e = torch.tensor([3, -3, 6, 0], dtype=torch.int32), -6
            apply_update(p, 5, Runtime(RoundingPolicy(gradient="pseudo_stochastic")),
                         UpdateRule(0, 0, 0, "exponent", step_carry=carry))
        moved[carry] = (-p.master).tolist()
    assert moved[False] == [0, 0, 0, 0]
    assert moved[True] == [9, -9, 19, 0]  # 200 · 3/64 = 9.375, 200 · 6/64 = 18.75, to the nearest unit


def test_step_carry_is_checkpointed_and_old_configs_resume_without_it() -> None:
    from niti.cli import _config_from_args, build_parser
    from niti.optim import UpdateRule
    from niti.train.config import TrainConfig

    assert not UpdateRule().step_carry and not UpdateRule.paper().step_carry
    on = TrainConfig(step_carry=True).to_dict()
    assert TrainConfig.from_dict(on).rule.step_carry
    del on["step_carry"]
    assert not TrainConfig.from_dict(on).rule.step_carry
    for flags, expected in (([], TrainConfig().step_carry), (["--step-carry"], True), (["--no-step-carry"], False)):
        assert _config_from_args(build_parser().parse_args(["train", *flags])).step_carry is expected
    with pytest.raises(ValueError, match="bool"):
        UpdateRule(step_carry=1)
    assert UpdateRule().step_frac_bits == UpdateRule.paper().step_frac_bits == 8
    twelve = TrainConfig(step_frac_bits=12).to_dict()
    assert TrainConfig.from_dict(twelve).rule.step_frac_bits == 12
    del twelve["step_frac_bits"]
    assert TrainConfig.from_dict(twelve).rule.step_frac_bits == 8
    assert _config_from_args(build_parser().parse_args(["train", "--step-frac-bits", "11"])).rule.step_frac_bits == 11
    for bad in (7, 13, True):
        with pytest.raises(ValueError, match="step_frac_bits"):
            UpdateRule(step_frac_bits=bad)

    model = niti.build("lenet", seed=0, total_steps=10, rule=UpdateRule(step_carry=True))
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,), generator=g)
    model.train_step(images, labels)
    state = model.state_dict()
    assert all(p["step_residual"].dtype == torch.int16 for p in state["params"].values())
    twin = niti.build("lenet", seed=5, total_steps=10, rule=UpdateRule(step_carry=True))
    twin.load_state_dict(state)
    model.train_step(images, labels)
    twin.train_step(images, labels)
    assert model.weights_sha256() == twin.weights_sha256()
    bad = {**state, "params": {n: {**p, "step_residual": p["step_residual"].to(torch.int32)}
                               for n, p in state["params"].items()}}
    with pytest.raises(ValueError, match="step_residual must be int16"):
        twin.load_state_dict(bad)
