"""niti.data: original-format readers, npz, load_dataset/cache/download, validation split, augmentation, batches."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import pickletools
import struct
import tarfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from niti.audit import integer_only
from niti.data import (BatchIterator, DataNotFoundError, Dataset, DownloadError, channel_means, channel_scales,
                       crop_flip, load_dataset, random_crop_flip, read_cifar10, read_idx, read_mnist, read_npz,
                       split_validation)
from niti.data import download as download_mod
from niti.data import load as load_mod

RNG = np.random.default_rng(1234)


# --- writers of the original formats ---------------------------------------------------------------

def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_mnist(directory: Path, x_train, y_train, x_test, y_test, *, gz: bool = True) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for role, name, arr, magic in (("x_train", "train-images-idx3-ubyte", x_train, 0x803),
                                   ("y_train", "train-labels-idx1-ubyte", y_train, 0x801),
                                   ("x_test", "t10k-images-idx3-ubyte", x_test, 0x803),
                                   ("y_test", "t10k-labels-idx1-ubyte", y_test, 0x801)):
        data = _idx_bytes(arr, magic)
        path = directory / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
        out[role] = path
    return out


def _small_mnist(n_train: int = 7, n_test: int = 3):
    return (RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n_train, dtype=np.uint8),
            RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n_test, dtype=np.uint8))


def _py2_pickle(obj: object) -> bytes:
    """``obj`` as Python 2's cPickle (protocol 2) writes it: every string a BINSTRING, as in the official files.

    Python 3 writes bytes and str with opcodes of the same layout, so swapping the
    opcode bytes of a protocol-3 stream gives the Python 2 stream.
    """
    blob = bytearray(pickle.dumps(obj, protocol=3))
    swap = {"SHORT_BINBYTES": b"U", "BINBYTES": b"T", "BINUNICODE": b"T"}  # -> SHORT_BINSTRING / BINSTRING
    for op, _, pos in pickletools.genops(bytes(blob)):
        if op.name == "PROTO":
            blob[pos + 1] = 2
        elif op.name in swap:
            blob[pos:pos + 1] = swap[op.name]
        else:
            assert op.proto <= 2, op.name
    return bytes(blob)


def _cifar_batch(x_nhwc: np.ndarray, labels, *, legacy_numpy_name: bool = True) -> bytes:
    """A batch as the official files hold it: dict of bytes keys, data rows = R plane, G plane, B plane."""
    data = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), 3072))
    blob = _py2_pickle({b"batch_label": b"test batch", b"labels": [int(v) for v in labels], b"data": data,
                        b"filenames": [b"f%d.png" % i for i in range(len(labels))]})
    if legacy_numpy_name:  # what numpy < 2 (and so the official files) name the reconstructor
        assert b"numpy._core.multiarray\n" in blob
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    return blob


def _small_cifar(per_batch: int = 3):
    xs = [RNG.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8) for _ in range(6)]
    ys = [RNG.integers(0, 10, per_batch) for _ in range(6)]
    return xs, ys


def _write_cifar_tar(path: Path, xs, ys, *, skip: str | None = None, legacy: bool = True) -> None:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tar:
        for name, x, y in zip(names, xs, ys):
            if name == skip:
                continue
            blob = _cifar_batch(x, y, legacy_numpy_name=legacy)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $NITI_DATA and a private cache, so tests never see (or fill) the user's data."""
    monkeypatch.delenv("NITI_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "niti"


# --- MNIST IDX --------------------------------------------------------------------------------------

def test_read_mnist_gz_and_uncompressed(tmp_path):
    arrays = _small_mnist()
    for gz in (True, False):
        _write_mnist(tmp_path / str(gz), *arrays, gz=gz)
        ds = read_mnist(tmp_path / str(gz))
        assert ds.x_train.shape == (7, 28, 28, 1) and ds.x_test.shape == (3, 28, 28, 1)
        assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
        np.testing.assert_array_equal(ds.x_train[..., 0], arrays[0])
        np.testing.assert_array_equal(ds.y_train, arrays[1])
        np.testing.assert_array_equal(ds.x_test[..., 0], arrays[2])
        np.testing.assert_array_equal(ds.y_test, arrays[3])
        assert ds.name == "mnist" and ds.num_classes == 10


def test_idx_rejects_wrong_magic(tmp_path):
    paths = _write_mnist(tmp_path, *_small_mnist())
    paths["y_train"].write_bytes(gzip.compress(_idx_bytes(np.zeros((7, 28, 28), np.uint8), 0x803)))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: magic number 0x00000803, expected 0x00000801"):
        read_mnist(tmp_path)


def test_idx_rejects_truncated_and_trailing(tmp_path):
    raw = _idx_bytes(RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8), 0x803)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(raw[:-1])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: .*truncated"):
        read_idx(path, 0x803)
    path.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(path, 0x803)
    path.write_bytes(raw[:10])
    with pytest.raises(ValueError, match="too short"):
        read_idx(path, 0x803)


