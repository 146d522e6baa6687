"""What the world's two small readers of images, the judge and the locator, share: renders of random
scenes to learn from, degraded like generated images, one training loop, their weights on disk and
their command line.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file
from torch import nn

from dreambooth.atomic import save_file_atomic
from dreambooth.errors import ModelError, positive_int, torch_device
from dreambooth.models import default_device
from dreambooth.toyworld import fashion_mnist, world


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, 64, 64) in [-1, 1], what the readers take."""
    arrays = [np.asarray(im.convert("RGB").resize((world.SIZE, world.SIZE), Image.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur, noise and JPEG artifacts like those of small generated images."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:
        noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 12), (world.SIZE, world.SIZE, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 90)))
        image = Image.open(buffer).convert("RGB")
    return image


def random_scenes(split: str, n: int, rng: np.random.Generator,
                  two_tone_fraction: float = 0.0) -> Iterator[world.Scene]:
    """n random scenes of `split` items; a `two_tone_fraction` of their objects are two-toned, like the
    subjects DreamBooth learns. Yielded one by one, so a caller's own draws from `rng` interleave."""
    items, labels = fashion_mnist.load(split)
    for i in rng.integers(0, len(items), n):
        scene = world.sample_scene(rng, items[i], fashion_mnist.CLASS_NOUNS[labels[i]])
        yield world.two_toned(scene, rng) if two_tone_fraction and rng.random() < two_tone_fraction else scene


def on_device(batch, device: str):
    """A batch's tensors (alone, or in a tuple or a dict) moved to `device`."""
    if isinstance(batch, dict):
        return {k: on_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(on_device(v, device) for v in batch)
    return batch.to(device)


def fit(model: nn.Module, batches: Iterable[tuple], loss: Callable[..., torch.Tensor], steps: int,
        lr: float, device: str = "cpu") -> nn.Module:
    """`steps` AdamW steps on `loss(model, *batch)`, the learning rate in one cycle peaking at `lr`;
    trained on `device`, returned on the CPU, where it is read and saved."""
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for step, batch in zip(range(steps), batches):
        value = loss(model, *on_device(batch, device))
        value.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps} loss {value.item():.4f}", flush=True)
    return model.cpu().eval()


def save_weights(model: nn.Module, file: Path, recipe: dict) -> None:
    """`model`'s weights to `file`, written whole or not at all, with its training recipe as metadata."""
    file.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file_atomic(weights, file, {k: str(v) for k, v in recipe.items()})


def load_weights(build: Callable[[int], nn.Module], file: Path, first_conv: str) -> nn.Module:
    """A model saved by `save_weights`, built at the width it was trained at (its `first_conv`'s channels)."""
    if not file.is_file():
        raise ModelError(f"{file} not found; pass a folder that `train --out` wrote")
    state = load_file(file)
    model = build(state[first_conv].shape[0])
    model.load_state_dict(state)
    return model.eval()


def command_line(doc: str, name: str, folder: Path, steps: int, batch: int) -> tuple[argparse.ArgumentParser, ...]:
    """A reader's command line and its two commands: `train --out --steps --batch --device`, and
    `accuracy --<name>` of a trained one; both take --threads. Returned as (parser, train, accuracy)
    for each to add its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--out", type=Path, default=folder)
    train.add_argument("--steps", type=positive_int, default=steps)
    train.add_argument("--batch", type=positive_int, default=batch, help="renders per step")
    train.add_argument("--device", type=torch_device, default=default_device(),
                       help="where it trains (default: the GPU if there is one); it is read and saved on the CPU")
    accuracy = sub.add_parser("accuracy")
    accuracy.add_argument(f"--{name}", type=Path, default=folder)
    accuracy.add_argument("--record", action="store_true",
                          help=f"also write accuracy.json into the {name}'s folder (by default the shipped one)")
    for command in (train, accuracy):
        command.add_argument("--threads", type=positive_int, default=1)
    return parser, train, accuracy
