"""Checkpoint integrity (the SHA-256 digest) and the field checks of a loaded training state."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from niti.train import CheckpointError, TrainConfig, fit, load_checkpoint, load_model, save_checkpoint
from niti.train.validate import load_train_state, validate_train_state


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, mnist_small_npz: Path) -> Path:
    """A real two-step LeNet run (8-bit weights) on the small MNIST slice."""
    out = tmp_path_factory.mktemp("ck") / "run"
    fit(TrainConfig(model="lenet", dataset=str(mnist_small_npz), out=str(out), batch_size=32, max_steps=2,
                    val_size=300, progress=False))
    return out


def test_bit_flip_and_truncation_are_refused_naming_the_file(run_dir: Path, tmp_path: Path) -> None:
    data = (run_dir / "checkpoint.pt").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # one bit inside the tensor storage: torch.load alone would accept it
    for name, content in [("flipped.pt", bytes(flipped)), ("truncated.pt", data[:-100]),
                          ("header-only.pt", data[:90]), ("empty.pt", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}.*corrupt or truncated"):
            load_checkpoint(path)
    assert load_checkpoint(run_dir)["model"]["step"] == 2


def test_a_bare_torch_save_file_is_refused_unverified(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save({"format": "niti-checkpoint-v1", "state": load_checkpoint(run_dir)}, path)
    with pytest.raises(CheckpointError, match="integrity digest"):
        load_checkpoint(path)


def _crafted(run_dir: Path, tmp_path: Path, change) -> Path:  # noqa: ANN001
    """A well-formed, correctly digested checkpoint whose state ``change`` edited."""
    state = copy.deepcopy(load_checkpoint(run_dir))
    change(state)
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, state)
    return path


def _param(state: dict) -> dict:
    return next(iter(state["model"]["params"].values()))


CRAFTED = {
    "missing config": (lambda s: s.pop("config"), "missing fields config"),
    "config of wrong type": (lambda s: s["config"].update(epochs="1"), "invalid config"),
    "weights at -128": (lambda s: _param(s)["m"].fill_(-128), r"features.0.weight m has values in \[-128, -128\]"),
    "float weights": (lambda s: _param(s).update(m=_param(s)["m"].float()), "features.0.weight m must be torch.int8"),
    "huge exponent": (lambda s: _param(s).update(e=10**6), "exponent e must be in"),
    "float exponent": (lambda s: _param(s).update(e=-7.5), "exponent e must be an integer"),
    "negative step": (lambda s: s["model"].update(step=-5), "model step must be in"),
    "negative epoch": (lambda s: s.update(epoch=-1), "epoch must be in"),
    "text total_steps": (lambda s: s["model"].update(total_steps="abc"), "total_steps must be an integer"),
    "float mean": (lambda s: s["model"].update(mean=torch.tensor([33.7])), "mean must be an integer tensor"),
    "mean out of range": (lambda s: s["model"].update(mean=torch.tensor([40000], dtype=torch.int32)),
                          r"mean has values in \[40000, 40000\]"),
    "three-channel mean": (lambda s: s.update(mean=[1, 2, 3]), "mean must be a list of 1 integers"),
    "float draw count": (lambda s: s["model"]["runtime"].update(rounding_draws=torch.tensor(3.0)),
                         "runtime rounding_draws must be torch.int64"),
    "negative draw count": (lambda s: s["model"]["runtime"].update(dropout_draws=torch.tensor(-1)),
                            r"runtime dropout_draws has values in \[-1, -1\]"),
    "seed of one word": (lambda s: s["model"]["runtime"].update(stream_seed=torch.tensor([1])),
                         "runtime stream_seed must be two 32-bit words"),
    "mixed random schemes": (lambda s: s["model"]["runtime"].update(rounding_generator=torch.zeros(3)),
                             "model runtime must hold"),
    "float rng state": (lambda s: s["model"].update(runtime={"rounding_generator": torch.zeros(3),
                                                             "dropout_generator": torch.zeros(3, dtype=torch.uint8)}),
                        "runtime rounding_generator must be torch.uint8"),
    "float extra param state": (lambda s: _param(s).update(velocity=torch.zeros(3)),
                                "features.0.weight velocity must be an integer tensor"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_fields_are_refused(run_dir: Path, tmp_path: Path, name: str) -> None:
    change, match = CRAFTED[name]
    path = _crafted(run_dir, tmp_path, change)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_unknown_integer_state_is_tolerated(run_dir: Path) -> None:
    """A newer optimiser's integer state (a velocity per weight, an input scale) passes the generic checks."""
    state = copy.deepcopy(load_checkpoint(run_dir))
    for p in state["model"]["params"].values():
        p["velocity"] = torch.zeros(p["m"].shape, dtype=torch.int32)
        p["velocity_e"] = -12
    state["model"]["scale"] = torch.tensor([3], dtype=torch.int16)
    assert validate_train_state(state, "x").model == "lenet"


def test_a_shape_mismatch_is_a_checkpoint_error(run_dir: Path, tmp_path: Path) -> None:
    path = _crafted(run_dir, tmp_path, lambda s: _param(s).update(m=_param(s)["m"][:1].clone()))
    # With int16 masters (the default) the m / master disagreement is caught first.
    with pytest.raises(CheckpointError, match="does not fit the model|master has shape"):
        load_model(path)


def test_resume_refuses_a_corrupt_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy_dir = tmp_path / "run"
    shutil.copytree(run_dir, copy_dir)
    path = copy_dir / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x10
    path.write_bytes(bytes(data))
    config = TrainConfig.from_dict({**load_train_state(run_dir)["config"], "out": str(copy_dir)})
    with pytest.raises(CheckpointError, match="checkpoint.pt is corrupt"):
        fit(config, resume=True)
