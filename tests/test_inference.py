"""Deployable inference and golden vectors: static shifts, niti.load, niti export + numpy runner, niti trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn as tnn

import niti
from niti.export import export
from niti.numerics import calibrate, static_shift
from niti.trace import check_trace, trace_run
from niti.train import TrainConfig, fit

NO_TORCH = "import sys; sys.modules['torch'] = None; import runpy; sys.argv = {argv!r}; " \
           "runpy.run_path({script!r}, run_name='__main__')"


def _mnist(mnist: dict, start: int, n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(mnist[f"x_{split}"][start:start + n])).reshape(-1, 28, 28, 1)
    return x, torch.from_numpy(mnist[f"y_{split}"][start:start + n].astype(np.int64))


class TinyResNet(tnn.Module):
    """Bias, residual add, average pooling: every exportable op beside LeNet's."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = tnn.Conv2d(1, 6, 3, stride=2, padding=1, bias=True)
        self.conv = tnn.Conv2d(6, 6, 3, padding=1)
        self.pool = tnn.AvgPool2d(2)
        self.drop = tnn.Dropout(0.5)
        self.fc = tnn.Linear(6 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


@pytest.fixture(scope="module")
def trained(mnist: dict) -> dict:
    """LeNet and a small residual net after 40 steps on real MNIST."""
    x, y = _mnist(mnist, 0, 40 * 32)
    models = {"lenet": niti.build("lenet", seed=0, total_steps=40),
              "resnet": niti.from_torch(TinyResNet(), (28, 28, 1), seed=0, total_steps=40, mean=(33,), scale=(52,))}
    for model in models.values():
        for i in range(40):
            model.train_step(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32])
    return models


def test_calibration_is_a_running_integer_width() -> None:
    r = calibrate(None, 18)
    assert r == 18 << 8 and static_shift(r) == 11
    for _ in range(200):
        r = calibrate(r, 20)
    assert static_shift(r) == 13  # converged onto the new width
    assert static_shift(calibrate(None, 5)) == 0


def test_the_logits_site_keeps_a_bit_of_headroom(trained: dict) -> None:
    """Only the layer that produces the logits gets OUTPUT_HEADROOM, found through nested graphs and the
    pass-through layers after it; its static shift is one more than its calibrated width's."""
    from niti.models.integer import output_site
    from niti.numerics import OUTPUT_HEADROOM

    assert OUTPUT_HEADROOM == 1 and static_shift(18 << 8, headroom=1) == 12
    for name in ("lenet", "vgg-small-7-quarter", "resnet-20"):
        model = niti.build(name)
        flagged = [m for m in model.net.modules() if m.static_headroom]
        assert flagged == [output_site(model.net)] and isinstance(flagged[0], niti.nn.Linear)
    after_relu = niti.from_torch(tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 10), tnn.ReLU()), (28, 28, 1))
    assert isinstance(output_site(after_relu.net), niti.nn.Linear)
    assert output_site(niti.from_torch(tnn.Sequential(tnn.Flatten()), (28, 28, 1)).net) is None
    model = trained["lenet"]
    fc = output_site(model.net)
    shifts = []
    original = fc.rescale_activation

    def spy(t: torch.Tensor, ctx: dict | None) -> tuple[torch.Tensor, int]:
        out, shift = original(t, ctx)
        shifts.append(shift)
        return out, shift

    fc.rescale_activation = spy
    try:
        model.predict(torch.zeros((2, 28, 28, 1), dtype=torch.uint8))
    finally:
        del fc.rescale_activation
    assert shifts == [static_shift(fc.calibration) + 1]


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_prediction_is_a_property_of_the_image(trained: dict, mnist: dict, name: str) -> None:
    model = trained[name]
    x, _ = _mnist(mnist, 0, 140, "test")
    assert model.inference == "static" and model.is_calibrated()
    whole = model.predict_logits(x)
    alone = [model.predict_logits(x[i:i + 1]) for i in range(x.shape[0])]
    sevens = [model.predict_logits(x[i:i + 7]) for i in range(0, x.shape[0], 7)]
    assert all(a.e == whole.e for a in alone + sevens)
    assert torch.equal(torch.cat([a.m for a in alone]), whole.m)
    assert torch.equal(torch.cat([s.m for s in sevens]), whole.m)


def test_per_batch_inference_remains_available(trained: dict, mnist: dict) -> None:
    model = trained["lenet"]
    x, _ = _mnist(mnist, 0, 50, "test")
    model.inference = "batch"
    try:
        batch_logits = model.predict_logits(x)
    finally:
        model.inference = "static"
    assert batch_logits.m.dtype == torch.int8
    with pytest.raises(ValueError, match="inference"):
        niti.build("lenet", inference="dynamic")


