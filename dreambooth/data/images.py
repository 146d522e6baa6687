"""Finding, checking and loading training images from messy folders.

Users' folders hold `.DS_Store`, caption files, HEIC, truncated downloads and 6000-px phone photos
with EXIF rotation. Every file is decoded and converted once up front, through the same code that
training uses, so a bad one is skipped (with the reason) before training starts, never twenty
minutes in.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from dreambooth.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                  # Pillow before 11.2 has no AVIF, and `features.check` warns about a name it does not know
                  *([".avif"] if "avif" in features.modules and features.check_module("avif") else [])}
HEIF_SUFFIXES = {".heic", ".heif"}
# photos in formats not decoded here: skipped with a warning, as a photo left out is (other files silently)
UNREAD_PHOTO_SUFFIXES = {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2",
                         ".raf", ".pef", ".srw", ".raw", ".3fr", ".iiq", ".psd", ".psb", ".jxl", ".svg"}
MAX_PIXELS = 100_000_000  # larger is refused as a possible decompression bomb
MIN_SIDE = 256  # a shorter side below this is upscaled a lot for SD, so it is warned about
MAX_ASPECT = 3.0  # beyond 3:1 a square crop keeps under a third of the photo
GOOD_INSTANCE_COUNT = (3, 20)  # the DreamBooth paper uses 3-5; many more stops being "few-shot"
NOT_PHOTOS = ("hidden or system file", "not an image file (by its extension)")  # reasons that skip no photo


@functools.cache
def _heif_available() -> bool:
    """Whether pillow-heif is installed; if so it is registered so Image.open reads HEIC/HEIF."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


@dataclass(frozen=True)
class ImageScan:
    """What a folder holds: usable images (sorted by name), skipped files with reasons, warnings."""

    images: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]
    warnings: tuple[str, ...]
    folder: Path
    role: str = "instance"
    digests: tuple[str, ...] = ()  # sha256 of each usable image's file, in the order of `images`

    def summary(self) -> str:
        """A few lines for the console: counts, then each skipped file that is no photo (a skipped photo is
        a warning, reported apart)."""
        lines = [f"{self.folder}: {len(self.images)} usable {self.role} image(s), {len(self.skipped)} skipped"]
        lines += [f"  skipped {path.name}: {why}" for path, why in self.skipped if why in NOT_PHOTOS]
        return "\n".join(lines)

    def require(self, min_count: int = 1) -> None:
        """Raise DataError unless at least `min_count` images are usable, saying what was skipped."""
        if len(self.images) >= min_count:
            return
        have = "no usable images" if not self.images else f"only {len(self.images)} usable image(s), need {min_count}"
        shown = "; ".join(f"{path.name}: {why}" for path, why in self.skipped[:3])
        more = "; …" if len(self.skipped) > 3 else ""
        if self.skipped:
            have += f" ({len(self.skipped)} skipped: {shown}{more})"
        elif not self.images:
            have += " (the folder is empty)"
        what = "the subject" if self.role == "instance" else f"the {self.role}"
        raise DataError(f"{self.folder}: {have}; add .png/.jpg photos of {what}")


def _open(source: Path | io.BytesIO) -> Image.Image:
    """Image.open, with HEIC/HEIF readable when pillow-heif is installed."""
    _heif_available()
    return Image.open(source)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit sRGB: EXIF orientation applied, an embedded color profile converted, alpha over white, 16-bit
    and float scaled (not clipped)."""
    image.seek(0)  # animated GIF/WebP: the first frame
    image = ImageOps.exif_transpose(image)  # phone photos store "rotate on display" in EXIF
    image = _to_srgb(image)
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float grayscale
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and array.max() > 255):
            peak = 65535.0
        else:
            peak = 1.0 if image.mode == "F" and array.max() <= 1 else 255.0
        clear = image.info.get("transparency")  # the one gray value a PNG marks transparent, at full depth
        image = Image.fromarray(np.clip(array / peak * 255 + 0.5, 0, 255).astype(np.uint8), "L")
        if isinstance(clear, int):
            image.putalpha(Image.fromarray(np.where(array == clear, 0, 255).astype(np.uint8), "L"))
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        # A plain convert("RGB") would show transparent pixels as their (often black) hidden color.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(image: Image.Image) -> Image.Image:
    """Color pixels in the space their embedded profile names (a phone's Display P3, a print CMYK),
    converted to the sRGB that models are trained on; read as they are, wide-gamut photos come out
    desaturated. Transparency is kept (as an alpha channel). Without a profile, or with one that cannot
    be read or does not fit the pixels, they are taken as sRGB."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "P", "PA", "LA"):
        return image
    if image.mode != "CMYK" and (image.mode != "RGB" or "transparency" in image.info):
        image = image.convert("RGBA")  # a palette's or a PNG's transparent color, as alpha
    try:
        return ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb(),
                                         outputMode="RGBA" if image.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image


def load_rgb(path: Path) -> Image.Image:
    """The image at `path` as 8-bit RGB, upright and over white, ready for `prepare`."""
    with warnings.catch_warnings():
        # the scan refused what is over our own limit; Pillow's lower one would only alarm
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(path) as image:
            return to_rgb(image)


def _problem(data: bytes, max_pixels: int) -> tuple[str | None, tuple[int, int]]:
    """(reason to skip, (0, 0)) or (None, upright (width, height)) after a full decode."""
    if not data:
        return "empty file (0 bytes)", (0, 0)
    try:
        with warnings.catch_warnings():
            # PIL warns above its own ~89 MP limit; `max_pixels` below is the limit we enforce.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    return (f"{image.width}x{image.height} is over {max_pixels / 1e6:g} MP (refused as a "
                            "possible decompression bomb); downscale it"), (0, 0)
                return None, to_rgb(image).size  # the full decode finds truncated files
    except Image.DecompressionBombError:
        return "refused as a possible decompression bomb (too many pixels); downscale it", (0, 0)
    except UnidentifiedImageError:
        return "not an image (the content is no known image format)", (0, 0)
    except Exception as exc:  # Pillow's decoders raise many exception types on malformed input
        detail = str(exc).splitlines()[0] if str(exc) else "corrupt data"
        return f"cannot be decoded ({type(exc).__name__}: {detail}); re-export or re-download it", (0, 0)


