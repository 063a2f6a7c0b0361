"""The training loop end to end on small real data: outputs, resume, interruption, corrupt checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from niti.train import CheckpointError, TrainConfig, TrainingInterrupted, fit, load_checkpoint
from niti.train.checkpoint import save_checkpoint


def _config(tmp_path: Path, mnist_small_npz: Path, **kw: object) -> TrainConfig:
    base = dict(model="lenet", dataset=str(mnist_small_npz), out=str(tmp_path / "run"), epochs=2, batch_size=32,
                train_limit=640, val_size=500, progress=False, threads=2, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_writes_metrics_summary_and_checkpoint(tmp_path: Path, mnist_small_npz: Path) -> None:
    summary = fit(_config(tmp_path, mnist_small_npz))
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.jsonl", "steps.jsonl", "summary.json"):
        assert (run / name).exists(), name
    on_disk = json.loads((run / "summary.json").read_text())
    for key in ("final_test_accuracy", "best_val_accuracy", "epochs", "seconds", "images_per_second",
                "world_size", "weights_sha256"):
        assert key in on_disk, key
    assert on_disk["world_size"] == 1 and on_disk["epochs"] == 2 and on_disk["steps"] == 40
    assert on_disk["weights_sha256"] == summary["weights_sha256"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # 640 real images, 2 epochs: well above chance (10 %) on 1,000 real test images.
    assert on_disk["final_test_accuracy"] > 50


def test_resume_after_interruption_is_bit_identical(tmp_path: Path, mnist_small_npz: Path) -> None:
    straight = fit(_config(tmp_path / "a", mnist_small_npz))
    cfg = _config(tmp_path / "b", mnist_small_npz)
    with pytest.raises(TrainingInterrupted, match="resume"):
        fit(cfg, stop_after_steps=7)  # mid-epoch 1
    state = load_checkpoint(Path(cfg.out))
    assert (state["epoch"], state["batch"]) == (0, 7)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, resume=True, stop_after_steps=20)  # crosses the epoch boundary, stops mid-epoch 2
    resumed = fit(cfg, resume=True)
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    assert resumed["final_test_accuracy"] == straight["final_test_accuracy"]
    assert resumed["steps"] == straight["steps"]


def test_fresh_run_refuses_to_overwrite_and_resume_checks_config(tmp_path: Path, mnist_small_npz: Path) -> None:
    cfg = _config(tmp_path, mnist_small_npz, epochs=1, max_steps=3)
    fit(cfg)
    with pytest.raises(ValueError, match="--resume"):
        fit(cfg)
    with pytest.raises(ValueError, match="batch_size"):
        fit(cfg.replace(batch_size=16), resume=True)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"value": torch.tensor([1, 2, 3])})
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the signal arrives while the new file is being written

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"value": torch.tensor([4, 5, 6])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind
    assert load_checkpoint(path)["value"].tolist() == [1, 2, 3]


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"value": torch.tensor([1])})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"something": 1}, path)
    with pytest.raises(CheckpointError, match="not a niti checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="arith"):
        TrainConfig(arith="double")
    with pytest.raises(ValueError, match="grad_round"):
        TrainConfig(grad_round="banker")
    with pytest.raises(ValueError, match="gradient bit widths"):
        TrainConfig(gb_schedule="9")
    with pytest.raises(ValueError, match="--accumulator-bits 16"):
        TrainConfig(gb_schedule="3,0,-3@0.5,0.75")
    TrainConfig(gb_schedule="3,0,-3@0.5,0.75", accumulator_bits=16)
    TrainConfig(arith="float", gb_schedule="3,0,-3@0.5,0.75")  # the float twin has no gb
    with pytest.raises(ValueError, match="outside -7..7"):
        TrainConfig(gb_offsets="0,0,0,3")  # 5 + 3
    assert TrainConfig(gb_offsets="0,0,0,2").layer_gb_offsets == (0, 0, 0, 2)
