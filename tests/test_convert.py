"""Any PyTorch CNN as an integer model: conversion (torch.fx), graph execution, residual adds, named state."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

import niti
from niti import nn
from niti.audit import integer_only
from niti.numerics import IntTensor, RoundingPolicy
from niti.runtime import Runtime
from niti.train import TrainConfig, fit, load_model


def _batch(shape: tuple[int, int, int], n: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
            torch.randint(0, classes, (n,), generator=g))


class EveryOp(tnn.Module):
    """Each supported operation once (strided conv with bias, residual add, every pooling and flatten form)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = tnn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.act = tnn.ReLU()
        self.conv = tnn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = tnn.MaxPool2d(2)
        self.avg = tnn.AvgPool2d(2)
        self.gap = tnn.AdaptiveAvgPool2d(1)
        self.drop = tnn.Dropout(0.5)
        self.keep = tnn.Identity()
        self.flat = tnn.Flatten()
        self.fc1 = tnn.Linear(8, 16, bias=True)
        self.fc2 = tnn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))                 # 16 -> 8
        y = F.relu(self.conv(x))
        x = x + y                                  # residual add
        x = torch.relu(self.keep(self.pool(x)))    # 8 -> 4
        x = self.avg(x).relu()                     # 4 -> 2
        x = self.flat(self.gap(x))
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class GlobalMean(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = tnn.Conv2d(1, 4, 3)
        self.fc = tnn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class ViewFlatten(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = tnn.Conv2d(1, 2, 3)
        self.fc = tnn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), 2)
        return self.fc(x.view(x.size(0), -1))


def test_every_supported_op_converts_and_trains_under_the_audit() -> None:
    model = niti.from_torch(EveryOp(), (16, 16, 3), seed=1)
    kinds = [type(op).__name__ for op in model.net.layers]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Add", "MaxPool2d", "ReLU", "AvgPool2d", "ReLU",
                     "AvgPool2d", "Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert model.parameter_names() == ["stem.weight", "stem.bias", "conv.weight", "fc1.weight", "fc1.bias",
                                       "fc2.weight", "fc2.bias"]
    assert model.net[0].stride == (2, 2) and model.num_classes == 5
    x, y = _batch((16, 16, 3), 6, 0, classes=5)
    before = model.weights_sha256()
    with integer_only() as audit:
        logits = model.train_step(x, y)
        model.predict(x)
    assert audit.ops > 50 and logits.m.dtype == torch.int8 and tuple(logits.shape) == (6, 5)
    assert model.weights_sha256() != before
    biases = dict(model.named_parameters())
    assert biases["fc2.bias"].m.abs().sum() > 0  # the bias trained


@pytest.mark.parametrize("module,shape,kinds", [
    (GlobalMean(), (6, 6, 1), ["Conv2d", "AvgPool2d", "Flatten", "Linear"]),
    (ViewFlatten(), (10, 10, 1), ["Conv2d", "MaxPool2d", "Flatten", "Linear"]),
])
def test_functional_forms_convert(module: tnn.Module, shape, kinds) -> None:
    model = niti.from_torch(module, shape)
    assert [type(op).__name__ for op in model.net.layers] == kinds
    x, y = _batch(shape, 4, 1, classes=3)
    with integer_only():
        model.train_step(x, y)


class _Sigmoid(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = tnn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.flatten(1)))


class _Shared(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = tnn.Conv2d(2, 2, 1)
        self.fc = tnn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).flatten(1))


def _seq(*layers: tnn.Module) -> tnn.Module:
    return tnn.Sequential(*layers, tnn.Flatten(), tnn.LazyLinear(2))


