"""Integer models (docs/numerics.md; the audit §11): structure, integer-only steps, determinism, validation, checkpoints.

VGG runs use batches of 2 to keep the suite short on two shared cores.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch

import niti
from niti.audit import FloatingPointOpError, integer_only
from niti.nn import Conv2d, Dropout, Flatten, Linear, MaxPool2d
from niti.numerics import IntTensor

MODELS = ["lenet", "vgg-small-7", "vgg-small-8", "vgg-small-9"]
VGG_WIDTHS = {  # the reference's VGG-small widths ("M" = 2×2 max pool)
    "vgg-small-7": [128, 128, "M", 256, 256, "M", 512, 512, "M"],
    "vgg-small-8": [128, 128, 128, "M", 256, 256, "M", 512, 512, "M"],
    "vgg-small-9": [128, 128, 128, "M", 256, 256, 256, "M", 512, 512, "M"],
}


def _batch(model: niti.models.IntegerModel, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w, c = model.arch.input_shape
    return (torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8),
            torch.randint(0, model.arch.num_classes, (n,), generator=g))


def _n(name: str) -> int:
    """One batch size per architecture, so the compiled kernels are reused across tests."""
    return 8 if name == "lenet" else 2


def _rng_states(model: niti.models.IntegerModel) -> list[torch.Tensor]:
    return list(model.runtime.state_dict().values())


def _describe(layer) -> tuple:
    if isinstance(layer, Conv2d):
        return ("conv", layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, Linear):
        return ("linear", layer.in_features, layer.out_features)
    if isinstance(layer, MaxPool2d):
        return ("pool", layer.kernel_size)
    return (type(layer).__name__.lower(),)


# --------------------------------------------------------------------------- structure
def test_lenet_structure() -> None:
    model = niti.build("lenet")
    assert [_describe(layer) for layer in model.net.layers] == [
        ("conv", 1, 20, (5, 5), (1, 1), (0, 0)), ("relu",), ("pool", 2),
        ("conv", 20, 50, (5, 5), (1, 1), (0, 0)), ("relu",), ("pool", 2),
        ("flatten",), ("linear", 800, 500), ("relu",), ("linear", 500, 10)]
    assert [tuple(p.shape) for p in model.parameters()] == [(20, 5, 5, 1), (50, 5, 5, 20), (500, 800), (10, 500)]
    assert model.arch.input_shape == (28, 28, 1)


@pytest.mark.parametrize("name", list(VGG_WIDTHS))
def test_vgg_structure(name: str) -> None:
    model = niti.build(name)
    want, c = [], 3
    for w in VGG_WIDTHS[name]:
        if w == "M":
            want.append(("pool", 2))
        else:
            want += [("conv", c, w, (3, 3), (1, 1), (1, 1)), ("relu",)]
            c = w
    want += [("flatten",), ("dropout",), ("linear", 512 * 4 * 4, 10)]
    assert [_describe(layer) for layer in model.net.layers] == want
    assert isinstance(model.net.layers[-2], Dropout) and isinstance(model.net.layers[-3], Flatten)
    # Only the first conv skips the error propagation.
    assert [layer.propagate_error for layer in model.net.layers][:2] == [False, True]


def test_dropout_masks_are_per_sample_by_default_and_a_config_from_before_keeps_the_batch_mask() -> None:
    from niti.train import TrainConfig

    assert niti.build("vgg-small-7-quarter").net.layers[-2].mask == "sample"
    assert niti.build("vgg-small-7-quarter", dropout="batch").net.layers[-2].mask == "batch"
    with pytest.raises(ValueError, match="dropout"):
        niti.build("vgg-small-7-quarter", dropout="channel")
    assert TrainConfig().dropout == "sample"
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "dropout"}  # written before the key existed
    assert TrainConfig.from_dict(old).dropout == "batch"
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(dropout="channel")


def test_float_sgd_step_is_the_default_and_a_config_from_before_keeps_the_per_tensor_rescale() -> None:
    from niti.train import TrainConfig

    config = TrainConfig()
    assert config.step_scale == "exponent" and not config.full_range_init
    assert config.rule == niti.optim.UpdateRule() and str(config.schedule) == str(niti.GbSchedule())
    model = niti.build("lenet")
    assert model.rule.step_scale == "exponent" and model.schedule == niti.GbSchedule()
    # The twin's weight decay (docs/numerics.md §5, §10) in the library and the CLI alike.
    assert config.decay_shift == model.rule.decay_shift == 17
    # Written before the key existed: the per-tensor rescale, with the schedule and init the config records.
    old = {**{k: v for k, v in config.to_dict().items() if k != "step_scale"},
           "gb_schedule": "5,4,3,2@0.25,0.5,0.75", "full_range_init": True}
    assert TrainConfig.from_dict(old).step_scale == "max"
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_a_config_from_before_activation_clipping_keeps_the_fitted_rescale() -> None:
    from niti.train import TrainConfig

    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("act_clip_bits", "act_clip_share")}
    assert TrainConfig.from_dict(old).act_clip_bits == TrainConfig.from_dict(old).act_clip_share == 0
    share_less = {k: v for k, v in TrainConfig(act_clip_bits=2).to_dict().items() if k != "act_clip_share"}
    assert TrainConfig.from_dict(share_less).act_clip_share == 0  # written before the share bound: the full clip
    for bad in (-1, 5, 1.0):
        with pytest.raises(ValueError, match="act_clip_bits"):
            TrainConfig(act_clip_bits=bad)
    for bad in (-1, 31, True):
        with pytest.raises(ValueError, match="act_clip_share"):
            TrainConfig(act_clip_share=bad)


def test_build_rejects_unknown_names_and_bad_means() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        niti.build("resnet-1000")
    with pytest.raises(ValueError, match="channels"):
        niti.build("lenet", mean=(1, 2, 3))


# --------------------------------------------------------------------------- integer-only steps
@pytest.mark.parametrize("name", MODELS)
def test_train_step_is_integer_only(name: str) -> None:
    model = niti.build(name, seed=1)
    images, labels = _batch(model, _n(name), 0)
    before = model.weights_sha256()
    with integer_only() as audit:
        logits = model.train_step(images, labels)
        pred = model.predict(images)
    assert audit.ops > 100
    assert model.step == 1 and model.weights_sha256() != before
    assert logits.m.dtype == torch.int8 and tuple(logits.shape) == (_n(name), 10)
    assert pred.dtype == torch.int64 and tuple(pred.shape) == (_n(name),)
    for p in model.parameters():
        assert p.m.dtype == torch.int8 and p.grad is None


def _slip_float_into(layer, monkeypatch, method: str = "forward") -> None:
    real = getattr(layer, method)

    def sneaky(x: IntTensor, ctx: dict | None = None) -> IntTensor:
        _ = x.m.float()  # a harmless-looking float conversion
        return real(x, ctx)

    monkeypatch.setattr(layer, method, sneaky)


@pytest.mark.parametrize("name,index,method", [("lenet", 3, "forward"), ("lenet", 7, "backward"),
                                               ("vgg-small-7", 1, "backward")])
def test_audit_raises_on_a_slipped_float_op_and_the_step_leaves_no_trace(name, index, method, monkeypatch) -> None:
    model = niti.build(name, seed=2)
    images, labels = _batch(model, _n(name), 1)
    _slip_float_into(model.net.layers[index], monkeypatch, method)
    sha, rng = model.weights_sha256(), _rng_states(model)
    with pytest.raises(FloatingPointOpError, match="float32"):
        with integer_only():
            model.train_step(images, labels)
    assert model.weights_sha256() == sha and model.step == 0
    assert all(torch.equal(a, b) for a, b in zip(_rng_states(model), rng))
    assert all(p.grad is None for p in model.parameters())
    # Outside the audit the very same (patched) model trains: the audit alone found the float op.
    model.train_step(images, labels)
    assert model.step == 1 and model.weights_sha256() != sha


@pytest.mark.parametrize("name", ["lenet", "vgg-small-7"])
def test_16bit_accumulator_model_trains_under_the_audit(name: str) -> None:
    model = niti.build(name, seed=3, accumulator_bits=16)
    images, labels = _batch(model, _n(name), 2)
    masters = [p.master.clone() for p in model.parameters()]
    steps = 2 if name == "lenet" else 1
    with integer_only() as audit:
        for _ in range(steps):
            model.train_step(images, labels)
    assert audit.ops > 100 and model.step == steps
    for p, old in zip(model.parameters(), masters):
        assert p.master.dtype == torch.int16 and p.m.dtype == torch.int8
        assert int(p.master.abs().max()) <= 32767
    assert any(not torch.equal(p.master, old) for p, old in zip(model.parameters(), masters))


def test_train_step_returns_the_logits_from_before_the_update() -> None:
    # No dropout and nearest activations: train forward == eval forward; the paper's update moves int8 weights at once.
    model = niti.build("lenet", seed=4, rule=niti.optim.UpdateRule.paper())
    images, labels = _batch(model, 8, 3)
    before = model.predict_logits(images)
    logits = model.train_step(images, labels)
    assert torch.equal(logits.m, before.m) and logits.e == before.e
    after = model.predict_logits(images)
    assert not (torch.equal(after.m, before.m) and after.e == before.e)


# --------------------------------------------------------------------------- determinism
def _trained_sha(name: str, seed: int, steps: int, n: int) -> str:
    model = niti.build(name, seed=seed, total_steps=steps)
    for i in range(steps):
        model.train_step(*_batch(model, n, 100 + i))
    return model.weights_sha256()


@pytest.mark.parametrize("name,n", [("lenet", 8), ("vgg-small-7", 2)])
def test_same_seed_same_bits(name: str, n: int) -> None:
    steps = 3 if name == "lenet" else 2
    a, b = _trained_sha(name, 5, steps, n), _trained_sha(name, 5, steps, n)
    assert a == b
    assert niti.build(name, seed=5).weights_sha256() != niti.build(name, seed=6).weights_sha256()
    assert a != niti.build(name, seed=5).weights_sha256()  # the steps did change the weights


@pytest.mark.parametrize("name,n", [("lenet", 8), ("vgg-small-7", 2)])
def test_thread_count_does_not_change_bits(name: str, n: int) -> None:
    saved = torch.get_num_threads()
    steps = 2 if name == "lenet" else 1
    try:
        torch.set_num_threads(1)
        one = _trained_sha(name, 7, steps, n)
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 2
        two = _trained_sha(name, 7, steps, n)
    finally:
        torch.set_num_threads(saved)
    assert one == two


@pytest.mark.parametrize("error_mode", ["stochastic", "pseudo_stochastic"])
def test_residual_sums_rescaled_unformed_give_the_same_bits(error_mode: str) -> None:
    """ResNet-20's residual adds and the backward's error sums at branch points are rescaled from their two int8
    terms by the C passes (Runtime._rescale_pair); forming the int32 sum first gives the same bits."""
    from unittest import mock

    from niti.runtime import Runtime

    calls = []
    real = Runtime._rescale_pair

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = real(self, *args, **kwargs)
        calls.append(out is not None)
        return out

    def trained(patch) -> str:  # noqa: ANN001
        model = niti.build("resnet-20", seed=3, total_steps=2)
        model.runtime.policy = niti.numerics.RoundingPolicy(error=error_mode)
        with mock.patch.object(Runtime, "_rescale_pair", patch):
            for i in range(2):
                model.train_step(*_batch(model, 2, 40 + i))
        return model.weights_sha256()

    unformed = trained(counted)
    assert calls and all(calls)  # the C passes did the rescales (9 adds, 9 error sums per step)
    assert unformed == trained(lambda *args, **kwargs: None)


def test_weights_sha256_sees_one_flipped_weight_and_exponents() -> None:
    model = niti.build("lenet", seed=8)
    sha = model.weights_sha256()
    p = model.parameters()[2]
    p.m = p.m.clone()
    p.m[0, 0] = p.m[0, 0] + (1 if int(p.m[0, 0]) < 127 else -1)
    assert model.weights_sha256() != sha
    model2 = niti.build("lenet", seed=8)
    model2.parameters()[0].e += 1
    assert model2.weights_sha256() != sha


# --------------------------------------------------------------------------- predict
def test_predict_returns_int64_classes_and_changes_nothing() -> None:
    model = niti.build("vgg-small-7", seed=9)
    images, _ = _batch(model, 2, 4)
    sha, rng = model.weights_sha256(), _rng_states(model)
    a, b = model.predict(images), model.predict(images)
    assert a.dtype == torch.int64 and tuple(a.shape) == (2,)
    assert bool(((a >= 0) & (a < 10)).all())
    assert torch.equal(a, b)  # no dropout, no random rounding at inference
    assert torch.equal(a, model.predict_logits(images).m.argmax(dim=1))
    assert model.weights_sha256() == sha and model.step == 0
    assert all(torch.equal(x, y) for x, y in zip(_rng_states(model), rng))
    assert model.net.training  # predict restores the mode


# --------------------------------------------------------------------------- bad input
def _good():
    g = torch.Generator().manual_seed(10)
    return torch.randint(0, 256, (8, 28, 28, 1), generator=g, dtype=torch.uint8), torch.arange(8)


GOOD_IMAGES, GOOD_LABELS = _good()
BAD_IMAGES = {
    "float": (GOOD_IMAGES.to(torch.float32), "uint8"),
    "int32": (GOOD_IMAGES.to(torch.int32), "uint8"),
    "int8": (GOOD_IMAGES.to(torch.int8), "uint8"),
    "rank 3": (GOOD_IMAGES[:, :, :, 0], "rank"),
    "rank 5": (GOOD_IMAGES.unsqueeze(0), "rank"),
    "3 channels": (GOOD_IMAGES.expand(8, 28, 28, 3).contiguous(), "channels"),
    "NCHW": (GOOD_IMAGES.permute(0, 3, 1, 2).contiguous(), "NHWC"),
    "wrong size": (torch.zeros((4, 32, 32, 1), dtype=torch.uint8), r"\(N, 28, 28, 1\)"),
    "empty batch": (GOOD_IMAGES[:0], "empty"),
    "numpy array": (GOOD_IMAGES.numpy(), "torch.Tensor"),
    "list": (GOOD_IMAGES.tolist(), "torch.Tensor"),
}
BAD_LABELS = {
    "too large": (torch.tensor([0, 1, 2, 3, 4, 5, 6, 10]), r"\[0, 10\)"),
    "negative": (torch.tensor([0, -1, 2, 3, 4, 5, 6, 7]), r"\[0, 10\)"),
    "too short": (GOOD_LABELS[:7], "one label per image"),
    "too long": (torch.arange(9), "one label per image"),
    "2-D": (GOOD_LABELS.unsqueeze(1), "1-D"),
    "int32": (GOOD_LABELS.to(torch.int32), "int64"),
    "uint8": (GOOD_LABELS.to(torch.uint8), "int64"),
    "float": (GOOD_LABELS.to(torch.float32), "int64"),
    "numpy array": (GOOD_LABELS.numpy(), "torch.Tensor"),
    "list": (GOOD_LABELS.tolist(), "torch.Tensor"),
}


@pytest.fixture(scope="module")
def lenet_trained_once():
    model = niti.build("lenet", seed=11)
    model.train_step(GOOD_IMAGES, GOOD_LABELS)  # not at step 0: also proves step stays put
    return model


def _assert_untouched(model, sha: str, step: int, rng: list[torch.Tensor]) -> None:
    assert model.weights_sha256() == sha
    assert model.step == step
    assert all(torch.equal(a, b) for a, b in zip(_rng_states(model), rng))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_raise_value_error_and_change_nothing(case: str, lenet_trained_once) -> None:
    model = lenet_trained_once
    images, match = BAD_IMAGES[case]
    sha, step, rng = model.weights_sha256(), model.step, _rng_states(model)
    labels = GOOD_LABELS if case != "empty batch" else GOOD_LABELS[:0]
    with pytest.raises(ValueError, match=match):
        model.train_step(images, labels)
    _assert_untouched(model, sha, step, rng)
    with pytest.raises(ValueError, match=match):
        model.predict(images)
    _assert_untouched(model, sha, step, rng)


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_raise_value_error_and_change_nothing(case: str, lenet_trained_once) -> None:
    model = lenet_trained_once
    labels, match = BAD_LABELS[case]
    sha, step, rng = model.weights_sha256(), model.step, _rng_states(model)
    with pytest.raises(ValueError, match=match):
        model.train_step(GOOD_IMAGES, labels)
    _assert_untouched(model, sha, step, rng)


def test_good_input_after_bad_still_trains(lenet_trained_once) -> None:
    model = lenet_trained_once
    step, sha = model.step, model.weights_sha256()
    model.train_step(GOOD_IMAGES, GOOD_LABELS)
    assert model.step == step + 1 and model.weights_sha256() != sha


# --------------------------------------------------------------------------- checkpoints
def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("name,n,bits,before,after", [("lenet", 8, 8, 2, 2), ("lenet", 8, 16, 2, 2),
                                                      ("vgg-small-7", 2, 8, 1, 1)])
def test_state_dict_round_trip_continues_identically(name: str, n: int, bits: int, before: int, after: int) -> None:
    total = 6
    a = niti.build(name, seed=12, accumulator_bits=bits, total_steps=total)
    batches = [_batch(a, n, 200 + i) for i in range(before + after)]
    for images, labels in batches[:before]:
        a.train_step(images, labels)
    state = _round_trip(a.state_dict())

    b = niti.build(name, seed=99, accumulator_bits=bits)  # different seed and no total_steps: all from state
    assert b.weights_sha256() != a.weights_sha256()
    b.load_state_dict(state)
    assert b.weights_sha256() == a.weights_sha256() and b.step == a.step == before
    assert b.total_steps == total and b.current_gb() == a.current_gb()
    for images, labels in batches[before:]:
        la, lb = a.train_step(images, labels), b.train_step(images, labels)
        assert torch.equal(la.m, lb.m) and la.e == lb.e
        assert a.weights_sha256() == b.weights_sha256()
    assert a.step == b.step == before + after and a.current_gb() == b.current_gb()


def test_load_state_dict_rejects_mismatches() -> None:
    lenet8 = niti.build("lenet", accumulator_bits=8).state_dict()
    with pytest.raises(ValueError, match="vgg-small-7"):
        niti.build("vgg-small-7").load_state_dict(lenet8)
    with pytest.raises(ValueError, match="accumulator"):
        niti.build("lenet", accumulator_bits=16).load_state_dict(lenet8)
    with pytest.raises(ValueError, match="accumulator"):
        niti.build("lenet", accumulator_bits=8).load_state_dict(_round_trip(niti.build("lenet").state_dict()))
    target = niti.build("lenet", seed=3, accumulator_bits=8)
    sha = target.weights_sha256()
    broken = _round_trip(lenet8)
    broken["params"]["features.3.weight"]["m"] = broken["params"]["features.3.weight"]["m"][:, :, :, :10]
    with pytest.raises(ValueError, match="features.3.weight"):
        target.load_state_dict(broken)
    assert target.weights_sha256() == sha  # checked before anything was overwritten


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_lenet_learns_mnist(mnist) -> None:
    """A short CI run on real MNIST: 3000 training images, one epoch at batch 64, default flags: float SGD's step
    with gb 5 → 5/3 → -5/3 (lr 0.05, x0.1, x0.01)."""
    n_train, batch = 3008, 64  # 47 full batches: one compiled shape
    x = torch.from_numpy(np.ascontiguousarray(mnist["x_train"][:n_train])).reshape(-1, 28, 28, 1)
    y = torch.from_numpy(mnist["y_train"][:n_train].astype(np.int64))
    x_test = torch.from_numpy(np.ascontiguousarray(mnist["x_test"][:1000])).reshape(-1, 28, 28, 1)
    y_test = torch.from_numpy(mnist["y_test"][:1000].astype(np.int64))
    steps = -(-n_train // batch)
    model = niti.build("lenet", seed=0, total_steps=steps)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))
    gbs = []
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        gbs.append(model.current_gb())
        model.train_step(x[idx], y[idx])
    assert gbs[0] == 5 and gbs[-1] == Fraction(-5, 3) and Fraction(5, 3) in gbs
    accuracy = int((model.predict(x_test) == y_test).sum()) / len(y_test)
    assert accuracy >= 0.80, f"LeNet reached only {accuracy:.1%} on 1000 MNIST test images"


def test_input_is_normalised_by_the_integer_std() -> None:
    """numerics.md §8: (pixel - mean) · c rescaled to int8 with exponent shift - 12 is (pixel - mean) / std."""
    from niti.nn import images_to_int8
    from niti.runtime import Runtime

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 5, 5, 3), generator=g, dtype=torch.uint8)
    mean, scale = torch.tensor([125, 123, 114]), torch.tensor([65, 66, 61])
    from niti.numerics import RoundingPolicy

    x = images_to_int8(images, mean, Runtime(RoundingPolicy.all("nearest")), scale)
    real = x.m.to(torch.float64) * 2.0**x.e  # test-side floats, to read the result
    want = (images.to(torch.float64) - mean) * scale / 4096
    assert 64 <= int(x.m.abs().max()) <= 127 and float((real - want).abs().max()) <= 2.0**x.e / 2 + 1e-12
    # No scale (checkpoints from before it existed) is the raw-pixel input of the first contract, same values.
    raw = images_to_int8(images, mean, Runtime(RoundingPolicy.all("nearest")))
    ident = images_to_int8(images, mean, Runtime(RoundingPolicy.all("nearest")), torch.full((3,), 4096))
    assert torch.equal(raw.m, ident.m) and raw.e == ident.e


def test_initial_logits_have_a_float_like_scale(mnist) -> None:
    """Normalised input and full-range init put LeNet's initial logits near exponent -6..-4 (real logits ~1)."""
    images = torch.from_numpy(mnist["x_train"][:256]).reshape(-1, 28, 28, 1)
    for seed in range(3):
        assert -7 <= niti.build("lenet", seed=seed).predict_logits(images).e <= -3