def test_idx_rejects_corrupt_gzip(tmp_path):
    paths = _write_mnist(tmp_path, *_small_mnist())
    blob = paths["x_test"].read_bytes()
    paths["x_test"].write_bytes(blob[: len(blob) // 2])  # cut mid-stream
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: corrupt gzip"):
        read_mnist(tmp_path)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF  # flipped bits: a CRC or stream error
    paths["x_test"].write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_mnist(tmp_path)


def test_mnist_rejects_label_out_of_range_and_count_mismatch(tmp_path):
    x, y, xt, yt = _small_mnist()
    y = y.copy()
    y[2] = 10
    _write_mnist(tmp_path / "a", x, y, xt, yt)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: label 10 out of range"):
        read_mnist(tmp_path / "a")
    x, y, xt, yt = _small_mnist()
    _write_mnist(tmp_path / "b", x, y[:-1], xt, yt)
    with pytest.raises(ValueError, match="7 images but .* 6 labels"):
        read_mnist(tmp_path / "b")
    with pytest.raises(ValueError, match="MNIST IDX files missing"):
        read_mnist(tmp_path / "nothing-here")


def test_real_mnist_round_trips_through_idx(tmp_path, mnist):
    """Real MNIST (the test split and 10,000 training images) in the original IDX layout reads back identical."""
    x, y = mnist["x_train"][:10000], mnist["y_train"][:10000]
    _write_mnist(tmp_path, x, y, mnist["x_test"], mnist["y_test"], gz=False)
    ds = read_mnist(tmp_path)
    np.testing.assert_array_equal(ds.x_train[..., 0], x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.x_test[..., 0], mnist["x_test"])
    np.testing.assert_array_equal(ds.y_test, mnist["y_test"])


# --- CIFAR-10 python batches ------------------------------------------------------------------------

def test_read_cifar_tarball_and_folder(tmp_path):
    xs, ys = _small_cifar()
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    _write_cifar_tar(tar_path, xs, ys)
    ds = read_cifar10(tar_path)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.x_train, np.concatenate(xs[:5]))
    np.testing.assert_array_equal(ds.y_train, np.concatenate(ys[:5]))
    np.testing.assert_array_equal(ds.x_test, xs[5])
    np.testing.assert_array_equal(ds.y_test, ys[5])
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = read_cifar10(tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(folder.x_train, ds.x_train)
    np.testing.assert_array_equal(folder.y_test, ds.y_test)
    # Pickles written by numpy >= 2 (numpy._core) read the same.
    for name, x, y in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], xs, ys):
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(_cifar_batch(x, y, legacy_numpy_name=False))
    np.testing.assert_array_equal(read_cifar10(tmp_path / "cifar-10-batches-py").x_train, ds.x_train)


def test_cifar_rows_are_rgb_planes(tmp_path):
    """Independent of the writer's transpose: plane k of a row is channel k, row-major within the plane."""
    data = np.zeros((1, 3072), np.uint8)
    data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 1, 2, 3
    data[0, 5 * 32 + 7] = 200          # R at row 5, column 7
    data[0, 2048 + 31 * 32 + 0] = 77   # B at row 31, column 0
    blob = _py2_pickle({b"data": data, b"labels": [4]})
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(blob)
    ds = read_cifar10(folder)
    img = ds.x_test[0]
    assert img[5, 7, 0] == 200 and img[31, 0, 2] == 77
    assert (img[0, 0] == [1, 2, 3]).all() and (img[..., 1] == 2).all()


