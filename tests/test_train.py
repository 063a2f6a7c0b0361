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


def test_fit_writes_metrics_summary_and_checkpoint(tmp_path: Path, mnist_small_npz: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from niti.train import loop

    kept = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: kept.append(True))  # training keeps its heap (niti/heap.py)
    summary = fit(_config(tmp_path, mnist_small_npz))
    assert kept == [True]
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


def test_resumed_run_reports_the_same_metrics_clipped_steps_included(tmp_path: Path, mnist_small_npz: Path) -> None:
    """Raw pixels at gb 7 make float SGD's step clip (counted, docs/numerics.md §5): the running count in
    metrics.jsonl survives an interruption, as every other metric but the seconds does."""
    kw = dict(epochs=2, input_std=False, gb_schedule="7", max_steps=30)
    straight = _config(tmp_path / "a", mnist_small_npz, **kw)
    fit(straight)
    cfg = _config(tmp_path / "b", mnist_small_npz, **kw)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, stop_after_steps=12)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, resume=True, stop_after_steps=11)  # into epoch 2
    fit(cfg, resume=True)

    def metrics(run: str) -> list[dict]:
        rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert metrics(cfg.out) == metrics(straight.out)
    assert metrics(cfg.out)[-1]["step_clips"] > 0


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
    with pytest.raises(ValueError, match="--accumulator-bits 16"):  # gb <= 0 with int8 weights, per-tensor step
        TrainConfig(gb_schedule="3,0,-3@0.5,0.75", accumulator_bits=8, step_scale="max")
    TrainConfig(gb_schedule="3,0,-3@0.5,0.75", accumulator_bits=8)  # float SGD's step: gb is a log2 rate
    TrainConfig(gb_schedule="3,0,-3@0.5,0.75", accumulator_bits=16, step_scale="max")
    TrainConfig(arith="float", gb_schedule="3,0,-3@0.5,0.75")  # the float twin has no gb
    with pytest.raises(ValueError, match="outside -7..7"):
        TrainConfig(gb_offsets="0,0,0,3")  # 5 + 3
    assert TrainConfig(gb_offsets="0,0,0,2").layer_gb_offsets == (0, 0, 0, 2)