def test_an_untrained_model_falls_back_to_batch_shifts() -> None:
    model = niti.build("lenet")
    assert not model.is_calibrated()
    model.predict(torch.zeros(3, 28, 28, 1, dtype=torch.uint8))  # works, with the batch's own shifts
    with pytest.raises(ValueError, match="never trained"):
        export(model, "unused")


def test_a_failed_step_leaves_the_calibration_as_it_was(trained: dict, mnist: dict) -> None:
    model = niti.build("lenet", seed=1, total_steps=10, accumulator_bits=8, rule=niti.optim.UpdateRule(step_scale="max"),
                       schedule=niti.GbSchedule.per_tensor())
    x, y = _mnist(mnist, 0, 16)
    model.train_step(x, y)
    before = model.calibration_state()
    model.schedule = niti.GbSchedule.constant(0)  # gb 0 needs 16-bit accumulators: refused after backward
    with pytest.raises(ValueError):
        model.train_step(x, y)
    assert model.calibration_state() == before


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_numpy_runner_equals_predict_without_torch(trained: dict, mnist: dict, tmp_path: Path, name: str) -> None:
    model = trained[name]
    path = export(model, tmp_path / "exp")
    x, _ = _mnist(mnist, 0, 500, "test")
    images = tmp_path / "images.npy"
    np.save(images, x.numpy())
    pred = tmp_path / "pred.npy"
    script = str(tmp_path / "exp" / "infer.py")
    code = NO_TORCH.format(argv=[script, str(path), str(images), "-o", str(pred), "--batch-size", "77"], script=script)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(pred), model.predict(x).numpy())
    # The logits themselves, mantissas and exponent, equal too.
    sys.path.insert(0, str(tmp_path / "exp"))
    try:
        import infer  # the copied runner
        logits, e = infer.forward(infer.load(str(path)), x.numpy())
    finally:
        sys.path.pop(0)
        sys.modules.pop("infer", None)
    want = model.predict_logits(x)
    assert e == want.e and np.array_equal(logits, want.m.numpy().astype(np.int64))


def test_export_format_has_no_pickles_and_records_the_graph(trained: dict, tmp_path: Path) -> None:
    path = export(trained["resnet"], tmp_path)
    with np.load(path, allow_pickle=False) as f:
        graph = json.loads(str(f["graph"]))
        assert f["stem.weight"].dtype == np.int8 and f["stem.bias"].dtype == np.int8
    assert [n["op"] for n in graph["nodes"]] == ["conv2d", "relu", "conv2d", "add", "relu", "avgpool", "flatten",
                                                "identity", "linear"]
    assert graph["weights_sha256"] == trained["resnet"].weights_sha256()


def _run_dir(tmp_path: Path, mnist_small_npz: Path, **extra) -> Path:
    out = tmp_path / "run"
    fit(TrainConfig(model="lenet", dataset=str(mnist_small_npz), batch_size=32, max_steps=6, val_size=300,
                    progress=False, checkpoint_every=0, out=str(out), **extra))
    return out


