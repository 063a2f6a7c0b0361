"""`niti train --nproc 2` end to end: same bits as one process, resumable, world_size recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _train(out: Path, npz: Path, *extra: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "niti", "train", "--model", "lenet", "--dataset", str(npz), "--epochs", "2",
           "--batch-size", "32", "--train-limit", "320", "--val-size", "200", "--round-all", "stochastic",
           "--no-progress", "--out", str(out), *extra]
    env = {**os.environ, "NITI_COMPILE": "0"}  # compiling in every rank costs minutes; bits are the same
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_match_one_and_resume(tmp_path: Path, mnist_small_npz: Path) -> None:
    one = _train(tmp_path / "one", mnist_small_npz, "--threads", "2")
    assert one.returncode == 0, one.stderr
    two = _train(tmp_path / "two", mnist_small_npz, "--nproc", "2")
    assert two.returncode == 0, two.stderr
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["world_size"] == 1 and s2["world_size"] == 2
    assert s2["weights_sha256"] == s1["weights_sha256"]
    assert s2["final_test_accuracy"] == s1["final_test_accuracy"]

    # Interrupt a distributed run with SIGTERM to the launcher, then resume it, still with 2 processes.
    run = tmp_path / "interrupted"
    proc = _train(run, mnist_small_npz, "--nproc", "2", wait=False)
    deadline = time.time() + 300
    while not (run / "config.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert (run / "checkpoint.pt").exists(), err
    resumed = subprocess.run([sys.executable, "-m", "niti", "train", "--resume", str(run), "--nproc", "2",
                              "--no-progress"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "NITI_COMPILE": "0"})
    assert resumed.returncode == 0, resumed.stderr
    s3 = json.loads((run / "summary.json").read_text())
    assert s3["world_size"] == 2 and s3["weights_sha256"] == s1["weights_sha256"]