@pytest.mark.parametrize("module,shape,match", [
    (tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.BatchNorm2d(2, affine=False), tnn.Flatten(), tnn.Linear(8, 2)),
     (4, 4, 1), r"BatchNorm2d at module '1'.*affine=False"),
    (_Sigmoid(), (2, 2, 1), r"sigmoid at node 'sigmoid'"),
    (tnn.Sequential(tnn.Conv2d(2, 2, 3, groups=2), tnn.Flatten(), tnn.Linear(8, 2)), (4, 4, 2), r"groups=2"),
    (tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.Dropout(0.3), tnn.Flatten(), tnn.Linear(8, 2)), (4, 4, 1), r"p=0.3"),
    (tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.MaxPool2d(2, 2, 1, dilation=2), tnn.Flatten(), tnn.Linear(8, 2)),
     (6, 6, 1), r"MaxPool2d at module '1'"),
    (_Shared(), (2, 2, 2), r"called twice"),
    (tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.Flatten(), tnn.Linear(8, 2)), (4, 4, 3), r"does not run on"),
])
def test_unsupported_ops_are_refused_by_name(module: tnn.Module, shape, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        niti.from_torch(module, shape)


def test_unsupported_error_names_the_op_and_lists_what_is_supported() -> None:
    with pytest.raises(niti.models.UnsupportedModule) as info:
        niti.from_torch(tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.Tanh(), tnn.Flatten(), tnn.Linear(8, 2)), (4, 4, 1))
    assert "Tanh" in str(info.value) and "'1'" in str(info.value) and "Conv2d" in str(info.value)


def test_conversion_leaves_the_module_and_global_rng_alone() -> None:
    module = EveryOp()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    niti.from_torch(module, (16, 16, 3))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert module.training


# ------------------------------------------------------------------ graph semantics
def _to_float(t: IntTensor) -> torch.Tensor:
    return t.m.to(torch.float64) * (2.0 ** t.e)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().to(torch.float64), b.flatten().to(torch.float64)
    return float((a @ b) / (a.norm() * b.norm()))


def test_residual_graph_gradients_point_like_float_autograd() -> None:
    """x -> conv1 -> relu = h; out = h + conv2(h) (h used twice: its errors are summed) -> flatten -> linear."""
    g = torch.Generator().manual_seed(5)
    conv1 = nn.Conv2d(2, 6, 3, 1, 1, generator=g)
    conv2 = nn.Conv2d(6, 6, 3, 1, 1, generator=g)
    fc = nn.Linear(6 * 6 * 6, 4, generator=g)
    graph = nn.Graph([nn.Node("conv1", conv1, (0,)), nn.Node("relu", nn.ReLU(), (1,)),
                      nn.Node("conv2", conv2, (2,)), nn.Node("add", nn.Add(), (2, 3)),
                      nn.Node("flat", nn.Flatten(), (4,)), nn.Node("fc", fc, (5,))])
    graph.set_runtime(Runtime(RoundingPolicy.all("nearest")))
    x = IntTensor(torch.randint(-127, 128, (8, 6, 6, 2), generator=g, dtype=torch.int8), -7)
    tape = nn.Tape()
    out = graph.forward(x, tape)
    err = IntTensor(torch.randint(-127, 128, tuple(out.shape), generator=g, dtype=torch.int8), 0)
    assert graph.backward(err, tape) is None and tape.contexts == []

    def nchw_weight(layer: nn.Conv2d) -> torch.Tensor:
        return _to_float(IntTensor(layer.weight.m, layer.weight.e)).permute(0, 3, 1, 2).requires_grad_(True)

    w1, w2 = nchw_weight(conv1), nchw_weight(conv2)
    w3 = _to_float(IntTensor(fc.weight.m, fc.weight.e)).requires_grad_(True)
    h = F.relu(F.conv2d(_to_float(x).permute(0, 3, 1, 2), w1, padding=1))
    s = h + F.conv2d(h, w2, padding=1)
    y = F.linear(s.permute(0, 2, 3, 1).reshape(8, -1), w3)
    y.backward(_to_float(err))
    assert _cosine(_to_float(out), y.detach()) >= 0.99
    assert _cosine(fc.weight.grad, w3.grad) >= 0.99
    assert _cosine(conv2.weight.grad, w2.grad.permute(0, 2, 3, 1)) >= 0.95
    # conv1's gradient needs both of h's errors: through the skip and through conv2.
    assert _cosine(conv1.weight.grad, w1.grad.permute(0, 2, 3, 1)) >= 0.9


