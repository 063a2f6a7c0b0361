"""A real data set the defaults were not chosen on: UCI optical handwritten digits as a niti ``.npz``.

scikit-learn ships a copy of the test part of the UCI "Optical Recognition of Handwritten Digits" set (Alpaydin and
Kaynak, 1998; 1,797 images of 8×8 pixels, each the count of set pixels, 0..16, in a 4×4 block of a 32×32 bitmap,
written by 13 people, 10 classes) inside its wheel, so it needs no download.  This writes it in niti's npz layout
(``x_train, y_train, x_test, y_test``; uint8 (N, 8, 8, 1), int64 labels): pixel counts times 16 (clipped at 255),
images shuffled with a fixed permutation (the copy is ordered 0, 1, ..., 9, 0, ...), the last quarter the test
split.  niti holds out the last 10 % of the training split for validation (``default_val_size``).

    pip install scikit-learn
    python benchmarks/digits_npz.py --out ../shared/data/digits.npz   # or any path; pass it as --dataset
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

#: Seed of the fixed shuffle (numpy's PCG64); changing it changes the splits and every result made with them.
SHUFFLE_SEED = 0
TEST_FRACTION_DIVISOR = 4


def digits_arrays() -> dict[str, np.ndarray]:
    """The four npz arrays from scikit-learn's bundled copy (no network)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("benchmarks/digits_npz.py needs scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    images = np.minimum(np.asarray(d.images, dtype=np.int64) * 16, 255).astype(np.uint8)[..., None]
    labels = np.asarray(d.target, dtype=np.int64)
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(labels))
    images, labels = images[order], labels[order]
    cut = len(labels) - len(labels) // TEST_FRACTION_DIVISOR
    return {"x_train": images[:cut], "y_train": labels[:cut], "x_test": images[cut:], "y_test": labels[cut:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="digits.npz", help="where to write the npz")
    a = p.parse_args()
    arrays = digits_arrays()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    digest = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest()
    print(f"{out}: {len(arrays['y_train'])} training and {len(arrays['y_test'])} test images of "
          f"{arrays['x_train'].shape[1:]}; sha256 of the arrays {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
