"""The float baseline: interface parity with IntegerModel, validation, LR schedule, determinism, resume, learning."""

from __future__ import annotations

import inspect
import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from niti.baseline import DEFAULT_STATS, FloatModel, LrSchedule, build_float
from niti.models import ARCHITECTURES, Architecture, IntegerModel
from niti.models import build as build_integer
from niti.optim import GbSchedule

#: IntegerModel methods that only make sense for integer training (rounding runtime, gb schedule).
INTEGER_ONLY = {"set_runtime", "current_gb", "policy", "calibration_state", "is_calibrated", "inference"}


#: A small net with every layer kind of VGG-small (dropout included) for quick state and dropout tests.
def _tiny_module() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(128, 10, bias=False))


TINY = Architecture("tiny", (8, 8, 3), 10, "cifar10", _tiny_module)


def _tiny_batch(cifar10: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real CIFAR-10 images cropped to the tiny net's 8 x 8."""
    x, y = _batch(cifar10, n)
    return x[:, 12:20, 12:20].contiguous(), y


def _public(cls: type) -> set[str]:
    return {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")}


def _batch(data: dict, n: int, start: int = 0, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    x = data[f"x_{split}"][start:start + n]
    x = x[..., None] if x.ndim == 3 else x
    y = data[f"y_{split}"][start:start + n].astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


# ----------------------------------------------------------------- interface
def test_public_interface_matches_integer_model() -> None:
    missing = _public(IntegerModel) - INTEGER_ONLY - _public(FloatModel)
    assert not missing, f"FloatModel lacks {sorted(missing)}"
    for name in ("train_step", "predict", "predict_logits", "forward", "state_dict", "load_state_dict",
                 "weights_sha256", "to", "parameters", "current_lr"):
        assert callable(getattr(FloatModel, name))
    m = build_float("lenet", total_steps=10)
    assert (m.arch.name, m.step, m.total_steps, m.device) == ("lenet", 0, 10, torch.device("cpu"))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_weights_have_the_integer_models_shapes(name: str) -> None:
    """Same spec, same layers: conv weights (out, in, kh, kw) are the integer (out, kh, kw, in) transposed."""
    float_shapes = [tuple(p.shape) for p in build_float(name).parameters()]
    int_shapes = []
    for p in build_integer(name).parameters():
        s = tuple(p.m.shape)
        int_shapes.append((s[0], s[3], s[1], s[2]) if len(s) == 4 else s)
    assert float_shapes == int_shapes


def test_dropout_draws_from_the_models_own_seeded_state(cifar10: dict) -> None:
    """The module's torch dropout draws from the model's generator state, never from (or into) the global one."""
    x, y = _tiny_batch(cifar10, 2)
    fm = FloatModel(TINY, seed=3)
    start = fm.rng_state.clone()
    assert torch.equal(start, torch.Generator().manual_seed(3 * 2 + 2).get_state())
    global_before = torch.get_rng_state()
    fm.train_step(x, y)
    assert torch.equal(torch.get_rng_state(), global_before)
    assert not torch.equal(fm.rng_state, start)  # the step's dropout drew from it


def test_importing_niti_does_not_import_the_float_baseline() -> None:
    code = "import sys, niti, niti.models, niti.nn, niti.optim; print('niti.baseline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_stats_are_the_training_sets(mnist: dict, cifar10: dict) -> None:
    levels = np.arange(256, dtype=np.float64) / 255
    for name, data in (("mnist", mnist), ("cifar10", cifar10)):
        x = data["x_train"]
        channels = x.reshape(-1, 1 if x.ndim == 3 else x.shape[-1])
        # Exact per-channel moments from the pixel histogram.
        hist = [np.bincount(channels[:, c], minlength=256) / channels.shape[0] for c in range(channels.shape[1])]
        mean = np.array([(h * levels).sum() for h in hist])
        std = np.array([np.sqrt((h * (levels - mu) ** 2).sum()) for h, mu in zip(hist, mean)])
        np.testing.assert_allclose(DEFAULT_STATS[name][0], mean, atol=1e-7)
        np.testing.assert_allclose(DEFAULT_STATS[name][1], std, atol=1e-7)


def test_normalise_uses_mean_and_std() -> None:
    m = build_float("vgg-small-7", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).expand(2, 32, 32, 3)
    x = m.normalise(images)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-1.0, 3.0, 0.2]))


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("images, labels, match", [
    (np.zeros((2, 28, 28, 1), np.uint8), torch.zeros(2, dtype=torch.int64), "torch.Tensor"),
    (torch.zeros(2, 28, 28, 1), torch.zeros(2, dtype=torch.int64), "uint8"),
    (torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "rank 4"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "NHWC"),
    (torch.zeros(0, 28, 28, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), "empty batch"),
    (torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32), "int64"),
    (torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "one label per image"),
    (torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.tensor([0, 10]), r"\[0, 10\)"),
    (torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.tensor([-1, 0]), r"\[0, 10\)"),
])
def test_bad_input_raises_and_leaves_the_model_untouched(images, labels, match: str) -> None:
    m = build_float("lenet", total_steps=4)
    m.train_step(torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.tensor([1, 2]))  # momentum buffers exist
    before = (m.weights_sha256(), m.step, m.rng_state.clone(), m.state_dict()["momentum"])
    with pytest.raises(ValueError, match=match):
        m.train_step(images, labels)
    assert m.weights_sha256() == before[0] and m.step == before[1]
    assert torch.equal(m.rng_state, before[2])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict()["momentum"], before[3]))
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "resnet"}, "unknown model"),
    ({"mean": (0.1, 0.2)}, "mean has 2 channels"),
    ({"std": (0.0,)}, "positive"),
    ({"lr": 0.0}, "lr must be"),
    ({"lr": float("nan")}, "lr must be"),
    ({"momentum": 1.0}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"total_steps": 0}, "total_steps"),
    ({"lr_decay": (0.1,)}, "one decay factor per boundary"),
    ({"lr_boundaries": (0.75, 0.5)}, "increasing"),
    ({"lr_decay": (0.1, -0.01)}, "decay factors"),
])
def test_bad_configuration_raises(kwargs: dict, match: str) -> None:
    kwargs = {"name": "lenet", **kwargs}
    with pytest.raises(ValueError, match=match):
        build_float(kwargs.pop("name"), **kwargs)