def test_load_export_and_trace_through_the_cli(tmp_path: Path, mnist_small_npz: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from niti.cli import main

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    run = _run_dir(tmp_path, mnist_small_npz)
    model = niti.load(run)
    assert model.step == 6 and model.is_calibrated()
    evaluated = {}
    for mode, batch in (("static", "7"), ("static", "1000"), ("batch", "7")):
        code, out, err = cli("eval", str(run), "--inference", mode, "--batch-size", batch)
        assert code == 0, err
        evaluated[mode, batch] = json.loads(out)
        assert evaluated[mode, batch]["inference"] == mode
    # Static shifts: the same test accuracy in batches of 7 as of 1000.
    assert evaluated["static", "7"]["test_accuracy"] == evaluated["static", "1000"]["test_accuracy"]
    code, out, err = cli("export", str(run), "-o", str(tmp_path / "exp"))
    assert code == 0 and json.loads(out)["bytes"] > 0, err

    trace = tmp_path / "trace.npz"
    code, _, err = cli("trace", str(run), "-o", str(trace))
    assert code == 0, err
    code, out, err = cli("trace", "--check", str(trace))
    assert code == 0 and "match" in out, err
    # A second implementation (the exported numpy runner) checked layer by layer against the trace.
    example = Path(__file__).resolve().parents[1] / "examples" / "verify_forward_with_trace.py"
    proc = subprocess.run([sys.executable, str(example), str(tmp_path / "exp"), str(trace)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "all 11 layer outputs" in proc.stdout, proc.stdout + proc.stderr
    assert niti.load(run).weights_sha256() == model.weights_sha256()  # tracing changed nothing in the run

    with np.load(trace, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    fmt = json.loads(str(arrays["__format__"]))
    names = [t["name"] for t in fmt["tensors"]]
    for name in ("batch.images", "input.out", "features.0.activation.acc", "features.0.activation.shift",
                 "loss.err", "loss.noise", "classifier.3.err", "features.3.weight.grad", "features.3.weight.update",
                 "features.3.weight.after.master"):
        assert name in names
    grad = arrays["features.3.weight.grad"].copy()
    grad.flat[17] += 1  # one LSB
    arrays["features.3.weight.grad"] = grad
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    code, _, err = cli("trace", "--check", str(bad))
    assert code == 1 and "features.3.weight.grad" in err


def test_trace_of_a_user_model_checks(tmp_path: Path, mnist_small_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tracenets.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, bias=True), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(4, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    fit(TrainConfig(model="tracenets:net", dataset=str(mnist_small_npz), batch_size=16, max_steps=3, val_size=300,
                    progress=False, out=str(out), act_round="stochastic", act_clip_bits=2, act_clip_share=4,
                    step_carry=True))
    names = [t["name"] for t in trace_run(out, tmp_path / "t.npz")["tensors"]]
    assert [n for n in names if n.endswith(".clip")] == ["0.activation.clip", "2.activation.clip"]  # not the logits
    assert "4.weight.before.step_residual" in names and "4.weight.after.step_residual" in names
    assert check_trace(tmp_path / "t.npz") == len(names) > 30


def test_trace_of_a_vgg_run_with_dropout_checks(tmp_path: Path, cifar10: dict) -> None:
    small = tmp_path / "cifar-small.npz"  # real CIFAR-10 images, few of them: the point is the trace, not accuracy
    np.savez(small, x_train=cifar10["x_train"][:96], y_train=cifar10["y_train"][:96], x_test=cifar10["x_test"][:16],
             y_test=cifar10["y_test"][:16])
    out = tmp_path / "vgg"
    fit(TrainConfig(model="vgg-small-7-quarter", dataset=str(small), batch_size=8, max_steps=2, val_size=16,
                    progress=False, out=str(out)))
    trace = tmp_path / "vgg.npz"
    fmt = trace_run(out, trace)
    names = [t["name"] for t in fmt["tensors"]]
    assert "classifier.1.mask" in names and "features.0.activation.acc" in names
    assert check_trace(trace) == len(names)


def test_bad_or_foreign_files_give_clear_errors(tmp_path: Path, mnist_small_npz: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a niti trace"):
        check_trace(foreign)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable niti trace"):
        check_trace(garbage)
    from niti.cli import main

    assert main(["trace", "--check", str(tmp_path / "missing.npz")]) == 2
    assert "no trace" in capsys.readouterr().err
    assert main(["export", str(foreign), "-o", str(tmp_path / "e")]) == 2
    assert "foreign.npz" in capsys.readouterr().err
    float_run = tmp_path / "float"
    fit(TrainConfig(model="lenet", dataset=str(mnist_small_npz), arith="float", batch_size=32, max_steps=2,
                    val_size=300, progress=False, out=str(float_run)))
    with pytest.raises(ValueError, match="float"):
        trace_run(float_run, tmp_path / "f.npz")
    with pytest.raises(ValueError, match="only integer models"):
        export(niti.load(float_run), tmp_path / "fe")


def test_activation_clip_bits_reach_every_rescale_but_the_logits() -> None:
    """``act_clip_bits`` c (docs/numerics.md §2): every activation site but the input's and the logits' asks for c
    bits of clipping, and the first convolution's calibrated width (what static inference and the export use) is c
    bits lower after the same first step."""
    from niti.models.integer import output_site

    for name in ("lenet", "vgg-small-7-quarter", "resnet-20"):
        model = niti.build(name, act_clip_bits=2)
        logits = output_site(model.net)
        assert logits.clip_bits == 0 and {m.clip_bits for m in model.net.modules() if m is not logits} == {2}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 28, 28, 1), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    plain, clipped = niti.build("lenet", seed=1, act_clip_bits=0), niti.build("lenet", seed=1, act_clip_bits=1)
    asked: list[int] = []
    rescale = clipped.runtime.rescale

    def spy(t: torch.Tensor, target_bits: int, role: str, **kw: object) -> tuple[torch.Tensor, int]:
        asked.append(int(kw.get("clip_bits", 0)) if role == "activation" else -1)
        return rescale(t, target_bits, role, **kw)

    clipped.runtime.rescale = spy
    plain.train_step(images, labels)
    clipped.train_step(images, labels)
    assert [c for c in asked if c >= 0] == [0, 1, 1, 1, 0]  # the input, three layers, the logits
    a, b = plain.calibration_state(), clipped.calibration_state()
    # The first convolution sees the same input and keeps one bit more; the layers after it see inputs with one
    # bit more resolution (and an exponent one lower), so their shifts, a bit less than the wider sums', agree.
    assert a["input"] == b["input"] and a["features.0"] - b["features.0"] == 1 << 8
    for bad in (-1, 5, True):
        with pytest.raises(ValueError, match="act_clip_bits"):
            niti.build("lenet", act_clip_bits=bad)
