"""Test fixtures' building blocks: tiny random SD pipelines (from the package) and subject photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from dreambooth.toyworld.random_model import IMAGE_SIZE, build_random_sd as build_tiny_sd
from dreambooth.toyworld.random_model import build_random_sdxl as build_tiny_sdxl

__all__ = ["IMAGE_SIZE", "build_tiny_sd", "build_tiny_sd2", "build_tiny_sdxl", "write_subject_images"]


def build_tiny_sd2(path: Path) -> Path:
    """The tiny SD pipeline with SD 2.x's one UNet difference, linear transformer projections (its
    OpenCLIP text encoder is a CLIP text model in diffusers, so the tiny one stands in)."""
    build_tiny_sd(path)
    torch.manual_seed(0)
    config = UNet2DConditionModel.load_config(path / "unet")
    UNet2DConditionModel.from_config(config, use_linear_projection=True).save_pretrained(path / "unet")
    return path


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
