"""Test fixtures' building blocks: a tiny random SD pipeline (from the package) and subject photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth.toyworld.random_model import IMAGE_SIZE, build_random_sd as build_tiny_sd

__all__ = ["IMAGE_SIZE", "build_tiny_sd", "write_subject_images"]


def write_subject_images(folder: Path, n: int = 4, size: int = 48, seed: int = 0) -> Path:
    """A 'subject': n photos of one two-tone square at varied positions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((size, size, 3), 200, np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        img[y : y + size // 2, x : x + size // 4] = (220, 30, 30)
        img[y : y + size // 2, x + size // 4 : x + size // 2] = (30, 30, 220)
        Image.fromarray(img).save(folder / f"photo_{i}.png")
    return folder
