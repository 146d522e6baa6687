"""Sampling a (personalized) pipeline with fixed seeds: image lists, grids, PNG files."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dreambooth.atomic import fsync_tree, removed_on_failure
from dreambooth.config import fill_prompt, placeholder_problem
from dreambooth.errors import ConfigError
from dreambooth.outputs import is_lora_folder, load_trained, training_record
from dreambooth.run_guard import signals_noted


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
           resolution: int | tuple[int, int] | None = None, batch_size: int = 4, bar: tqdm | None = None,
           negative_prompt: str | None = None, **pipe_kwargs) -> list[Image.Image]:
    """n images for one prompt, `batch_size` at a time (memory); image i uses seed + i, so the images
    don't depend on n or batch size. `resolution`: the side of a square, or (height, width); None, the
    model's native size. `bar` counts the images as they come."""
    height, width = resolution if isinstance(resolution, tuple) else (resolution, resolution)
    images = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        negative = {"negative_prompt": [negative_prompt] * count} if negative_prompt else {}
        images += pipe(prompt=[prompt] * count, num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators, height=height, width=width, **negative, **pipe_kwargs).images
        if bar is not None:
            bar.update(count)
    return images


def sample_grid(pipe: DiffusionPipeline, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                resolution: int | None = None) -> Image.Image:
    """One row per prompt, n seeded samples per row."""
    images = [img for p in prompts for img in sample(pipe, p, n, steps, guidance, seed, resolution)]
    return make_grid(images, n)


@dataclass(frozen=True)
class Sampling:
    """How `dreambooth generate` samples: n images, image i from seed + i."""

    n: int
    steps: int
    guidance: float
    seed: int
    batch_size: int  # images sampled at once (memory): the images are the same at any
    negative_prompt: str | None = None
    height: int | None = None  # None: the size the model was trained at, else its native size
    width: int | None = None
    lora_scale: float | None = None  # LoRA folders only; None: 1, as trained


SAMPLE_FILE = re.compile(r"^\d{6,}\.png$")  # image i is saved as its seed, six digits or more


def generate(model: Path, prompt: str, out: Path, sampling: Sampling, base: str | Path | None = None) -> list[Path]:
    """Write n PNGs, a grid and the prompt for `prompt` ({identifier}/{class_noun} filled from the model)
    into `out`, replacing an earlier call's: all of them, or (on a failure) none, the earlier ones kept."""
    record = training_record(model)
    for option, template in (("--prompt", prompt), ("--negative_prompt", sampling.negative_prompt or "")):
        if problem := placeholder_problem(template, option):
            raise ConfigError(problem)
        for name in ("identifier", "class_noun"):
            if f"{{{name}}}" in template and not record.get(name):
                raise ConfigError(f"{option} uses {{{name}}} but {model} records none; write the word out instead")
    if sampling.lora_scale is not None and not is_lora_folder(model):
        raise ConfigError(f"--lora_scale: {model} is a full pipeline, not a LoRA folder; drop it (or merge a LoRA at "
                          "another scale with `dreambooth merge --scale`)")
    text, negative = (fill_prompt(t, record.get("identifier"), record.get("class_noun")) if t else None
                      for t in (prompt, sampling.negative_prompt))
    pipe = load_trained(model, base)
    # each side not asked for: as trained, else the model's native size
    size = record.get("resolution") or pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = sampling.height or size, sampling.width or size
    # diffusers scales a LoRA's text-encoder adapters by the same
    scale = {} if sampling.lora_scale is None else {"cross_attention_kwargs": {"scale": sampling.lora_scale}}
    with tqdm(total=sampling.n, desc="sampling", unit="img") as bar:
        images = sample(pipe, text, sampling.n, sampling.steps, sampling.guidance, sampling.seed,
                        (height, width), sampling.batch_size, bar, negative, **scale)
    staging = out / ".generate.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # a crashed call's
    with removed_on_failure(staging, writing=out):
        staging.mkdir()
        for i, image in enumerate(images):
            image.save(staging / f"{sampling.seed + i:06d}.png")
        make_grid(images, min(sampling.n, 4)).save(staging / "grid.png")
        (staging / "prompt.txt").write_text(text + "\n")
        fsync_tree(staging)
    paths, caught = [], []
    with signals_noted(caught.append):  # Ctrl-C waits: cut here, it would leave some of each call's images
        for earlier in out.iterdir():  # an earlier call's, else read as this prompt's
            if SAMPLE_FILE.match(earlier.name) or earlier.name in ("grid.png", "prompt.txt"):
                earlier.unlink()
        for file in sorted(staging.iterdir()):
            os.replace(file, out / file.name)
            paths.append(out / file.name)
        staging.rmdir()
    if caught:
        signal.raise_signal(caught[0])  # now, as it would have acted
    return [path for path in paths if SAMPLE_FILE.match(path.name)]
