"""Fetch the original distribution files from public mirrors, verified by MD5, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CIFAR10_REMOTES", "DownloadError", "MNIST_REMOTES", "Remote", "fetch"]

TIMEOUT_S = 10.0  # per blocking socket operation: an offline machine fails in well under a minute


class DownloadError(OSError):
    """Every mirror of a file failed; the message lists each URL and why."""


@dataclass(frozen=True)
class Remote:
    """One distribution file: its name, its published MD5 and the mirrors that serve it (tried in order)."""

    filename: str
    md5: str
    urls: tuple[str, ...]


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "https://storage.googleapis.com/cvdf-datasets/mnist/")
MNIST_REMOTES = tuple(
    Remote(name, md5, tuple(m + name for m in _MNIST_MIRRORS))
    for name, md5 in (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ))
CIFAR10_REMOTES = (Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                          ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),)


def _download(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream ``url`` to a temporary file beside ``dest``, check its MD5, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DownloadError(f"MD5 {digest.hexdigest()} does not match the published {md5}")
        os.replace(tmp, dest)  # atomic: dest is either absent or complete and verified
    finally:
        tmp.unlink(missing_ok=True)


def fetch(remote: Remote, directory: Path, timeout: float = TIMEOUT_S) -> Path:
    """``directory / remote.filename``, downloaded from the first mirror that serves the published bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / remote.filename
    errors = []
    for url in remote.urls:
        try:
            _download(url, dest, remote.md5, timeout)
            return dest
        except (OSError, ValueError) as exc:  # URLError, timeouts and HTTP errors are OSErrors
            errors.append(f"{url}: {exc}")
    raise DownloadError(f"could not download {remote.filename}: " + "; ".join(errors))
