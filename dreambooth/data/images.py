"""TEMPORARY minimal ingestion (to be replaced by the full module)."""
from __future__ import annotations
import random
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from PIL import Image, ImageOps
from dreambooth.errors import DataError
EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}

@dataclass(frozen=True)
class ImageScan:
    images: tuple
    skipped: tuple
    warnings: tuple
    def summary(self) -> str:
        return f"{len(self.images)} images"
    def require(self, min_count: int = 1) -> None:
        if len(self.images) < min_count:
            raise DataError("no usable images")

def scan_images(folder: Path, role: str = "instance") -> ImageScan:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return ImageScan(tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTS)), (), ())

def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")

def prepare(image, resolution, center_crop, rng):
    scale = resolution / min(image.size)
    image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))), Image.BICUBIC)
    dx, dy = image.width - resolution, image.height - resolution
    if center_crop or rng is None:
        x, y = dx // 2, dy // 2
    else:
        x, y = rng.randint(0, dx), rng.randint(0, dy)
    return image.crop((x, y, x + resolution, y + resolution))

def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