def test_cifar_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = _small_cifar()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, x, y in zip(names, xs, ys):
        (folder / name).write_bytes(_cifar_batch(x, y))
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=3))
    with pytest.raises(ValueError, match=r"data_batch_3: refusing to unpickle global builtins\.print"):
        read_cifar10(folder)


def test_cifar_rejects_broken_archives(tmp_path):
    xs, ys = _small_cifar()
    good = tmp_path / "good.tar.gz"
    _write_cifar_tar(good, xs, ys)
    blob = good.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz: corrupt or truncated archive"):
        read_cifar10(cut)
    missing = tmp_path / "missing.tar.gz"
    _write_cifar_tar(missing, xs, ys, skip="data_batch_4")
    with pytest.raises(ValueError, match="no member cifar-10-batches-py/data_batch_4"):
        read_cifar10(missing)
    ys_bad = [y.copy() for y in ys]
    ys_bad[5][0] = 10
    bad_label = tmp_path / "bad_label.tar.gz"
    _write_cifar_tar(bad_label, xs, ys_bad)
    with pytest.raises(ValueError, match=r"test_batch: labels span \[\d+, 10\], outside \[0, 10\)"):
        read_cifar10(bad_label)


# --- npz --------------------------------------------------------------------------------------------

def _npz_arrays(**over):
    arrays = dict(x_train=RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8),
                  y_train=np.array([0, 1, 4, 2, 1, 0], np.uint8),
                  x_test=RNG.integers(0, 256, (2, 5, 4), dtype=np.uint8), y_test=np.array([3, 3], np.int32))
    arrays.update(over)
    return {k: v for k, v in arrays.items() if v is not None}


def test_read_npz_grayscale_and_color(tmp_path):
    arrays = _npz_arrays()
    np.savez(tmp_path / "toy.npz", **arrays)
    ds = read_npz(tmp_path / "toy.npz")
    assert ds.name == "toy" and ds.num_classes == 5
    assert ds.x_train.shape == (6, 5, 4, 1) and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])
    color = _npz_arrays(x_train=np.zeros((6, 5, 4, 3), np.uint8), x_test=np.zeros((2, 5, 4, 3), np.uint8))
    np.savez_compressed(tmp_path / "color.npz", **color)
    assert read_npz(tmp_path / "color.npz").image_shape == (5, 4, 3)
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0, 0, 0] = 1


@pytest.mark.parametrize("override, message", [
    (dict(y_test=None), r"missing arrays y_test"),
    (dict(y_train=np.array([0, 1, 2], np.int64)), r"x_train has 6 images but y_train has 3 labels"),
    (dict(y_train=np.array([0, 1, -1, 2, 1, 0], np.int64)), r"y_train has a negative label -1"),
    (dict(y_test=np.array([0.0, 1.0])), r"y_test must be a 1-D integer array"),
    (dict(x_test=np.zeros((2, 5, 4), np.int16)), r"x_test must be uint8"),
    (dict(x_test=np.zeros((2, 4, 5), np.uint8)), r"train images are \(5, 4, 1\) but test images are \(4, 5, 1\)"),
])
def test_read_npz_rejects_bad_contents(tmp_path, override, message):
    np.savez(tmp_path / "bad.npz", **_npz_arrays(**override))
    with pytest.raises(ValueError, match=r"bad\.npz: " + message):
        read_npz(tmp_path / "bad.npz")


