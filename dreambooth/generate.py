"""Sampling a (personalized) pipeline with fixed seeds: image lists, grids, PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from diffusers import DiffusionPipeline
from PIL import Image

from dreambooth.config import fill_prompt
from dreambooth.errors import ConfigError, ModelError
from dreambooth.export import CONFIG_FILE
from dreambooth.finetune import LORA_WEIGHTS
from dreambooth.models import load_pipeline


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
           resolution: int | None = None) -> list[Image.Image]:
    """n images for one prompt; image i uses seed + i, so it doesn't depend on n or batch size."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return pipe(prompt=[prompt] * n, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                height=resolution, width=resolution).images


def sample_grid(pipe: DiffusionPipeline, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                resolution: int | None = None) -> Image.Image:
    """One row per prompt, n seeded samples per row."""
    images = [img for p in prompts for img in sample(pipe, p, n, steps, guidance, seed, resolution)]
    return make_grid(images, n)


def training_record(model: Path) -> dict:
    """The resolved config `dreambooth train` saved with the model ({} for models from elsewhere)."""
    config_file = model / CONFIG_FILE
    return (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}


def load_trained(model: Path) -> DiffusionPipeline:
    """A pipeline folder, or a LoRA folder (its base model, recorded at training, plus the adapters)."""
    if (model / LORA_WEIGHTS).is_file() and not (model / "model_index.json").is_file():
        base = training_record(model).get("pretrained_model_name_or_path")
        if not base:
            raise ModelError(f"{model}: LoRA weights without {CONFIG_FILE}; cannot tell the base model")
        pipe = load_pipeline(base)
        pipe.load_lora_weights(model, weight_name=LORA_WEIGHTS)
        return pipe
    return load_pipeline(model)


def generate(model: Path, prompt: str, n: int, out: Path, steps: int, guidance: float, seed: int) -> list[Path]:
    """Write n PNGs and a grid for `prompt` ({identifier}/{class_noun} filled from the model)."""
    record = training_record(model)
    for name in ("identifier", "class_noun"):
        if f"{{{name}}}" in prompt and not record.get(name):
            raise ConfigError(f"--prompt uses {{{name}}} but {model} records none; write the word out instead")
    text = fill_prompt(prompt, record.get("identifier"), record.get("class_noun"))
    images = sample(load_trained(model), text, n, steps, guidance, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"{seed + i:06d}.png")
        image.save(paths[-1])
    make_grid(images, min(n, 4)).save(out / "grid.png")
    (out / "prompt.txt").write_text(text + "\n")
    return paths
