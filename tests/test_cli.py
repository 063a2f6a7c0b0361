"""`niti` end to end as a user runs it, on small real MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import niti
from niti.cli import main


def _niti(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "niti", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("arith", ["int", "float"])
def test_train_eval_plot_end_to_end(tmp_path: Path, mnist_small_npz: Path, arith: str) -> None:
    out = tmp_path / f"run-{arith}"
    proc = _niti("train", "--model", "lenet", "--dataset", str(mnist_small_npz), "--arith", arith, "--epochs", "1",
                 "--batch-size", "32", "--max-steps", "30", "--val-size", "300", "--threads", "2", "--out", str(out),
                 *(["--lr", "0.05"] if arith == "float" else []))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arith"] == arith and summary["steps"] == 30 and summary["world_size"] == 1
    assert summary["final_test_accuracy"] > 30  # 30 steps of real MNIST: far above 10 % chance
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1

    proc = _niti("eval", str(out), "--dataset", str(mnist_small_npz))
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)
    assert evaluated["test_accuracy"] == pytest.approx(summary["final_test_accuracy"])
    assert evaluated["weights_sha256"] == summary["weights_sha256"]

    png = tmp_path / "curves.png"
    assert main(["plot", str(out), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_via_cli_matches_uninterrupted(tmp_path: Path, mnist_small_npz: Path) -> None:
    common = ["--model", "lenet", "--dataset", str(mnist_small_npz), "--epochs", "1", "--batch-size", "32",
              "--val-size", "300", "--train-limit", "1280", "--threads", "2", "--no-progress"]
    straight = tmp_path / "straight"
    assert main(["train", *common, "--out", str(straight)]) == 0
    # Interrupt a second run with SIGTERM part-way, then resume it.
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "niti", "train", *common, "--out", str(interrupted)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.time() + 300
    while not (interrupted / "config.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.terminate()  # config.json is written once the signal handlers are in place and training starts
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "resume" in err
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((interrupted / "summary.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NITI_DATA", raising=False)
    code = main(["train", "--data-dir", str(tmp_path / "nowhere"), "--no-download", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "mnist" in err and "--data-dir" in err and "nowhere" in err
    assert not (tmp_path / "run").exists()


def test_bad_arguments_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--model", "resnet-1000"])
    assert "neither a built-in model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-such-run")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_plot_an_interrupted_run_without_step_log(tmp_path: Path) -> None:
    """A run killed before summary.json, with no steps.jsonl: label from config.json, loss from metrics.jsonl."""
    from niti.plot import read_run

    run = tmp_path / "int-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"arith": "int", "model": "lenet"}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_loss": 2.0 / e, "val_accuracy": 50 + e, "test_accuracy": 49 + e}) + "\n"
        for e in (1, 2, 3)))
    assert read_run(run)["label"] == "int-run (int, lenet)"
    png = tmp_path / "curves.png"
    assert main(["plot", str(run), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_single_epoch_runs_as_bars(tmp_path: Path) -> None:
    """Runs of one epoch each get accuracy bars (a curve of single points says nothing); longer runs get curves."""
    from niti.plot import accuracy_style, read_run

    runs = []
    for name, epochs in (("a", 1), ("b", 1), ("c", 3)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 40 + e, "test_accuracy": 39 + e}) + "\n"
            for e in range(1, epochs + 1)))
        runs.append(run)
    assert accuracy_style([read_run(r) for r in runs[:2]]) == "bars"
    assert accuracy_style([read_run(r) for r in runs]) == "curves"
    png = tmp_path / "bars.png"
    assert main(["plot", str(runs[0]), str(runs[1]), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gb_offsets_reach_the_model_and_bad_ones_are_refused(tmp_path: Path, mnist_small_npz: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    common = ["train", "--model", "lenet", "--dataset", str(mnist_small_npz), "--epochs", "1", "--batch-size", "32",
              "--max-steps", "2", "--val-size", "300", "--accumulator-bits", "16", "--no-progress"]
    assert main([*common, "--gb-offsets", "0,0,0", "--out", str(tmp_path / "bad")]) == 2
    assert "one value per parameter tensor: the model has 4" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()
    out = tmp_path / "ok"
    assert main([*common, "--gb-schedule", "3", "--gb-offsets=-2,0,0,2", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["gb_offsets"] == "-2,0,0,2"
    from niti.train import load_model

    assert load_model(out)[0].gb_offsets == (-2, 0, 0, 2)


def test_sigkill_mid_epoch_resumes_bit_identical(tmp_path: Path, mnist_small_npz: Path) -> None:
    """A run killed outright (no handler runs) resumes from its last periodic checkpoint to the same weights."""
    import os
    import signal
    import time

    from niti.train import load_checkpoint

    common = ["--model", "lenet", "--dataset", str(mnist_small_npz), "--epochs", "1", "--batch-size", "32",
              "--val-size", "300", "--train-limit", "960", "--threads", "1", "--no-progress",
              "--checkpoint-every", "5"]
    straight = tmp_path / "straight"
    assert main(["train", *common, "--out", str(straight)]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "niti", "train", *common, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)  # 30 steps in all: the first checkpoint comes at step 5
    assert proc.wait(timeout=60) == -signal.SIGKILL
    state = load_checkpoint(killed)
    assert state["epoch"] == 0 and state["batch"] % 5 == 0 and state["batch"] > 0
    assert not (killed / "summary.json").exists()
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"] and a["steps"] == b["steps"] == 30


def test_weight_headroom_flag_reaches_the_model_and_its_checkpoint(tmp_path: Path, mnist_small_npz: Path) -> None:
    from niti.train.loop import load_model

    out = tmp_path / "room"
    common = ["--model", "lenet", "--dataset", str(mnist_small_npz), "--batch-size", "32", "--val-size", "300",
              "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(["train", *common, "--max-steps", "4", "--weight-headroom", "3"]) == 0
    assert json.loads((out / "config.json").read_text())["weight_headroom"] == 3
    model, config, _ = load_model(out)
    plain = niti.build("lenet")
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert p.master_e == q.master_e + 3, name  # every LeNet parameter is a convolution or linear one
    ends = tmp_path / "ends"
    assert main(["train", *common[:-1], str(ends), "--max-steps", "4", "--end-headroom", "2"]) == 0
    assert json.loads((ends / "config.json").read_text())["end_headroom"] == 2
    model, _, _ = load_model(ends)
    for i, ((name, p), (_, q)) in enumerate(zip(model.named_parameters(), plain.named_parameters())):
        assert p.master_e == q.master_e + (2 if i in (0, 3) else 0), name  # the first conv and the last linear


def test_step_carry_flag_reaches_the_update_and_its_checkpoint(tmp_path: Path, mnist_small_npz: Path) -> None:
    import torch

    from niti.train.loop import load_model

    common = ["--model", "lenet", "--dataset", str(mnist_small_npz), "--batch-size", "32", "--val-size", "300",
              "--threads", "1", "--no-progress", "--max-steps", "4"]
    runs = {flag: tmp_path / flag.strip("-") for flag in ("--step-carry", "--no-step-carry")}
    for flag, out in runs.items():
        assert main(["train", *common, "--out", str(out), flag]) == 0
    assert json.loads((runs["--step-carry"] / "config.json").read_text())["step_carry"] is True
    model, config, _ = load_model(runs["--step-carry"])
    assert config.rule.step_carry and model.rule.step_carry
    assert all(p.step_residual is not None and p.step_residual.dtype.is_signed for _, p in model.named_parameters())
    plain, _, _ = load_model(runs["--no-step-carry"])
    assert all(p.step_residual is None for _, p in plain.named_parameters())
    assert any(not torch.equal(p.master, q.master) for (_, p), (_, q) in zip(model.named_parameters(),
                                                                            plain.named_parameters()))


def test_act_clip_bits_flag_reaches_the_model_and_its_checkpoint(tmp_path: Path, mnist_small_npz: Path) -> None:
    from niti.models.integer import output_site
    from niti.train.loop import load_model

    out = tmp_path / "clip"
    assert main(["train", "--model", "lenet", "--dataset", str(mnist_small_npz), "--batch-size", "32", "--val-size",
                 "300", "--threads", "1", "--no-progress", "--out", str(out), "--max-steps", "4",
                 "--act-clip-bits", "1", "--act-clip-share", "6"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["act_clip_bits"] == 1 and saved["act_clip_share"] == 6
    model, config, _ = load_model(out)
    logits = output_site(model.net)
    assert config.act_clip_bits == model.act_clip_bits == 1 and logits.clip_bits == 0
    assert config.act_clip_share == model.act_clip_share == 6
    assert {(m.clip_bits, m.clip_share) for m in model.net.modules() if m is not logits} == {(1, 6)}


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("niti: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("flags, word", [
    (["--max-steps", "-3"], "max_steps"), (["--max-steps", "0"], "max_steps"),
    (["--train-limit", "-5"], "train_limit"), (["--threads", "-1"], "threads"), (["--threads", "0"], "threads"),
    (["--device", "cuda"], "cuda"), (["--device", "meta"], "meta"), (["--epochs", "0"], "epochs"),
    (["--batch-size", "0"], "batch_size"), (["--val-size", "-1"], "val_size"),
    (["--checkpoint-every", "-2"], "checkpoint_every"), (["--nproc", "0"], "nproc"),
    (["--weight-headroom", "9"], "weight_headroom"),
    (["--weight-headroom", "2", "--accumulator-bits", "8"], "weight_headroom"),
    (["--end-headroom", "9"], "end_headroom"), (["--weight-headroom", "6", "--end-headroom", "3"], "end_headroom"),
    (["--step-frac-bits", "13"], "step_frac_bits"),
    (["--act-clip-bits", "5"], "act_clip_bits"), (["--act-clip-bits", "-1"], "act_clip_bits"),
    (["--act-clip-share", "-1"], "act_clip_share"), (["--act-clip-share", "31"], "act_clip_share")])
def test_bad_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                        word: str) -> None:
    import torch

    if flags == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this build has CUDA")
    assert main(["train", "--no-download", "--out", str(tmp_path / "run"), "--no-progress", *flags]) == 2
    _one_line_error(capsys, word)
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback_and_unexpected_errors_are_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        main(["--debug", "train", "--max-steps", "-3"])
    import niti.train

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(niti.train, "fit", boom)
    assert main(["train", "--no-download", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    _one_line_error(capsys, "RuntimeError: something unexpected")


def test_corrupt_checkpoint_is_one_line_for_eval_and_resume(tmp_path: Path, mnist_small_npz: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(mnist_small_npz), "--batch-size", "32", "--max-steps", "2",
                 "--val-size", "300", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    path = out / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    assert main(["eval", str(out), "--dataset", str(mnist_small_npz)]) == 2
    _one_line_error(capsys, str(path), "corrupt")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    _one_line_error(capsys, str(path), "corrupt")


def test_eval_refuses_an_empty_test_split(tmp_path: Path, mnist_small_npz: Path, mnist: dict,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    out = tmp_path / "run"
    assert main(["train", "--dataset", str(mnist_small_npz), "--batch-size", "32", "--max-steps", "2",
                 "--val-size", "300", "--no-progress", "--out", str(out)]) == 0
    empty = tmp_path / "no-test.npz"
    np.savez(empty, x_train=mnist["x_train"][:100], y_train=mnist["y_train"][:100],
             x_test=mnist["x_test"][:0], y_test=mnist["y_test"][:0])
    capsys.readouterr()
    assert main(["eval", str(out), "--dataset", str(empty)]) == 2
    _one_line_error(capsys, "empty test split")


def test_train_flags_default_to_the_config_defaults():
    """``niti train`` with no numerics flags is ``TrainConfig()``: a CLI default that drifts from the documented
    one (the error rounding once defaulted to nearest here and to stochastic in the config) fails this."""
    from niti.cli import _config_from_args, build_parser
    from niti.train import TrainConfig

    args = build_parser().parse_args(["train"])
    got, want = _config_from_args(args).to_dict(), TrainConfig().to_dict()
    skip = {"out", "progress"}  # the CLI names its own output folder
    assert {k: v for k, v in got.items() if k not in skip} == {k: v for k, v in want.items() if k not in skip}
