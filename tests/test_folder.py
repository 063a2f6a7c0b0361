"""ImageNet mode: image-folder data (PNG and JPEG written from real CIFAR-10 images) through the data layer and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from niti.cli import main
from niti.data import BatchIterator, DataNotFoundError, FolderImages, load_dataset
from niti.data.folder import _DRAWS, crop_box

CLASSES = ("airplane", "cat", "ship")  # CIFAR-10 labels 0, 3, 8


def _write(root: Path, split: str, images: np.ndarray, labels: np.ndarray, per_class: int) -> None:
    from PIL import Image

    for name, label in zip(CLASSES, (0, 3, 8)):
        d = root / split / name
        d.mkdir(parents=True)
        rows = np.flatnonzero(labels == label)[:per_class]
        for k, i in enumerate(rows):
            im = Image.fromarray(images[i]).resize((40 + k % 3 * 8, 36))  # varied sizes and aspect ratios
            suffix = ".png" if k % 2 else ".JPEG"
            im.save(d / f"{split}_{i}{suffix}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    with np.load(shared_data_dir / "cifar10.npz") as z:
        x_train, y_train, x_test, y_test = z["x_train"][:2000], z["y_train"][:2000], z["x_test"][:500], z["y_test"][:500]
    root = tmp_path_factory.mktemp("folder") / "tiny-imagenet-layout"
    _write(root, "train", x_train, y_train, 24)
    _write(root, "val", x_test, y_test, 6)
    return root


def test_folder_loads_lazily_with_both_transforms(folder: Path) -> None:
    ds = load_dataset(folder, image_shape=(32, 32, 3), workers=0)
    assert isinstance(ds.x_train, FolderImages) and ds.num_classes == 3
    assert ds.x_train.shape == (72, 32, 32, 3) and ds.x_test.shape == (18, 32, 32, 3)
    assert sorted(np.bincount(ds.y_train).tolist()) == [24, 24, 24]
    # The training order mixes classes (the validation split is the last images).
    assert len(set(ds.y_train[-12:].tolist())) > 1
    evald = ds.x_test[np.array([0, 5])]
    assert evald.dtype == np.uint8 and evald.shape == (2, 32, 32, 3)
    assert np.array_equal(evald, ds.x_test[np.array([0, 5])])  # evaluation is deterministic
    rows = np.array([1, 2, 3])
    a = ds.x_train.load_augmented(rows, torch.Generator().manual_seed(4))
    b = ds.x_train.load_augmented(rows, torch.Generator().manual_seed(4))
    c = ds.x_train.load_augmented(rows, torch.Generator().manual_seed(5))
    assert a.shape == (3, 32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    # Worker processes decode the same bits as this process.
    pooled = load_dataset(folder, image_shape=(32, 32, 3), workers=2)
    assert np.array_equal(pooled.x_train.load_augmented(rows, torch.Generator().manual_seed(4)), a)
    assert np.array_equal(pooled.x_test[np.array([0, 5])], evald)
    # Batches of an epoch are reproducible (a resume sees the same crops).
    it = BatchIterator(ds.x_train, ds.y_train, 8, seed=1, epoch=2, augment=lambda x, g: x)
    assert torch.equal(it.batch(3)[0], it.batch(3)[0])


def test_crop_box_is_integer_and_inside_the_image() -> None:
    g = torch.Generator().manual_seed(0)
    for w, h in ((500, 375), (40, 36), (3, 300)):
        for _ in range(50):
            draws = torch.randint(0, 1 << 31, (_DRAWS,), generator=g).tolist()
            left, top, cw, ch, flip = crop_box(w, h, draws)
            assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0
            assert all(isinstance(v, int) for v in (left, top, cw, ch))


def test_folder_trains_and_evaluates_through_the_cli(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet-20", "--dataset", str(folder), "--batch-size", "8", "--max-steps", "3",
                 "--val-size", "8", "--workers", "2", "--threads", "2", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_test_accuracy"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == str(folder)
    assert main(["eval", str(out)]) == 0
    # Golden vectors of a batch-norm ResNet step on folder data: running statistics included, recomputed exactly.
    trace = tmp_path / "step.npz"
    assert main(["trace", str(out), "-o", str(trace)]) == 0
    with np.load(trace) as z:
        names = list(z.keys())
    assert "buffers.before.stem.1.running_mean" in names and "buffers.after.stem.1.running_mad" in names
    assert any(n.endswith(".xhat") for n in names)
    assert main(["trace", "--check", str(trace)]) == 0


def test_corrupt_image_is_reported_by_name(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    bad = broken / "train" / "cat" / "zz_truncated.jpg"
    bad.write_bytes((folder / "train" / "cat").glob("*.JPEG").__next__().read_bytes()[:100])
    assert main(["train", "--model", "resnet-20", "--dataset", str(broken), "--batch-size", "8", "--max-steps", "1",
                 "--val-size", "8", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")]) != 0
    assert "zz_truncated.jpg: cannot decode image" in capsys.readouterr().err
    ds = load_dataset(broken, image_shape=(32, 32, 3), workers=2)
    row = ds.x_train.files.index(str(bad))
    with pytest.raises(ValueError, match="zz_truncated.jpg"):  # also from a worker process, during training
        ds.x_train.load_augmented(np.array([row, 0]), torch.Generator().manual_seed(0))


def test_folder_without_val_or_classes_is_refused(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "only" / "train").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="class sub-folders"):
        load_dataset(tmp_path / "only")
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="val"):
        load_dataset(tmp_path / "noval")
    with pytest.raises(DataNotFoundError, match="not an image folder"):
        load_dataset(tmp_path)