def test_a_value_read_twice_gets_the_exact_sum_of_its_errors() -> None:
    """Two readers of the input whose errors have different exponents: the sum is exact before the rescale."""
    a = IntTensor(torch.tensor([[3, -5, 127]], dtype=torch.int8), -4)
    b = IntTensor(torch.tensor([[-1, 7, 100]], dtype=torch.int8), -9)
    graph = nn.Graph([nn.Node("a", nn.Identity(), (0,)), nn.Node("b", nn.Identity(), (0,)),
                      nn.Node("sum", nn.Add(), (1, 2))])
    graph.set_runtime(Runtime(RoundingPolicy.all("nearest")))

    class Wide(Runtime):
        def rescale(self, t, target_bits, role, *, batched=True):  # noqa: ANN001, ANN202
            return super().rescale(t, 30, role, batched=batched)

    graph.set_runtime(Wide(RoundingPolicy.all("nearest")))
    total = graph._sum_errors([a, b])
    want = [int(p) * 2**5 + int(q) for p, q in zip(a.m[0], b.m[0])]  # both on the 2**-9 grid, pure Python
    assert total.e == -9 and total.m[0].tolist() == want


def test_a_parameter_free_module_called_twice_keeps_both_contexts() -> None:
    class TwiceReLU(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = tnn.ReLU()
            self.c1, self.c2 = tnn.Conv2d(1, 3, 3, padding=1), tnn.Conv2d(3, 3, 3, padding=1)
            self.fc = tnn.Linear(3 * 5 * 5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.relu(self.c2(self.relu(self.c1(x)))).flatten(1))

    model = niti.from_torch(TwiceReLU(), (5, 5, 1))
    x, y = _batch((5, 5, 1), 4, 2, classes=2)
    model.train_step(x, y)
    assert all(p.grad is None for p in model.parameters())


def test_nested_graph_keeps_the_backward_chain() -> None:
    """A graph inside a graph passes the error through (the old Sequential stopped at a nested container)."""
    g = torch.Generator().manual_seed(9)
    inner = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, generator=g), nn.ReLU())
    first = nn.Conv2d(2, 3, 3, 1, 1, generator=g)
    outer = nn.Sequential(first, inner, nn.Flatten(), nn.Linear(4 * 4 * 4, 2, generator=g))
    x = IntTensor(torch.randint(-127, 128, (2, 4, 4, 2), generator=g, dtype=torch.int8), -7)
    tape = nn.Tape()
    out = outer.forward(x, tape)
    outer.backward(IntTensor(torch.ones(tuple(out.shape), dtype=torch.int8), 0), tape)
    assert first.weight.grad is not None and bool(first.weight.grad.abs().sum() > 0)


# ------------------------------------------------------------------ the zoo through the new path
#: weights_sha256 after 3 steps, recorded with the spec interpreter the zoo replaced (commit 4cf6f5c), whose
#: random bits came from generators and whose dropout shared one mask per feature across the batch.
OLD_PATH_SHA = {
    ("lenet", 16, "reference"): "04d484a5dd25d7d0dafd8588ec16e753687e946750b895aa4ef4cc3d1bb238ed",
    ("lenet", 8, "stochastic"): "14e147e6d1cd844becbb89690e44e67aee61cf3a739b758685c53732b0cf9d86",
    ("vgg-small-7-quarter", 16, "reference"): "b06de71b05da04ada53007075502829b1aeac8a2d9930482f824318a10a2ae9c",
}


@pytest.mark.parametrize("name,bits,policy", list(OLD_PATH_SHA))
def test_zoo_through_conversion_matches_the_old_spec_path(name: str, bits: int, policy: str) -> None:
    rounding = RoundingPolicy.reference() if policy == "reference" else RoundingPolicy.all("stochastic")
    model = niti.build(name, seed=3, accumulator_bits=bits, total_steps=4, policy=rounding, random_bits="generator",
                       dropout="batch", act_clip_bits=0, rule=niti.optim.UpdateRule(decay_shift=0, step_scale="max"),
                       schedule=niti.GbSchedule.per_tensor(), full_range_init=True)
    g = torch.Generator().manual_seed(1)
    h, w, c = model.arch.input_shape
    for _ in range(3):
        x = torch.randint(0, 256, (16, h, w, c), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (16,), generator=g)
        model.train_step(x, y)
    assert model.weights_sha256() == OLD_PATH_SHA[(name, bits, policy)]


def test_named_parameters_and_gb_offsets_by_name() -> None:
    model = niti.build("lenet")
    assert model.parameter_names() == ["features.0.weight", "features.3.weight", "classifier.1.weight",
                                       "classifier.3.weight"]
    by_name = niti.build("lenet", gb_offsets={"classifier.3": 1, "features.0.weight": -1})
    assert by_name.gb_offsets == (-1, 0, 0, 1) == niti.build("lenet", gb_offsets=(-1, 0, 0, 1)).gb_offsets
    with pytest.raises(ValueError, match="no such parameter or layer"):
        niti.build("lenet", gb_offsets={"fc9": 1})
    with pytest.raises(ValueError, match="one value per parameter tensor"):
        niti.build("lenet", gb_offsets=(0, 1))
    assert list(model.state_dict()["params"]) == model.parameter_names()