def test_read_npz_rejects_corrupt_zip(tmp_path):
    np.savez_compressed(tmp_path / "good.npz", **_npz_arrays())
    blob = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz"):
        read_npz(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: "):
        read_npz(tmp_path / "junk.npz")


# --- load_dataset: search order, errors, downloads --------------------------------------------------

def test_load_prefers_npz_then_originals(isolated, tmp_path):
    data = tmp_path / "data"
    x, y, xt, yt = _small_mnist()
    _write_mnist(data, x, y, xt, yt)
    from_idx = load_dataset("mnist", data, download=False)
    np.testing.assert_array_equal(from_idx.x_train[..., 0], x)
    np.savez(data / "mnist.npz", x_train=x[:2], y_train=y[:2], x_test=xt, y_test=yt)
    assert len(load_dataset("mnist", data, download=False).x_train) == 2  # the npz wins
    xs, ys = _small_cifar()
    _write_cifar_tar(data / "cifar-10-python.tar.gz", xs, ys)
    np.testing.assert_array_equal(load_dataset("cifar10", data, download=False).x_test, xs[5])


def test_load_uses_env_then_cache(isolated, tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    _write_mnist(env_dir, *_small_mnist(n_train=4))
    monkeypatch.setenv("NITI_DATA", str(env_dir))
    assert len(load_dataset("mnist", download=False).x_train) == 4
    _write_mnist(isolated, *_small_mnist(n_train=5))  # the cache is searched after the data folder
    assert len(load_dataset("mnist", tmp_path / "empty", download=False).x_train) == 5


def test_load_checks_known_shapes_and_names(isolated, tmp_path):
    np.savez(tmp_path / "cifar10.npz", **_npz_arrays())
    with pytest.raises(ValueError, match=r"cifar10 images are \(5, 4, 1\), expected \(32, 32, 3\)"):
        load_dataset("cifar10", tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet", tmp_path)
    assert load_dataset(tmp_path / "cifar10.npz").num_classes == 5  # any npz by path
    with pytest.raises(DataNotFoundError, match="no such .npz"):
        load_dataset(tmp_path / "absent.npz")


def test_no_data_message_says_where_and_how(isolated, tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10", where, download=False)
    msg = str(info.value)
    for part in (str(where), "(does not exist)", str(isolated), "cifar10.npz", "cifar-10-python.tar.gz",
                 "cifar-10-batches-py", "--data-dir", "$NITI_DATA"):
        assert part in msg, (part, msg)
    assert isinstance(info.value, ValueError)


def _mirror(monkeypatch, name: str, remotes):
    known = load_mod.DATASETS[name]
    monkeypatch.setitem(load_mod.DATASETS, name, dataclasses.replace(known, remotes=tuple(remotes)))


def test_unreachable_mirror_fails_fast_and_cleanly(isolated, tmp_path, monkeypatch):
    # Port 9 on the loopback: refused at once, like an offline machine.
    _mirror(monkeypatch, "mnist", [dataclasses.replace(r, urls=("http://127.0.0.1:9/" + r.filename,))
                                   for r in download_mod.MNIST_REMOTES])
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path / "nowhere")
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "failed" in msg and "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg
    assert not isolated.exists() or not any(isolated.iterdir())  # no partial files left behind


def test_download_verifies_md5_and_lands_atomically(isolated, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    x, y, xt, yt = _small_mnist()
    paths = _write_mnist(mirror, x, y, xt, yt)
    remotes = [download_mod.Remote(p.name, hashlib.md5(p.read_bytes()).hexdigest(), (p.as_uri(),))
               for p in paths.values()]
    # A wrong checksum: nothing lands in the cache, not even a partial file.
    bad = dataclasses.replace(remotes[0], md5="0" * 32)
    with pytest.raises(DownloadError, match="does not match the published 0{32}"):
        download_mod.fetch(bad, isolated)
    assert list(isolated.iterdir()) == []
    _mirror(monkeypatch, "mnist", remotes)
    ds = load_dataset("mnist", tmp_path / "nowhere")
    np.testing.assert_array_equal(ds.x_test[..., 0], xt)
    assert sorted(p.name for p in isolated.iterdir()) == sorted(p.name for p in paths.values())
    # Second load: found in the cache, no download (the mirror is gone).
    for p in paths.values():
        p.unlink()
    np.testing.assert_array_equal(load_dataset("mnist", tmp_path / "nowhere").y_train, y)


def test_published_checksums():
    md5 = {r.filename: r.md5 for r in download_mod.MNIST_REMOTES + download_mod.CIFAR10_REMOTES}
    assert md5 == {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                   "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                   "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                   "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
                   "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}


# --- real data --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_cifar(shared_data_dir) -> Dataset:
    return load_dataset("cifar10", shared_data_dir, download=False)


def test_real_data_loads(shared_data_dir, mnist, real_cifar):
    ds = load_dataset("mnist", shared_data_dir, download=False)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.x_train.shape == (60000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.x_test.shape == (10000, 28, 28, 1)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ds, key).reshape(mnist[key].shape), mnist[key])
    c = real_cifar
    assert c.name == "cifar10" and c.num_classes == 10
    assert c.x_train.shape == (50000, 32, 32, 3) and c.x_test.shape == (10000, 32, 32, 3)
    assert c.x_train.dtype == np.uint8 and c.y_train.dtype == np.int64 and c.y_test.dtype == np.int64
    # Facts documented in ../shared/data/README.md: the first labels, 5000 / 1000 images per class.
    assert c.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(c.y_train).tolist() == [5000] * 10 and np.bincount(c.y_test).tolist() == [1000] * 10


# --- validation split and integer means -------------------------------------------------------------

def _toy_dataset(n: int = 10) -> Dataset:
    x = np.arange(n * 2 * 2 * 1, dtype=np.uint8).reshape(n, 2, 2, 1)
    return Dataset(x, np.arange(n) % 3, x[:2], np.array([0, 1]), name="toy", num_classes=3)


def test_split_validation_takes_the_last_images():
    ds = _toy_dataset()
    tx, ty, vx, vy = split_validation(ds, 3)
    np.testing.assert_array_equal(vx, ds.x_train[7:])
    np.testing.assert_array_equal(ty, ds.y_train[:7])
    tx, ty, vx, vy = split_validation(ds, 0)
    assert len(tx) == 10 and vx.shape == (0, 2, 2, 1) and vy.shape == (0,)
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="n_val must be in"):
            split_validation(ds, bad)


def test_dataset_validates():
    x = np.zeros((2, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match=r"train labels span \[0, 3\], outside \[0, 3\)"):
        Dataset(x, np.array([0, 3]), x, np.array([0, 1]), name="t", num_classes=3)
    with pytest.raises(ValueError, match="y_test must be an int64"):
        Dataset(x, np.array([0, 1]), x, np.array([0, 1], np.uint8), name="t", num_classes=3)


def test_channel_means_round_half_up():
    x = np.array([0, 1, 1, 2, 3, 4, 254, 255], np.uint8).reshape(2, 1, 1, 4).repeat(1, axis=0)
    # channel means: (0+3)/2 = 1.5 -> 2, (1+4)/2 = 2.5 -> 3, (1+254)/2 = 127.5 -> 128, (2+255)/2 = 128.5 -> 129
    assert channel_means(x) == (2, 3, 128, 129)
    y = RNG.integers(0, 256, (5, 3, 7, 3), dtype=np.uint8)
    ref = tuple(int(Fraction(int(y[..., c].astype(np.int64).sum()), 5 * 3 * 7) + Fraction(1, 2)) for c in range(3))
    assert channel_means(y) == ref == channel_means(torch.from_numpy(y))
    with pytest.raises(ValueError, match="uint8"):
        channel_means(y.astype(np.int16))


def test_channel_scales_are_rounded_inverse_std():
    y = RNG.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    mean = channel_means(y)
    got = channel_scales(y, mean)
    for c in range(3):
        rms = float(np.sqrt(((y[..., c].astype(np.float64) - mean[c]) ** 2).mean()))  # test-side float reference
        assert abs(got[c] - 4096 / rms) <= 0.5 + 1e-9
    assert channel_scales(torch.from_numpy(y), mean) == got
    flat = np.full((2, 3, 3, 1), 7, np.uint8)
    assert channel_scales(flat, (7,)) == (4096,)  # std floored at one pixel unit: the identity scale
    with pytest.raises(ValueError, match="uint8"):
        channel_scales(y.astype(np.int16), mean)


def test_default_scales_match_the_real_training_splits(real_cifar):
    from niti.models import DEFAULT_MEANS, DEFAULT_SCALES

    x = split_validation(real_cifar)[0]
    assert channel_means(x) == DEFAULT_MEANS["cifar10"]
    assert channel_scales(x, DEFAULT_MEANS["cifar10"]) == DEFAULT_SCALES["cifar10"]


def test_channel_means_real_cifar(real_cifar):
    x = real_cifar.x_train
    float_ref = tuple(int(np.floor(x[..., c].mean(dtype=np.float64) + 0.5)) for c in range(3))  # far from ties
    assert channel_means(x) == float_ref


# --- augmentation -----------------------------------------------------------------------------------

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_flip_shape_dtype_determinism():
    x = torch.from_numpy(RNG.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8))
    a = random_crop_flip(x, _gen(7))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, random_crop_flip(x, _gen(7)))
    assert not torch.equal(a, random_crop_flip(x, _gen(8)))
    assert not torch.equal(a, x)
    assert (a == 0).any()  # zero padding shows up (pixels of x are >= 1)
    # Documented draw order: row offsets, column offsets, flips.
    g = _gen(7)
    top, left = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flip = torch.randint(0, 2, (64,), generator=g).bool()
    assert torch.equal(a, crop_flip(x, top, left, flip, 4))


def test_flip_is_a_real_mirror_and_identity_without_it():
    x = torch.from_numpy(RNG.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8))
    p = torch.full((5,), 4)
    assert torch.equal(crop_flip(x, p, p, torch.ones(5, dtype=torch.bool), 4), x.flip(2))
    assert torch.equal(crop_flip(x, p, p, torch.zeros(5, dtype=torch.bool), 4), x)


def test_crop_matches_reference_slices():
    x = RNG.integers(0, 256, (6, 8, 9, 2), dtype=np.uint8)
    top, left = np.array([0, 8, 3, 4, 1, 7]), np.array([8, 0, 5, 4, 6, 2])
    flip = np.array([0, 1, 0, 1, 1, 0], bool)
    out = crop_flip(torch.from_numpy(x), torch.from_numpy(top), torch.from_numpy(left), torch.from_numpy(flip), 4)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(6):
        ref = padded[i, top[i]:top[i] + 8, left[i]:left[i] + 9]
        np.testing.assert_array_equal(out[i].numpy(), ref[:, ::-1] if flip[i] else ref)
    with pytest.raises(ValueError, match=r"top offsets must be 6 integers in \[0, 8\]"):
        crop_flip(torch.from_numpy(x), torch.from_numpy(top + 1), torch.from_numpy(left), torch.from_numpy(flip), 4)


def test_augmentation_is_integer_only():
    x = torch.from_numpy(RNG.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    with integer_only() as audit:
        random_crop_flip(x, _gen(0))
    assert audit.ops > 0
    with pytest.raises(ValueError, match="uint8"):
        random_crop_flip(x.float(), _gen(0))


# --- BatchIterator ----------------------------------------------------------------------------------

def _toy_xy(n: int = 37):
    return RNG.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n)


def _collect(it):
    return [(x.clone(), y.clone()) for x, y in it]


def test_iterator_covers_epoch_in_seeded_order():
    x, y = _toy_xy()
    it = BatchIterator(x, y, 8, seed=3, epoch=1)
    batches = _collect(it)
    assert len(it) == it.batches_per_epoch == len(batches) == 5 and len(batches[-1][1]) == 5
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(37)) and seen.tolist() != list(range(37))
    for bx, by in batches:
        assert bx.dtype == torch.uint8 and by.dtype == torch.int64 and bx.shape[1:] == (8, 8, 3)
        np.testing.assert_array_equal(bx.numpy(), x[by.numpy()])
    again = _collect(BatchIterator(x, y, 8, seed=3, epoch=1))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = torch.cat([b[1] for b in BatchIterator(x, y, 8, seed=3, epoch=2)])
    assert not torch.equal(seen, other)
    dropped = BatchIterator(x, y, 8, seed=3, epoch=1, drop_last=True)
    assert len(dropped) == 4 and len(_collect(dropped)) == 4
    plain = torch.cat([b[1] for b in BatchIterator(x, y, 8, shuffle=False)])
    assert plain.tolist() == list(range(37))


