"""Base-model quality: does the model draw what a toy-world prompt says? Read off by the judge.

    python -m dreambooth.toyworld.quality --model dreambooth/assets/base-model --sheet docs/images/base-model-grid.png --record

Every "a [color] [class] [context]" prompt (8 x 10 x 11 = 880) is sampled once at the default
sampler settings (image i uses seed i), and the judge reads each attribute back. The same grid
rendered by the world itself from held-out items is read too: that is the judge's own ceiling. So are
those renders after the model's VAE round trip: every sample leaves through that decoder, so this is
the most a UNet that drew the world's scenes exactly would score.
`--every 4` scores prompts 0, 4, 8, ... only (the same images as the full grid's), a 4x quicker
estimate for comparing sampler settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from dreambooth.atomic import write_text_atomic
from dreambooth.errors import positive_int, run_command
from dreambooth.generate import make_grid
from dreambooth.models import check_model_folder, load_pipeline
from dreambooth.toyworld import fashion_mnist, judge, world
from dreambooth.toyworld.captions import describe
from dreambooth.toyworld.model_card import (GENERATED, PER_CLASS, QUALITY_FILE, READ_AS, RECONSTRUCTION, RENDERED, ROUND_TRIP,
                                             write_model_card)
from dreambooth.toyworld.readers import to_pixels
from dreambooth.toyworld.subjects import EXAMPLES

STEPS, GUIDANCE = 20, 7.5  # the toy world's sampler settings: the grid's, the demo's and the model card's


def grid() -> list[dict[str, str]]:
    """Every (color, class, context) triple, context fastest, so a batch spans all contexts."""
    return [{"color": color, "class": noun, "context": context}
            for color, noun, context in itertools.product(world.COLORS, fashion_mnist.CLASS_NOUNS, world.CONTEXTS)]


@torch.no_grad()
def generate(model: Path, cells: list[dict[str, str]], seeds: list[int], steps: int, guidance: float,
             batch: int = 44) -> list[Image.Image]:
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(cells), batch):
        chunk = cells[start:start + batch]
        prompts = [describe(c["class"], c["color"], c["context"]) for c in chunk]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[start:start + batch]]
        images += pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators).images
        print(f"  {len(images)}/{len(cells)} images", flush=True)
    return images


def render(cells: list[dict[str, str]], seed: int = 0) -> list[Image.Image]:
    """The world's own render of each cell, from random held-out (test) items of the class."""
    items, labels = fashion_mnist.load("test")
    rng = np.random.default_rng(seed)
    out = []
    for c in cells:
        pool = np.flatnonzero(labels == fashion_mnist.CLASS_NOUNS.index(c["class"]))
        scene = world.sample_scene(rng, items[rng.choice(pool)], c["class"], color=c["color"], context=c["context"])
        out.append(Image.fromarray(world.render(scene)))
    return out


def _round_trip(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    return vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL, images: list[Image.Image], batch: int = 88) -> list[Image.Image]:
    """Each image encoded and decoded by the model's VAE, and made an image the way the pipeline makes
    its samples one."""
    processor, out = VaeImageProcessor(), []
    for start in range(0, len(images), batch):
        out += processor.postprocess(_round_trip(vae, to_pixels(images[start:start + batch])), "pil")
    return out


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, subjects: Path = EXAMPLES) -> dict[str, float]:
    """PSNR (dB) of the VAE's round trip of each shipped subject's photos: the most of a subject's
    look any fine-tuning of the UNet can bring back, since every sample passes through this decoder."""
    out = {}
    for folder in sorted(p.parent for p in subjects.glob("*/subject.json")):
        x = to_pixels([Image.open(f) for f in sorted(folder.glob("*.png"))])
        out[folder.name] = float(10 * torch.log10(4 / (_round_trip(vae, x) - x).pow(2).mean()))  # peak-to-peak 2
    return out


def accuracy(readings: list[dict[str, str]], cells: list[dict[str, str]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] == c[k] for r, c in zip(readings, cells)])) for k in judge.HEADS}


def class_read_as(readings: list[dict[str, str]], cells: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """For each prompted class, the share of its images read as each class: what the model draws instead."""
    out = {}
    for noun in fashion_mnist.CLASS_NOUNS:
        seen = [r["class"] for r, c in zip(readings, cells) if c["class"] == noun]
        if seen:  # a class never prompted has no accuracy, not a zero one
            out[noun] = {other: seen.count(other) / len(seen) for other in fashion_mnist.CLASS_NOUNS if other in seen}
    return out


def class_accuracy(readings: list[dict[str, str]], cells: list[dict[str, str]]) -> dict[str, float]:
    """Class accuracy per class: which shapes the model (or the judge) gets wrong."""
    return {noun: shares.get(noun, 0.0) for noun, shares in class_read_as(readings, cells).items()}


def sheet(images: list[Image.Image], cells: list[dict[str, str]]) -> Image.Image:
    """One row per class, one column per context; the color cycles so every color appears."""
    picked = {}
    for i, c in enumerate(cells):
        row, col = fashion_mnist.CLASS_NOUNS.index(c["class"]), world.CONTEXTS.index(c["context"])
        if list(world.COLORS).index(c["color"]) == (row + col) % len(world.COLORS):
            picked[row, col] = images[i]
    return make_grid([picked[key] for key in sorted(picked)], len(world.CONTEXTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--judge", type=Path, default=judge.JUDGE_DIR)
    parser.add_argument("--steps", type=positive_int, default=STEPS)
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    parser.add_argument("--every", type=positive_int, default=1,
                        help="score every n-th prompt of the grid only: a quicker estimate, for comparing settings")
    parser.add_argument("--sheet", type=Path, default=None, help="write a class x context sample sheet here")
    parser.add_argument("--record", action="store_true", help="save the numbers in the model folder and its card")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    if args.every > 1 and (args.record or args.sheet):
        parser.error("--every scores part of the grid: drop it to --record or draw a --sheet")
    full_grid = grid()
    seeds = list(range(0, len(full_grid), args.every))  # a prompt's seed is its place in the full grid
    cells = [full_grid[i] for i in seeds]
    if any({c[k] for c in cells} != set(values) for k, values in judge.HEADS.items()):
        parser.error(f"--every {args.every} leaves some classes, contexts or colors out; use e.g. 2, 3 or 4")
    torch.set_num_threads(args.threads)
    check_model_folder(args.model, option="--model")
    reader = judge.load(args.judge)
    rendered = render(cells)  # first: it needs the Fashion-MNIST package, generating does not
    generated = generate(args.model, cells, seeds, args.steps, args.guidance)
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae", use_safetensors=True, local_files_only=True).eval()
    readings = {GENERATED: judge.read(reader, generated),
                ROUND_TRIP: judge.read(reader, vae_round_trip(vae, rendered)),
                RENDERED: judge.read(reader, rendered)}
    result = {**{k: accuracy(r, cells) for k, r in readings.items()},
              PER_CLASS: {k: class_accuracy(r, cells) for k, r in readings.items()},
              READ_AS: class_read_as(readings[GENERATED], cells),
              RECONSTRUCTION: reconstruction_psnr(vae),
              "prompts": len(cells), "steps": args.steps, "guidance": args.guidance}
    print(json.dumps(result, indent=2))
    if args.record:
        write_text_atomic(args.model / QUALITY_FILE, json.dumps(result, indent=2))
        write_model_card(args.model)
    if args.sheet:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet(generated, cells).save(args.sheet)


if __name__ == "__main__":
    sys.exit(run_command(main))
