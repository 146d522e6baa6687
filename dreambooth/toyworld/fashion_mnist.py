"""Fashion-MNIST (Xiao et al., 2017; MIT) from Debian's `dataset-fashion-mnist` package.

The train split feeds pretraining; the test split is held out, so personalization subjects are
items the base model has never seen.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from dreambooth.errors import DataError

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NOUNS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
_FILES = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, header_ints: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} not found; install it with `apt-get install dataset-fashion-mnist`")
    data = gzip.open(path).read()
    return np.frombuffer(data, dtype=np.uint8, offset=4 * header_ints)


@lru_cache(maxsize=2)
def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of "train" (60k) or "test" (10k)."""
    prefix = ROOT / _FILES[split]
    images = _read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"), 4).reshape(-1, 28, 28)
    labels = _read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"), 2)
    return images, labels
