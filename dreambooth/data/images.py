"""Finding, checking and loading training images from messy folders.

Users' folders hold `.DS_Store`, caption files, HEIC, truncated downloads and 6000-px phone photos
with EXIF rotation. Every file is decoded once up front, so a bad one is skipped (with the reason)
before training starts, never twenty minutes in.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dreambooth.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
HEIF_SUFFIXES = {".heic", ".heif"}
MAX_PIXELS = 100_000_000  # larger is refused as a possible decompression bomb
MIN_SIDE = 256  # smaller photos are upscaled for SD; they are warned about
MAX_ASPECT = 3.0


def _heif_available() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


@dataclass(frozen=True)
class ImageScan:
    """What a folder holds: usable images (sorted by name), skipped files with reasons, warnings."""

    folder: Path
    images: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]
    warnings: tuple[str, ...]

    def summary(self) -> str:
        lines = [f"{self.folder}: {len(self.images)} usable image(s), {len(self.skipped)} skipped"]
        lines += [f"  skipped {p.name}: {why}" for p, why in self.skipped]
        return "\n".join(lines)

    def require(self, min_count: int = 1) -> None:
        if len(self.images) >= min_count:
            return
        reasons = "; ".join(f"{p.name}: {why}" for p, why in self.skipped[:5]) or "the folder is empty"
        raise DataError(f"{self.folder}: no usable images ({reasons}); add .png or .jpg photos of the subject")


def _problem(path: Path, max_pixels: int) -> tuple[str | None, tuple[int, int] | None]:
    """(reason to skip, None) or (None, (width, height)) after a full decode."""
    if path.stat().st_size == 0:
        return "empty file (0 bytes)", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    return (f"{image.width}x{image.height} is over {max_pixels // 1_000_000} MP "
                            "(refused as a possible decompression bomb); downscale it"), None
                image.load()  # a full decode finds truncated files
                size = ImageOps.exif_transpose(image).size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "refused as a possible decompression bomb; downscale it", None
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'})", None
    return None, size


def scan_images(folder: Path, role: str = "instance", min_side: int = MIN_SIDE,
                max_pixels: int = MAX_PIXELS) -> ImageScan:
    """Decode every candidate file in `folder` (not its sub-folders) and sort it into used or skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"--{role}_data_dir {folder}: no such folder; pass the folder that holds the {role} images")
    if not folder.is_dir():
        raise DataError(f"--{role}_data_dir {folder}: is a file; pass the folder that holds it")
    heif = _heif_available()
    images, skipped, notes, seen = [], [], [], {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        suffix = path.suffix.lower()
        if path.name.startswith(".") or path.name == "__MACOSX":
            skipped.append((path, "hidden file"))
        elif path.is_dir():
            skipped.append((path, "sub-folder (not searched)"))
        elif suffix in HEIF_SUFFIXES and not heif:
            skipped.append((path, "HEIC/HEIF: convert it to JPEG, or `pip install pillow-heif`"))
        elif suffix not in IMAGE_SUFFIXES | (HEIF_SUFFIXES if heif else set()):
            skipped.append((path, "not an image file (by its extension)"))
        else:
            reason, size = _problem(path, max_pixels)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if reason is None else None
            if reason is None and digest in seen:
                reason = f"duplicate of {seen[digest].name} (same content)"
            if reason is not None:
                skipped.append((path, reason))
                continue
            seen[digest] = path
            images.append(path)
            width, height = size
            if min(width, height) < min_side:
                notes.append(f"{path.name} is only {width}x{height}; it will be upscaled and may look soft")
            if max(width, height) / min(width, height) > MAX_ASPECT:
                notes.append(f"{path.name} is {width}x{height} (aspect > {MAX_ASPECT:g}:1); the crop keeps only a part")
    if role == "instance" and images and not 3 <= len(images) <= 20:
        notes.append(f"{folder}: {len(images)} instance image(s); DreamBooth works best with 3-5 (at most ~20)")
    return ImageScan(folder, tuple(images), tuple(skipped), tuple(notes))


def load_rgb(path: Path) -> Image.Image:
    """8-bit RGB with EXIF orientation applied; alpha composited over white; 16-bit scaled, not clipped."""
    with Image.open(path) as image:
        image.seek(0)  # animated GIF/WebP: the first frame
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float grayscale
            array = np.asarray(image, dtype=np.float64)
            if image.mode.startswith("I;16") or (image.mode == "I" and array.max() > 255):
                peak = 65535.0
            else:
                peak = 1.0 if image.mode == "F" and array.max() <= 1 else 255.0
            image = Image.fromarray(np.clip(array / peak * 255 + 0.5, 0, 255).astype(np.uint8), "L")
        if image.mode == "P":
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def prepare(image: Image.Image, resolution: int, center_crop: bool, rng: random.Random | None) -> Image.Image:
    """Resize the shorter side to `resolution` (antialiased), then crop a square: centered, or at
    a position drawn from `rng`."""
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS, reducing_gap=3.0)
    dx, dy = image.width - resolution, image.height - resolution
    if center_crop or rng is None:
        x, y = dx // 2, dy // 2
    else:
        x, y = rng.randint(0, dx), rng.randint(0, dy)
    return image.crop((x, y, x + resolution, y + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1], the SD VAE's input range."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1).contiguous()