def test_exception_mid_epoch_writes_a_checkpoint_and_resume_is_bit_identical(
        tmp_path: Path, mnist_small_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash inside the loop saves the last consistent state before the error propagates."""
    from niti.models.integer import IntegerModel

    straight = fit(_config(tmp_path / "a", mnist_small_npz, epochs=1, checkpoint_every=0))
    real_step = IntegerModel.train_step

    def failing_step(self: IntegerModel, images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN202
        if self.step == 7:
            raise RuntimeError("planted failure")
        return real_step(self, images, labels)

    cfg = _config(tmp_path / "b", mnist_small_npz, epochs=1, checkpoint_every=0)
    monkeypatch.setattr(IntegerModel, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="planted failure") as info:
        fit(cfg)
    assert any("checkpoint written" in note for note in info.value.__notes__)
    state = load_checkpoint(Path(cfg.out))
    assert (state["epoch"], state["batch"], state["model"]["step"]) == (0, 7, 7)
    monkeypatch.setattr(IntegerModel, "train_step", real_step)
    resumed = fit(cfg, resume=True)
    assert resumed["weights_sha256"] == straight["weights_sha256"]


def test_periodic_checkpoints_within_an_epoch(tmp_path: Path, mnist_small_npz: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import niti.train.loop as loop

    saved: list[tuple[int, int]] = []
    real_save = loop.save_checkpoint

    def spy(path: Path, state: dict) -> None:
        saved.append((state["epoch"], state["batch"]))
        real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", spy)
    fit(_config(tmp_path, mnist_small_npz, checkpoint_every=6))  # 20 steps per epoch, 2 epochs
    assert saved == [(0, 6), (0, 12), (0, 18), (1, 0), (1, 4), (1, 10), (1, 16), (2, 0)]
    assert TrainConfig().checkpoint_every == 200


def test_empty_test_split_is_refused_before_training(tmp_path: Path, mnist: dict) -> None:
    import numpy as np

    path = tmp_path / "no-test.npz"
    np.savez(path, x_train=mnist["x_train"][:600], y_train=mnist["y_train"][:600],
             x_test=mnist["x_test"][:0], y_test=mnist["y_test"][:0])
    cfg = TrainConfig(model="lenet", dataset=str(path), out=str(tmp_path / "run"), batch_size=32, val_size=100,
                      progress=True)
    with pytest.raises(ValueError, match="empty test split"):
        fit(cfg)
    assert not (tmp_path / "run").exists()


def test_default_validation_split_scales_with_the_data_set(tmp_path: Path, mnist: dict) -> None:
    """10 % of the training images, capped at 5,000; a 2,048-image npz trains with default settings."""
    import numpy as np

    from niti.train.config import default_val_size

    assert (default_val_size(60_000), default_val_size(50_000), default_val_size(2048)) == (5000, 5000, 204)
    assert TrainConfig().val_size is None
    path = tmp_path / "mnist-2048.npz"
    np.savez(path, x_train=mnist["x_train"][:2048], y_train=mnist["y_train"][:2048],
             x_test=mnist["x_test"][:500], y_test=mnist["y_test"][:500])
    cfg = TrainConfig(model="lenet", dataset=str(path), out=str(tmp_path / "run"), progress=False, threads=2)
    summary = fit(cfg)
    assert summary["config"]["val_size"] == 204 and summary["val_images"] == 204
    assert summary["steps"] == (2048 - 204) // 64
    assert json.loads((tmp_path / "run" / "config.json").read_text())["val_size"] == 204
    assert load_checkpoint(tmp_path / "run")["config"]["val_size"] == 204
    assert fit(cfg, resume=True)["weights_sha256"] == summary["weights_sha256"]  # unresolved config resumes it


def test_bad_counts_and_devices_are_rejected_by_the_config() -> None:
    for kw, match in [({"max_steps": -3}, "max_steps"), ({"max_steps": 0}, "max_steps"),
                      ({"train_limit": -5}, "train_limit"), ({"threads": 0}, "threads"),
                      ({"threads": -1}, "threads"), ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
                      ({"val_size": -1}, "val_size"), ({"checkpoint_every": -1}, "checkpoint_every"),
                      ({"log_every": 0}, "log_every"), ({"device": "meta"}, "cpu or cuda"),
                      ({"device": "nonsense"}, "not a torch device"), ({"epochs": 1.5}, "integer"),
                      ({"arith": "float", "lr": -0.1}, "lr")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw)
    TrainConfig(device="cuda:1")  # a CUDA device is checked when training starts, so eval can load it on a CPU


def test_float_run_records_its_lr_and_an_open_one_resumes_with_the_rate_it_trained_with(
        tmp_path: Path, mnist_small_npz: Path) -> None:
    from niti.baseline import tuned_lr
    from niti.train.loop import load_model

    fresh = _config(tmp_path / "a", mnist_small_npz, arith="float", epochs=1, max_steps=3)
    fit(fresh)
    assert json.loads((tmp_path / "a" / "run" / "config.json").read_text())["lr"] == tuned_lr("lenet") == 0.05
    # A run written before rates were recorded: its config says lr None, its state the rate it trained with (here
    # not today's tuned one). Resuming and evaluating it keep that rate; a straight run at that rate gives the bits.
    straight = fit(_config(tmp_path / "b", mnist_small_npz, arith="float", epochs=1, max_steps=6, lr=0.01))
    cfg = _config(tmp_path / "c", mnist_small_npz, arith="float", epochs=1, max_steps=6, lr=0.01)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, stop_after_steps=3)
    path = Path(cfg.out) / "checkpoint.pt"
    state = load_checkpoint(path)
    state["config"]["lr"] = None
    save_checkpoint(path, state)
    assert load_model(cfg.out)[1].lr == 0.01
    resumed = fit(cfg.replace(lr=None), resume=True)
    assert resumed["weights_sha256"] == straight["weights_sha256"]
