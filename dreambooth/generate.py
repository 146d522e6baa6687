"""Sampling a (personalized) pipeline with fixed seeds: image lists, grids, PNG files."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import torch
import yaml
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dreambooth.config import fill_prompt
from dreambooth.errors import ConfigError, ModelError
from dreambooth.export import CONFIG_FILE
from dreambooth.finetune import LORA_WEIGHTS
from dreambooth.models import check_model_folder, load_pipeline


def make_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized images row by row."""
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


@torch.no_grad()
def sample(pipe: DiffusionPipeline, prompt: str, n: int, steps: int, guidance: float, seed: int,
           resolution: int | None = None, batch_size: int = 4, bar: tqdm | None = None) -> list[Image.Image]:
    """n images for one prompt, `batch_size` at a time (memory); image i uses seed + i, so the images
    don't depend on n or batch size. `bar` counts the images as they come."""
    images = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        images += pipe(prompt=[prompt] * count, num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators, height=resolution, width=resolution).images
        if bar is not None:
            bar.update(count)
    return images


def sample_grid(pipe: DiffusionPipeline, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                resolution: int | None = None) -> Image.Image:
    """One row per prompt, n seeded samples per row."""
    images = [img for p in prompts for img in sample(pipe, p, n, steps, guidance, seed, resolution)]
    return make_grid(images, n)


def training_record(model: Path) -> dict:
    """The resolved config `dreambooth train` saved with the model ({} for models from elsewhere)."""
    config_file = model / CONFIG_FILE
    return (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}


def is_lora_folder(model: Path) -> bool:
    return (model / LORA_WEIGHTS).is_file() and not (model / "model_index.json").is_file()


def lora_base(lora_dir: Path, base: str | Path | None = None) -> Path:
    """The base model a LoRA folder loads onto, checked: `base` (--base), or the one recorded at training."""
    record = training_record(lora_dir)
    option = "--base"
    if base is None:
        base, option = record.get("pretrained_model_name_or_path"), f"the base model {lora_dir / CONFIG_FILE} records"
        if not base:
            raise ModelError(f"{lora_dir}: LoRA weights without {CONFIG_FILE}; pass the base model with --base")
        option += " (pass --base if it moved)"
    return check_model_folder(base, record.get("allow_pickle", False), option=option)


def load_trained(model: Path, base: str | Path | None = None) -> DiffusionPipeline:
    """A pipeline folder, or a LoRA folder on its base model (`base`, or the one recorded at training)."""
    if is_lora_folder(model):
        base = lora_base(model, base)
        pipe = load_pipeline(base, allow_pickle=training_record(model).get("allow_pickle", False))
        # diffusers logs the error below whole and peft warns before it: heard only if the adapters load
        loader_log = logging.getLogger("diffusers.loaders.peft")
        level = loader_log.level
        loader_log.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe.load_lora_weights(model, weight_name=LORA_WEIGHTS)
        except RuntimeError as exc:  # torch's "size mismatch for ...": adapters of another architecture
            mismatch = str(exc).strip().splitlines()[-1].strip().split(": copying")[0]
            raise ModelError(f"{model}: its LoRA does not fit the base model {base} ({mismatch}); pass the "
                             "--base it was trained on") from None
        finally:
            loader_log.setLevel(level)
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return pipe
    return load_pipeline(model)


def generate(model: Path, prompt: str, n: int, out: Path, steps: int, guidance: float, seed: int,
             base: str | Path | None = None, batch_size: int = 4) -> list[Path]:
    """Write n PNGs and a grid for `prompt` ({identifier}/{class_noun} filled from the model)."""
    record = training_record(model)
    for name in ("identifier", "class_noun"):
        if f"{{{name}}}" in prompt and not record.get(name):
            raise ConfigError(f"--prompt uses {{{name}}} but {model} records none; write the word out instead")
    text = fill_prompt(prompt, record.get("identifier"), record.get("class_noun"))
    pipe = load_trained(model, base)
    with tqdm(total=n, desc="sampling", unit="img") as bar:
        images = sample(pipe, text, n, steps, guidance, seed, batch_size=batch_size, bar=bar)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"{seed + i:06d}.png")
        image.save(paths[-1])
    make_grid(images, min(n, 4)).save(out / "grid.png")
    (out / "prompt.txt").write_text(text + "\n")
    return paths
