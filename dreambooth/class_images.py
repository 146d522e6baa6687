"""Class images for prior preservation (paper, Sec. 3.3), generated once by the base model and cached.

The cache folder is named by a hash of everything that shapes the images: the model's *content*
(so two copies of one model share it and a changed weight doesn't), prompt, size, sampler, steps,
guidance, seed and the precision they are drawn in. Image i always comes from the same noise, seeded
by (seed, i), so the images don't depend on the batch size and an interrupted run resumes by
generating only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dreambooth.atomic import write_atomic
from dreambooth.data.images import scan_images
from dreambooth.errors import ConfigError, ModelError
from dreambooth.models import (check_model_folder, load_pipeline as load_model_pipeline, load_sampling_scheduler,
                               native_resolution)

FINGERPRINT_PATTERNS = ("*.safetensors", "*.bin", "*.json", "*.txt")  # weights, configs, tokenizer merges
FINGERPRINT_MEMO = "fingerprints.json"
STALE_WRITE_SECONDS = 3600  # a temp file this old was left by a killed write
SPEC_FILE = "spec.json"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def drawing_precision(choice: str | None, device_type: str | None = None) -> str:
    """`--prior_generation_precision` resolved as diffusers' scripts do: unset (or "no"), fp16 on a GPU
    (`device_type`; by default whether torch sees one) and fp32 elsewhere."""
    if choice in PRECISIONS:
        return choice
    return "fp16" if (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda" else "fp32"


@dataclass(frozen=True)
class ClassImageSpec:
    """Everything that decides what the class images look like."""

    model_path: Path
    prompt: str
    resolution: int
    sampler: str  # a diffusers scheduler class name
    sampler_config: dict[str, Any] = field(hash=False)
    num_inference_steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str | None = None
    precision: str = "fp32"  # a key of PRECISIONS: the weights' dtype while drawing

    @classmethod
    def for_model(cls, folder: Path, prompt: str, resolution: int, num_inference_steps: int,
                  guidance_scale: float, seed: int, precision: str = "fp32") -> "ClassImageSpec":
        """The spec of a model folder's class images, drawn with the folder's own sampler."""
        sampler = load_sampling_scheduler(folder)
        return cls(model_path=folder, prompt=prompt, resolution=resolution, sampler=type(sampler).__name__,
                   sampler_config=dict(sampler.config), num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, seed=seed, precision=precision)

    def record(self, fingerprint: str) -> dict[str, Any]:
        """The spec as JSON data, with the model named by its content rather than its path."""
        record = asdict(self)
        del record["model_path"]
        # diffusers' bookkeeping keys (_class_name, _diffusers_version, ...) don't change the samples
        record["sampler_config"] = {k: v for k, v in self.sampler_config.items() if not k.startswith("_")}
        if self.precision == "fp32":  # the only precision before it was recorded: those caches keep their keys
            del record["precision"]
        return {"model_fingerprint": fingerprint, **record}


def cache_key(spec: ClassImageSpec, fingerprint: str) -> str:
    """sha256 of the spec's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(spec.record(fingerprint), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_fingerprint(model_dir: Path, memo_dir: Path | None = None) -> str:
    """sha256 over the weights and configs of a diffusers folder, relative paths included.

    Only what `from_pretrained` reads counts: model_index.json and the component folders it lists.
    Anything else (a model card, a quality report, `generate`'s samples/, a trained folder's
    checkpoints) changes without changing a single image, so it must not invalidate caches or
    results keyed on this.

    Per-file hashes are memoized in `memo_dir`/fingerprints.json by (absolute path, size, mtime_ns),
    so a multi-GB model is read once, not on every run.
    """
    model_dir = Path(model_dir).resolve()
    memo_file = memo_dir / FINGERPRINT_MEMO if memo_dir is not None else None
    read = _read_memo(memo_file) if memo_file is not None else {}
    memo = dict(read)
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{model_dir}: no model_index.json to fingerprint; pass a diffusers pipeline folder")
    components = [name for name, entry in json.loads(index.read_text()).items()
                  if isinstance(entry, list) and entry[0] is not None]
    files = sorted({index} | {p for name in components for pattern in FINGERPRINT_PATTERNS
                              for p in (model_dir / name).rglob(pattern)
                              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)})
    total = hashlib.sha256()
    for path in files:
        stat = path.stat()
        entry = memo.get(str(path))
        if entry is None or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            entry = memo[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _file_sha256(path)}
        total.update(f"{path.relative_to(model_dir).as_posix()}\0{entry['sha256']}\n".encode())
    if memo_file is not None:
        kept = {p: e for p, e in memo.items() if Path(p).is_file()}  # forget deleted models
        if kept != read:
            # a speed-up only: a cache shared read-only (full, by another user) is read on without it
            with contextlib.suppress(OSError):
                write_atomic(memo_file, lambda tmp: tmp.write_text(json.dumps(kept, indent=1, sort_keys=True)),
                             unique=True)
    return total.hexdigest()


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index`: a hash, so runs with nearby seeds don't share images (seed + i would)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1  # 63 bits


def cache_folder(spec: ClassImageSpec, cache_root: Path) -> Path:
    """`cache_root/<prompt slug>-<key[:16]>`: readable, and unique to the spec and model content."""
    cache_root.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(spec.model_path, cache_root)
    folder = cache_root / _folder_name(spec, fingerprint)
    folder.mkdir(exist_ok=True)
    for leftover in [*folder.glob(".*.tmp"), *cache_root.glob(".*.tmp")]:
        # a write killed midway (SIGKILL, power loss); one in progress in another process is younger
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > STALE_WRITE_SECONDS:
                leftover.unlink()
    if not (folder / SPEC_FILE).is_file():
        record = {"model_path": str(spec.model_path), **spec.record(fingerprint)}
        write_atomic(folder / SPEC_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2, default=str)),
                     unique=True)
    return folder


def _image_path(folder: Path, index: int) -> Path:
    """Where cached image `index` lives: its name is its seed's index, so a resume finds what is missing."""
    return folder / f"{index:06d}.png"


def _folder_name(spec: ClassImageSpec, fingerprint: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", spec.prompt.lower()).strip("-")[:48] or "prompt"
    return f"{slug}-{cache_key(spec, fingerprint)[:16]}"


def cached_count(spec: ClassImageSpec, cache_root: Path, num_images: int) -> int:
    """How many of the first `num_images` images the cache holds already (a damaged one is replaced when
    training starts), found without creating a folder there: for the disk check."""
    if not cache_root.is_dir():
        return 0
    folder = cache_root / _folder_name(spec, model_fingerprint(spec.model_path, cache_root))
    return sum(_image_path(folder, i).is_file() for i in range(num_images))


def ensure_class_images(spec: ClassImageSpec, cache_root: Path, num_images: int, user_dir: Path | None,
                        load_pipeline: Callable[[], DiffusionPipeline], batch_size: int,
                        progress: bool, share: tuple[int, int] = (0, 1)) -> list[Path]:
    """`num_images` class images: the user's own first, the rest generated (or reused from the cache).

    `load_pipeline` is called only if an image is missing, so a warm cache costs no model load.
    `share=(k, n)`: draw only the missing images whose index is k modulo n (process k of n; the
    returned list is then complete only once every share is drawn).
    """
    # a --class_data_dir that does not exist yet counts as empty (diffusers recipes name one to be filled)
    user_images = (list(scan_images(user_dir, role="class", min_side=spec.resolution).images)
                   if user_dir is not None and user_dir.exists() else [])
    if len(user_images) >= num_images:
        return user_images[:num_images]
    folder = cache_folder(spec, Path(cache_root))
    paths = [_image_path(folder, i) for i in range(num_images - len(user_images))]
    # a file that does not decode, or is not of the size drawn (damaged or replaced by something else: ours
    # are written whole) is replaced, never deleted first: another process sharing the cache may be reading it
    missing = [i for i, path in enumerate(paths)
               if i % share[1] == share[0] and not _decodes_at(path, (spec.resolution, spec.resolution))]
    if missing:
        _generate(spec, load_pipeline(), missing, folder, batch_size, progress)
    return user_images + paths


def _generate(spec: ClassImageSpec, pipe: DiffusionPipeline, indices: list[int], folder: Path,
              batch_size: int, progress: bool) -> None:
    """Sample the images at `indices`, one seeded generator each, and write each PNG atomically."""
    sampler = getattr(diffusers, spec.sampler, None)
    if sampler is None:
        raise ModelError(f"class-image sampler {spec.sampler!r} is not a diffusers scheduler class")
    pipe.scheduler = sampler.from_config(spec.sampler_config)  # the sampler the cache key names
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=len(indices), desc=f"class images '{spec.prompt}'", unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            # CPU generators: the same noise whatever the device the pipeline runs on
            generators = [torch.Generator().manual_seed(image_seed(spec.seed, i)) for i in batch]
            negative = [spec.negative_prompt] * len(batch) if spec.negative_prompt else None
            images = pipe(prompt=[spec.prompt] * len(batch), negative_prompt=negative,
                          num_inference_steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale,
                          generator=generators, height=spec.resolution, width=spec.resolution).images
            for i, image in zip(batch, images):
                write_atomic(_image_path(folder, i), lambda tmp: image.save(tmp, format="PNG"), unique=True)
            bar.update(len(batch))


def generate_for_model(model: Path, prompt: str, num_images: int, cache_root: Path, resolution: int | None,
                       steps: int, guidance_scale: float, seed: int, batch_size: int,
                       precision: str | None = None) -> list[Path]:
    """`dreambooth class-images`: the class images of a model folder with its own sampler."""
    if resolution is not None and resolution % 8:
        raise ConfigError(f"--resolution {resolution}: must be a multiple of 8 (the VAE downsamples by 8)")
    folder = check_model_folder(model, option="--model")
    spec = ClassImageSpec.for_model(folder, prompt, resolution or native_resolution(folder), steps, guidance_scale,
                                    seed, drawing_precision(precision))
    return ensure_class_images(spec, cache_root, num_images, None,
                               lambda: load_model_pipeline(folder, PRECISIONS[spec.precision]),
                               batch_size, progress=True)


def _decodes_at(path: Path, size: tuple[int, int]) -> bool:
    """Whether `path` is an image of `size` that decodes completely (a truncated PNG fails in `load`)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size == size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _read_memo(memo_file: Path) -> dict[str, dict[str, Any]]:
    """The per-file hash memo; a missing or damaged one only costs re-hashing."""
    try:
        return json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