# ------------------------------------------------------------------ user models through the CLI
USER_MODULE = '''
import torch
from torch import nn


class SmallResNet(nn.Module):
    """A strided conv with bias, a residual add and global average pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=True)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_resnet():
    return SmallResNet()
'''


@pytest.fixture()
def user_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mynets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("arith", ["int", "float"])
def test_user_model_trains_and_evaluates_through_the_cli(user_model_dir: Path, mnist_small_npz: Path,
                                                         arith: str) -> None:
    out = user_model_dir / f"run-{arith}"
    proc = subprocess.run([sys.executable, "-m", "niti", "train", "--model", "mynets:small_resnet", "--dataset",
                           str(mnist_small_npz), "--arith", arith, "--batch-size", "32", "--max-steps", "30",
                           "--val-size", "300", "--threads", "2", "--no-progress", "--out", str(out),
                           "--log-every", "10",
                           *(["--lr", "0.05"] if arith == "float" else [])],
                          capture_output=True, text=True, timeout=600, cwd=user_model_dir)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "mynets:small_resnet" and summary["steps"] == 30
    # A global-average-pooled net learns slowly (float too): 30 steps show it in the training loss.
    losses = [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    proc = subprocess.run([sys.executable, "-m", "niti", "eval", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=user_model_dir)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)
    assert evaluated["weights_sha256"] == summary["weights_sha256"]
    assert evaluated["test_accuracy"] == pytest.approx(summary["final_test_accuracy"])


def test_user_model_checkpoint_resumes_bit_identically(user_model_dir: Path, mnist_small_npz: Path) -> None:
    common = dict(model="mynets:small_resnet", dataset=str(mnist_small_npz), batch_size=32, max_steps=12,
                  val_size=300, progress=False, checkpoint_every=0)
    straight = fit(TrainConfig(out=str(user_model_dir / "straight"), **common))
    cut = TrainConfig(out=str(user_model_dir / "cut"), **common)
    with pytest.raises(niti.train.TrainingInterrupted):
        fit(cut, stop_after_steps=5)
    model, config, _ = load_model(user_model_dir / "cut")
    assert config.model == "mynets:small_resnet" and model.step == 5
    assert model.parameter_names()[:2] == ["stem.weight", "stem.bias"]
    resumed = fit(cut, resume=True)
    assert resumed["weights_sha256"] == straight["weights_sha256"]


def test_user_model_errors_are_clear(user_model_dir: Path, mnist_small_npz: Path) -> None:
    with pytest.raises(ValueError, match="--dataset"):
        fit(TrainConfig(model="mynets:small_resnet", out=str(user_model_dir / "a"), progress=False))
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        fit(TrainConfig(model="mynets:nope", dataset=str(mnist_small_npz), out=str(user_model_dir / "b"),
                        progress=False))
    with pytest.raises(ValueError, match="cannot import 'nomodule'"):
        niti.build("nomodule:f", input_shape=(28, 28, 1))
    proc = subprocess.run([sys.executable, "-m", "niti", "train", "--model", "not a path"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "MODULE:FACTORY" in proc.stderr


def test_conversion_leaves_no_float_parameters_behind() -> None:
    """The traced GraphModule is cyclic garbage holding the module's float parameters; conversion collects it,
    so a training step's memory does not carry the float weights until Python's collector happens to run."""
    import gc
    import weakref

    from niti.models import IntegerModel
    from niti.models.architectures import Architecture

    made: list[weakref.ref] = []

    def factory() -> tnn.Module:  # a fresh module per call, as a built-in architecture's
        module = EveryOp()
        made.append(weakref.ref(module.conv.weight))
        return module

    arch = Architecture("every-op", (16, 16, 3), 0, None, factory)  # 0: read from the output
    was_enabled = gc.isenabled()
    gc.disable()  # only the conversion's own collection may free the cycle
    try:
        model = IntegerModel(arch, seed=0)
        assert made and all(alive() is None for alive in made)
    finally:
        if was_enabled:
            gc.enable()
    assert model.parameters()