def test_iterator_resumes_mid_epoch_with_augmentation():
    x, y = _toy_xy()
    full = _collect(BatchIterator(x, y, 8, seed=5, epoch=4, augment=random_crop_flip))
    resumed = BatchIterator(x, y, 8, seed=5, epoch=4, augment=random_crop_flip, start_batch=2)
    assert len(resumed) == 3
    tail = _collect(resumed)
    assert len(tail) == 3
    for (ax, ay), (bx, by) in zip(full[2:], tail):
        assert torch.equal(ax, bx) and torch.equal(ay, by)
    assert not torch.equal(full[0][0], torch.from_numpy(x[full[0][1].numpy()]))  # augmentation did run
    with pytest.raises(ValueError, match="start_batch"):
        BatchIterator(x, y, 8, start_batch=6)


def test_prefetch_gives_identical_batches_and_stops_cleanly():
    x, y = _toy_xy()
    kw = dict(seed=1, epoch=0, augment=random_crop_flip)
    plain = _collect(BatchIterator(x, y, 4, **kw))
    fetched = _collect(BatchIterator(x, y, 4, prefetch=True, **kw))
    assert len(plain) == len(fetched) == 10
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, fetched))
    for i, _ in enumerate(BatchIterator(x, y, 4, prefetch=True, **kw)):
        if i == 1:
            break  # the worker thread must be released, not left blocked on the queue

    def broken(images, generator):
        raise RuntimeError("augment failed")

    with pytest.raises(RuntimeError, match="augment failed"):
        _collect(BatchIterator(x, y, 4, prefetch=True, augment=broken))


