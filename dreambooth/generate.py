"""Sampling a (personalized) pipeline with fixed seeds: image lists, grids, PNG files."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dreambooth.config import fill_prompt, placeholder_problem
from dreambooth.errors import ConfigError
from dreambooth.outputs import load_trained, training_record


def make_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized images row by row."""
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


@contextlib.contextmanager
def decoding_in_vae_precision(vae: torch.nn.Module):
    """The VAE decodes in its own precision, not autocast's. Under fp16 a VAE whose config says
    force_upcast stays float32 (SDXL's overflows in half precision), but autocast would still run its
    convolutions in fp16 while sampling, and the images would come out black."""
    decode = vae.decode

    def decode_unautocast(latents, *args, **kwargs):
        with torch.autocast(latents.device.type, enabled=False):
            return decode(latents.to(vae.dtype), *args, **kwargs)

    vae.decode = decode_unautocast
    try:
        yield
    finally:
        del vae.decode  # the instance attribute; the class's method shows again


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


def generate(model: Path, prompt: str, n: int, out: Path, steps: int, guidance: float, seed: int,
             base: str | Path | None = None, batch_size: int = 4) -> list[Path]:
    """Write n PNGs and a grid for `prompt` ({identifier}/{class_noun} filled from the model)."""
    if problem := placeholder_problem(prompt, "--prompt"):
        raise ConfigError(problem)
    record = training_record(model)
    for name in ("identifier", "class_noun"):
        if f"{{{name}}}" in prompt and not record.get(name):
            raise ConfigError(f"--prompt uses {{{name}}} but {model} records none; write the word out instead")
    text = fill_prompt(prompt, record.get("identifier"), record.get("class_noun"))
    pipe = load_trained(model, base)
    with tqdm(total=n, desc="sampling", unit="img") as bar:
        images = sample(pipe, text, n, steps, guidance, seed, batch_size=batch_size, bar=bar)
    out.mkdir(parents=True, exist_ok=True)
    for earlier in out.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):  # an earlier call's, else read as this prompt's
        earlier.unlink()
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"{seed + i:06d}.png")
        image.save(paths[-1])
    make_grid(images, min(n, 4)).save(out / "grid.png")
    (out / "prompt.txt").write_text(text + "\n")
    return paths