def _skip_reason(path: Path, heif: bool) -> str | None:
    """Why `path` is not even a candidate (by name and type), or None if it should be decoded."""
    suffix = path.suffix.lower()
    if path.name.startswith(".") or path.name == "__MACOSX":
        return NOT_PHOTOS[0]
    if path.is_dir():
        return "sub-folder (not searched; move its images up to use them)"
    if suffix in HEIF_SUFFIXES and not heif:
        return "HEIC/HEIF: convert it to JPEG, or `pip install pillow-heif`"
    if suffix in UNREAD_PHOTO_SUFFIXES:
        return f"{suffix[1:].upper()} (camera RAW, Photoshop, JPEG XL or SVG) is not read: export it to JPEG or PNG"
    if suffix not in IMAGE_SUFFIXES | (HEIF_SUFFIXES if heif else set()):
        return NOT_PHOTOS[1]
    return None


def _size_warnings(name: str, width: int, height: int, min_side: int) -> list[str]:
    notes = []
    if min(width, height) < min_side:
        notes.append(f"{name} is only {width}x{height}; it will be upscaled and may look soft")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        notes.append(f"{name} is {width}x{height} (aspect > {MAX_ASPECT:g}:1); the square crop keeps only a part")
    return notes


def scan_images(folder: Path, role: str = "instance", min_side: int = MIN_SIDE,
                max_pixels: int = MAX_PIXELS) -> ImageScan:
    """Decode every candidate file in `folder` (not its sub-folders) and sort it into used or skipped.

    `min_side` is best the training resolution; smaller photos get a warning, not a skip.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"--{role}_data_dir {folder}: no such folder; pass the folder that holds the {role} images")
    if not folder.is_dir():
        raise DataError(f"--{role}_data_dir {folder}: is a file; pass the folder that holds the {role} images")
    heif = _heif_available()
    images, digests, skipped, notes, seen = [], [], [], [], {}
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"--{role}_data_dir {folder}: cannot be listed ({exc.strerror or exc}); "
                        "check its permissions") from None
    for path in entries:
        reason = _skip_reason(path, heif)
        if reason is None:
            try:
                data = path.read_bytes()
            except OSError as exc:  # unreadable: permissions, a dangling link
                reason = f"cannot be read ({exc.strerror or exc})"
        if reason is None:
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                reason = f"duplicate of {seen[digest].name} (same content)"
            else:
                reason, (width, height) = _problem(data, max_pixels)
        if reason is None and min_side * min_side * max(width, height) / min(width, height) > max_pixels:
            # resized to the training size on its shorter side, a thin strip would be a gigapixel image
            reason = (f"{width}x{height} is too thin: at {min_side} px on its shorter side it would be over "
                      f"{max_pixels / 1e6:g} MP; crop it nearer to square")
        if reason is not None:
            skipped.append((path, reason))
            continue
        seen[digest] = path
        images.append(path)
        digests.append(digest)
        notes += _size_warnings(path.name, width, height, min_side)
    # a photo left out (a phone's HEIC, a damaged file, a duplicate, a sub-folder of them) is news; a
    # caption or subject.json beside the photos is not
    notes += [f"{folder}: skipped {path.name}: {why}" for path, why in skipped if why not in NOT_PHOTOS]
    low, high = GOOD_INSTANCE_COUNT
    if role == "instance" and images and not low <= len(images) <= high:
        notes.append(f"{folder}: {len(images)} instance image(s); DreamBooth works best with 3-5 (at most ~{high})")
    return ImageScan(tuple(images), tuple(skipped), tuple(notes), folder, role, tuple(digests))


def fit_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is `resolution` (a no-op when it already is).

    Lanczos with `reducing_gap` pre-shrinks huge photos in steps, so 6000-px inputs don't alias.
    """
    if min(image.size) == resolution:
        return image
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def crop_corner(image: Image.Image, resolution: int, center_crop: bool, rng: random.Random | None) -> tuple[int, int]:
    """(top, left) of a `resolution` square in an image already fit to it: centered, or placed by `rng`
    (with no `rng` the crop is centered)."""
    dx, dy = image.width - resolution, image.height - resolution
    if center_crop or rng is None:
        return dy // 2, dx // 2
    x = rng.randint(0, dx)
    return rng.randint(0, dy), x


def prepare(image: Image.Image, resolution: int, center_crop: bool, rng: random.Random | None) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop a square (see `crop_corner`)."""
    image = fit_shorter_side(image, resolution)
    top, left = crop_corner(image, resolution, center_crop, rng)
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1], the SD VAE's input range, from an 8-bit RGB image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1).contiguous()