# --------------------------------------------------------------- LR schedule
def test_lr_schedule_values_at_the_boundaries() -> None:
    s = LrSchedule(0.1)
    got = {step: s.lr_at(step, 100) for step in (0, 49, 50, 74, 75, 99)}
    assert got == {0: 0.1, 49: 0.1, 50: pytest.approx(0.01), 74: pytest.approx(0.01), 75: pytest.approx(0.001),
                   99: pytest.approx(0.001)}
    assert s.lr_at(10**6, None) == 0.1  # unknown total: no decay
    custom = LrSchedule(1.0, decay=(0.5,), boundaries=(0.3,))
    assert [custom.lr_at(k, 10) for k in (2, 3)] == [1.0, 0.5]


def test_lr_schedule_drops_at_the_same_step_as_the_gb_schedule() -> None:
    for boundaries in ((0.5, 0.75), (0.3, 0.6), (0.1,), (1 / 3, 2 / 3)):
        lr = LrSchedule(1.0, decay=tuple(10.0 ** -(i + 1) for i in range(len(boundaries))), boundaries=boundaries)
        gb = GbSchedule(tuple(range(len(boundaries) + 1, 0, -1)), boundaries)
        for total in range(1, 60):
            for step in range(total):
                assert lr.phase(step, total) == gb.values[0] - gb.gb_at(step, total)


def test_train_step_applies_the_scheduled_lr() -> None:
    """Momentum and decay off: the step-1 update is exactly -lr(step 1) · grad, i.e. the decayed lr."""
    m = build_float("lenet", lr=0.5, momentum=0.0, weight_decay=0.0, total_steps=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 28, 28, 1), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    m.train_step(x, y)
    assert m.current_lr() == pytest.approx(0.05)
    before = [p.detach().clone() for p in m.parameters()]
    m.net.zero_grad()
    torch.nn.functional.cross_entropy(m.forward(x), y).backward()  # lenet has no dropout: same graph
    grads = [p.grad.clone() for p in m.parameters()]
    m.net.zero_grad(set_to_none=True)
    m.train_step(x, y)
    for p, w, gr in zip(m.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), w - 0.05 * gr, rtol=0, atol=1e-7)
    assert m.step == 2


