"""Deterministic stand-ins for encoders, scorers and feature extractors, so metric math is tested offline."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def noise_image(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255 - 0.5
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, size, size)


class PixelEncoder:
    """Embedding = centred 8x8 thumbnail: identical images give cosine 1, independent noise about 0."""

    name = "fake-pixels"
    family = "dino"

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        return F.normalize(pixels(images, 8).flatten(1), dim=-1)


class PixelMaps:
    """Two 'layers': the 8x8 and 4x4 thumbnails."""

    name = "fake-maps"

    def feature_maps(self, images: list[Image.Image]) -> list[torch.Tensor]:
        return [pixels(images, 8), pixels(images, 4)]


class RecordingScorer:
    """A PromptScorer that returns 0.5 and remembers the prompts it was asked about."""

    name = "fake-judge"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, images: list[Image.Image], prompt: str) -> float:
        self.prompts.append(prompt)
        return 0.5
