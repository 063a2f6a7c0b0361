"""Shared fixtures: the real data sets beside the project (../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA_DIR = Path(os.environ.get("NITI_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _load(name: str) -> dict[str, np.ndarray]:
    path = DATA_DIR / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"real data set {path} is missing: tests need ../shared/data beside the project")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def mnist() -> dict[str, np.ndarray]:
    return _load("mnist")


@pytest.fixture(scope="session")
def cifar10() -> dict[str, np.ndarray]:
    return _load("cifar10")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_small_npz(tmp_path_factory: pytest.TempPathFactory, mnist: dict[str, np.ndarray]) -> Path:
    """A small slice of real MNIST (first 1,600 training and 1,000 test images) as an npz, for fast end-to-end runs."""
    path = tmp_path_factory.mktemp("data") / "mnist-small.npz"
    np.savez(path, x_train=mnist["x_train"][:1600], y_train=mnist["y_train"][:1600],
             x_test=mnist["x_test"][:1000], y_test=mnist["y_test"][:1000])
    return path