# ---------------------------------------------------------- determinism / state
def _train(m: FloatModel, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> list[torch.Tensor]:
    return [m.train_step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(steps)]


def test_same_seed_same_weights(mnist: dict) -> None:
    x, y = _batch(mnist, 96)
    a, b, c = (build_float("lenet", seed=s, total_steps=3) for s in (7, 7, 8))
    assert a.weights_sha256() == b.weights_sha256() != c.weights_sha256()
    for m in (a, b, c):
        _train(m, x, y, 3, 32)
    assert a.weights_sha256() == b.weights_sha256() != c.weights_sha256()


def test_dropout_is_seeded_and_changes_each_step(cifar10: dict) -> None:
    x, y = _tiny_batch(cifar10, 4)
    a, b = FloatModel(TINY, seed=1), FloatModel(TINY, seed=1)
    la = a.train_step(x, y)
    lb = b.train_step(x, y)
    assert torch.equal(la, lb) and a.weights_sha256() == b.weights_sha256()
    la2, lb2 = a.train_step(x, y), b.train_step(x, y)
    assert torch.equal(la2, lb2)
    c = FloatModel(TINY, seed=2)
    c.train_step(x, y)
    assert not torch.equal(c.rng_state, a.rng_state) or c.weights_sha256() != a.weights_sha256()
    drop = a.net[4]
    drop.train()
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(a.rng_state)
        m1 = drop(torch.ones(3, 128))
        torch.set_rng_state(a.rng_state)
        m2 = drop(torch.ones(3, 128))
    assert torch.equal(m1, m2) and set(m1.unique().tolist()) == {0.0, 2.0}


def test_state_dict_round_trip_continues_bit_identically(cifar10: dict) -> None:
    x, y = _tiny_batch(cifar10, 12)
    a = FloatModel(TINY, seed=0, total_steps=6, schedule=LrSchedule(0.02))
    _train(a, x, y, 2, 2)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    logits_a = _train(a, x[4:], y[4:], 4, 2)  # crosses both lr boundaries; must not alter the saved state

    b = FloatModel(TINY, seed=5, total_steps=6, schedule=LrSchedule(0.02))
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.step == 2
    logits_b = _train(b, x[4:], y[4:], 4, 2)
    assert all(torch.equal(la, lb) for la, lb in zip(logits_a, logits_b))
    assert a.weights_sha256() == b.weights_sha256()
    assert torch.equal(a.rng_state, b.rng_state)


def test_load_state_dict_rejects_mismatches_and_changes_nothing() -> None:
    m = build_float("lenet", seed=0)
    before = m.weights_sha256()
    state = build_float("lenet", seed=1).state_dict()
    with pytest.raises(ValueError, match="not 'lenet'"):
        m.load_state_dict(build_float("vgg-small-7").state_dict())
    with pytest.raises(ValueError, match="trained with"):
        m.load_state_dict(build_float("lenet", lr=0.3).state_dict())
    bad = dict(state, weights=dict(state["weights"], **{"0.weight": torch.zeros(20, 1, 3, 3)}))
    with pytest.raises(ValueError, match="0.weight"):
        m.load_state_dict(bad)
    with pytest.raises(ValueError, match="momentum"):
        m.load_state_dict(dict(state, momentum=state["momentum"][:2]))
    assert m.weights_sha256() == before
    m.load_state_dict(state)
    assert m.weights_sha256() == build_float("lenet", seed=1).weights_sha256()


def test_to_moves_weights_and_momentum() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        m = build_float("lenet", total_steps=4)
        x, y = torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.tensor([1, 2])
        m.train_step(x, y)
        m.to(device)
        m.train_step(x, y)
        assert m.device == torch.device(device)
        assert all(p.device.type == device for p in m.parameters())
        assert all(s["momentum_buffer"].device.type == device for s in m.optimizer.state.values())
        assert m.predict(x).device.type == device and m.predict(x).dtype == torch.int64


# ------------------------------------------------------------------ learning
def test_short_mnist_training_learns(mnist: dict) -> None:
    x, y = _batch(mnist, 2000)
    xt, yt = _batch(mnist, 1000, split="test")
    m = build_float("lenet", seed=0, lr=0.05, total_steps=2000 // 32)
    _train(m, x, y, 2000 // 32, 32)
    accuracy = (m.predict(xt) == yt).double().mean().item()
    assert accuracy > 0.75, f"LeNet after 2000 images reached {accuracy:.3f} test accuracy"


def _benchmark_module(name: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    """A script of benchmarks/ as a module (its own imports resolved from benchmarks/ for this test only)."""
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # int_update_twin imports fake_quant_twin
    spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fake_quant_twin_rounds_to_int8_grids_and_passes_gradients_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The diagnostic twin (benchmarks/fake_quant_twin.py): every layer output is an int8 mantissa times one power
    of two with its peak in (63, 127], gradients are the identity's, and the state dict keeps the twin's names."""
    fq = _benchmark_module("fake_quant_twin", monkeypatch)
    x = torch.randn(4, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    q = fq.fake_int8(x)
    scale = 2.0 ** torch.ceil(torch.log2(x.detach().abs().max() / 127))
    m = q.detach() / scale
    assert torch.equal(m, m.round()) and 63 < m.abs().max() <= 127
    assert (q.detach() - x.detach()).abs().max() <= scale / 2
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(fq.fake_int8(torch.zeros(3)), torch.zeros(3))

    model = FloatModel(TINY, seed=0, total_steps=4)
    names = list(model.net.state_dict())
    fq.install(model, "all")
    outs = []
    for layer in model.net.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.register_forward_hook(lambda _layer, _inp, out: outs.append(out.detach()))
    images = torch.randint(0, 256, (8, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    model.train_step(images, torch.arange(8) % 10)
    assert len(outs) == 2 and list(model.net.state_dict()) == names
    for out in outs:
        m = out / 2.0 ** torch.ceil(torch.log2(out.abs().max() / 127))
        assert torch.equal(m, m.round())


def test_int_update_twin_takes_the_integer_step_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/int_update_twin.py: integer-grid initial weights, a first step whose largest element is
    2**(gb-1)..2**gb units * batch/256 / 2**3 (momentum's average), weights inside the rail, and a resume from
    the float twin's state dict that continues bit-identically."""
    iu = _benchmark_module("int_update_twin", monkeypatch)
    images = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(16) % 10

    def fresh() -> FloatModel:
        model = FloatModel(TINY, seed=0, total_steps=8)
        iu.install(model, 0, GbSchedule.parse("5,4@0.5"), 16, rails=True)
        return model

    model = fresh()
    pairs = iu.integer_units(model.net)
    for p, unit in pairs:
        m = p.detach() / unit
        assert torch.equal(m, m.round()) and m.abs().max() <= 127
    before = [p.detach().clone() for p, _ in pairs]
    model.train_step(images, labels)
    for (p, unit), w in zip(pairs, before):
        largest = float((p.detach() - w).abs().max()) / unit
        assert 2 ** 4 * 16 / 256 / 8 <= largest < 2 ** 5 * 16 / 256 / 8
    for _ in range(3):
        model.train_step(images, labels)
    state = model.state_dict()
    assert all(buf is not None for buf in state["momentum"])
    resumed = fresh()
    resumed.load_state_dict(state)
    for m in (model, resumed):
        for _ in range(3):
            m.train_step(images, labels)
    assert model.weights_sha256() == resumed.weights_sha256()
    for p, unit in pairs:
        assert p.detach().abs().max() <= 32767 * unit / 256


def test_twin_diagnostics_resume_from_a_committed_copy(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """``--resume`` copies a committed checkpoint and logs into a run directory that has none, and never over a
    checkpoint that is already there."""
    fq = _benchmark_module("fake_quant_twin", monkeypatch)
    committed, out = tmp_path / "results" / "fq-all-s0", tmp_path / "runs" / "fq-all-s0"
    committed.mkdir(parents=True)
    for name in ("checkpoint.pt", "metrics.jsonl", "config.json"):
        (committed / name).write_text(name)
    fq.carry_checkpoint(str(out), str(committed.parent))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    (out / "checkpoint.pt").write_text("newer")
    fq.carry_checkpoint(str(out), str(committed.parent))
    assert (out / "checkpoint.pt").read_text() == "newer"