# --- size caps (decompression bombs) ---------------------------------------------------------------

def test_idx_refuses_a_decompressed_size_above_the_cap(tmp_path, monkeypatch, mnist):
    from niti.data import idx as idx_mod

    paths = _write_mnist(tmp_path, mnist["x_train"][:200], mnist["y_train"][:200], mnist["x_test"][:50],
                         mnist["y_test"][:50])
    compressed = paths["x_train"].stat().st_size
    monkeypatch.setattr(idx_mod, "MAX_IDX_BYTES", compressed + 16)  # the .gz fits, its content (157 kB) does not
    with pytest.raises(ValueError, match="decompressed size exceeds the .* byte cap"):
        read_mnist(tmp_path)
    monkeypatch.setattr(idx_mod, "MAX_IDX_BYTES", 100)
    with pytest.raises(ValueError, match="file size .* exceeds"):
        read_mnist(tmp_path)


def test_cifar_refuses_a_batch_above_the_cap(tmp_path, monkeypatch, real_cifar):
    from niti.data import cifar as cifar_mod

    xs = [real_cifar.x_train[i * 20:(i + 1) * 20] for i in range(5)] + [real_cifar.x_test[:20]]
    ys = [real_cifar.y_train[i * 20:(i + 1) * 20] for i in range(5)] + [real_cifar.y_test[:20]]
    path = tmp_path / "cifar-10-python.tar.gz"
    _write_cifar_tar(path, xs, ys)
    assert len(read_cifar10(path).x_train) == 100
    monkeypatch.setattr(cifar_mod, "MAX_BATCH_BYTES", 20 * 3072)  # a 20-image batch pickles to a little more
    with pytest.raises(ValueError, match="data_batch_1: .* exceeds the 61440 byte cap"):
        read_cifar10(path)


def test_npz_refuses_a_member_above_the_cap(tmp_path, monkeypatch, mnist):
    from niti.data import npz as npz_mod

    path = tmp_path / "small.npz"
    np.savez_compressed(path, x_train=mnist["x_train"][:100], y_train=mnist["y_train"][:100],
                        x_test=mnist["x_test"][:10], y_test=mnist["y_test"][:10])
    assert len(read_npz(path).x_train) == 100
    monkeypatch.setattr(npz_mod, "MAX_NPZ_MEMBER_BYTES", 50_000)
    with pytest.raises(ValueError, match=r"member x_train.npy holds 78\d\d\d bytes, above the 50000 byte cap"):
        read_npz(path)


def test_npz_refuses_a_header_declaring_a_huge_array(tmp_path):
    """A tiny member whose .npy header claims 10**12 bytes is refused before numpy allocates them."""
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 1000, 1000)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", header.getvalue())
    with pytest.raises(ValueError, match="member x_train.npy holds 1000000000000 bytes"):
        read_npz(path)