@pytest.mark.parametrize("mean", [(-32768,), (256,), (33.7,)])
def test_an_out_of_range_input_mean_is_refused(mean: tuple) -> None:
    with pytest.raises(ValueError, match=r"input mean must be integers in \[0, 255\]"):
        niti.build("lenet", mean=mean)


def test_constant_pixel_batches_and_dead_networks_train_without_error() -> None:
    """Issue 16: a batch equal to the channel mean (all-zero input, logit exponent ~ -40) and a network whose
    activations all die must train (uniform softmax), not raise."""
    labels = torch.arange(8) % 10
    model = niti.build("lenet", seed=0, total_steps=4)
    flat = torch.full((8, 28, 28, 1), int(model.mean[0]), dtype=torch.uint8)
    for _ in range(2):
        logits = model.train_step(flat, labels)
        assert int(logits.m.abs().max()) == 0
    dead = niti.build("lenet", seed=1, total_steps=4)
    first = dead.parameters()[0]
    first.m.zero_()
    first.master.zero_()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 28, 28, 1), generator=g, dtype=torch.uint8)
    for _ in range(2):
        dead.train_step(images, labels)
    assert dead.step == 2


def test_numerics_1_flags_reproduce_the_first_version_bit_for_bit(mnist) -> None:
    """Coarse softmax, raw pixels, narrow init, the paper's update with 8-bit weights and gb 5,4,3: the same
    weights after 30 real MNIST steps as the code before numerics 2 (golden hash computed by commit 9b23fa7)."""
    x = torch.from_numpy(np.ascontiguousarray(mnist["x_train"][:1920])).reshape(-1, 28, 28, 1)
    y = torch.from_numpy(mnist["y_train"][:1920].astype(np.int64))
    model = niti.build("lenet", seed=0, total_steps=30, softmax="coarse", full_range_init=False, scale=(4096,),
                       random_bits="generator", policy=niti.RoundingPolicy.reference(), act_clip_bits=0,
                       rule=niti.optim.UpdateRule.paper(), accumulator_bits=8, schedule=niti.GbSchedule.reference())
    for i in range(30):
        model.train_step(x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64])
    assert model.weights_sha256() == "116d21e916ee82b791149012f7f83098f604765099099f184f0b26c8eb2f15ec"


def test_a_refused_update_changes_no_layer() -> None:
    """The int32-velocity bound is checked for every weight before any weight steps: nothing half-updated."""
    # The per-tensor rescale's step grows with the batch (batch_ref); float SGD's step (the default) is bounded
    # without it.
    model = niti.build("lenet", seed=0, total_steps=4, schedule=niti.GbSchedule.constant(7),
                       rule=niti.optim.UpdateRule(step_scale="max"))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,), generator=g)
    model.train_step(images, labels)
    sha, rng = model.weights_sha256(), model.runtime.state_dict()
    model.runtime.world_size = 2**14  # a global batch of 2**17 images: the step could overflow the int32 velocity
    with pytest.raises(ValueError, match="int32 velocity"):
        model.train_step(images, labels)
    assert model.weights_sha256() == sha and model.step == 1
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.runtime.state_dict().values(), rng.values()))
