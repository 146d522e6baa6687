"""The object locator: a small fully convolutional net that marks the object's pixels in a 64x64 image.

Whole-image encoders weigh a scene's context and the object's outline over the object's look
(docs/results.md), so subject fidelity is also read on the object alone: each image cut down to the
locator's mask, on a plain gray ground (`ObjectCrops`). The locator learns the masks the world knows
for its renders (train items, half two-toned, degraded like the judge's) and is scored on renders of
held-out items; generated images are only like renders, so look at its crops of them (`--sheet`).

    python -m dreambooth.toyworld.locator train --out dreambooth/assets/locator --threads 2
    python -m dreambooth.toyworld.locator accuracy --sheet crops.png --images FOLDER [FOLDER ...]
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dreambooth.atomic import write_text_atomic
from dreambooth.errors import DataError, run_command, writable_folder
from dreambooth.evaluation.encoders import ImageEncoder
from dreambooth.toyworld import world
from dreambooth.toyworld.readers import command_line, degrade, fit, load_weights, random_scenes, save_weights, to_pixels

LOCATOR_DIR = Path(__file__).resolve().parents[1] / "assets" / "locator"
WIDTH = 16  # channels at full resolution; the shipped locator's
TWO_TONE_FRACTION = 0.5
GROUND = 128  # the gray an object crop is set on


def block(channels_in: int, channels_out: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm; the first one halves the resolution at stride 2."""
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1),
                         nn.BatchNorm2d(channels_out), nn.ReLU(),
                         nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.BatchNorm2d(channels_out), nn.ReLU())


class Locator(nn.Module):
    """A three-level U-Net: the coarsest level (16x16, dilated) sees the whole object, the skips keep its edges."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.down = nn.ModuleList([block(3, width), block(width, 2 * width, 2), block(2 * width, 4 * width, 2)])
        self.middle = nn.Sequential(nn.Conv2d(4 * width, 4 * width, 3, padding=2, dilation=2), nn.ReLU())
        self.up = nn.ModuleList([block(6 * width, 2 * width), block(3 * width, width)])
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, 64, 64) in [-1, 1] -> object logits (B, 64, 64)."""
        skips, h = [], pixels
        for level in self.down:
            h = level(h)
            skips.append(h)
        h = h + self.middle(h)
        for level, skip in zip(self.up, reversed(skips[:-1])):
            h = level(torch.cat([nn.functional.interpolate(h, scale_factor=2), skip], dim=1))
        return self.out(h)[:, 0]


def rendered_batch(split: str, n: int, rng: np.random.Generator, augment: bool, two_tone_fraction: float = 0.0):
    """n random renders of `split` items and their object masks (B, 64, 64), randomly mirrored when augmented."""
    images, masks = [], []
    for scene in random_scenes(split, n, rng, two_tone_fraction):
        image = Image.fromarray(world.render(scene))
        images.append(degrade(image, rng) if augment else image)
        masks.append(world.object_mask(scene))
    pixels, masks = to_pixels(images), torch.from_numpy(np.stack(masks))
    if augment:  # clothes look the same mirrored
        flip = torch.from_numpy(rng.random(n) < 0.5)
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
    return pixels, masks


def train(out: Path, steps: int = 3000, batch: int = 32, width: int = WIDTH, seed: int = 0,
          device: str = "cpu") -> Locator:
    """Per-pixel cross-entropy against the render's soft mask."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    batches = (rendered_batch("train", batch, rng, augment=True, two_tone_fraction=TWO_TONE_FRACTION)
               for _ in itertools.repeat(None))

    def loss(locator: Locator, pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(locator(pixels), masks)

    locator = fit(Locator(width), batches, loss, steps, lr=3e-3, device=device)
    recipe = {"steps": steps, "batch": batch, "width": width, "seed": seed, "two_tone_fraction": TWO_TONE_FRACTION}
    save_weights(locator, out / "locator.safetensors", recipe)
    return locator


def load(path: Path = LOCATOR_DIR) -> Locator:
    """The locator `train` wrote to `path` (default: the shipped one)."""
    return load_weights(Locator, path / "locator.safetensors", first_conv="down.0.0.weight")


@torch.no_grad()
def object_masks(locator: Locator, images: list[Image.Image]) -> torch.Tensor:
    """(N, 64, 64) in [0, 1]: how sure the locator is that each pixel is the object."""
    return torch.sigmoid(locator(to_pixels(images)))


@torch.no_grad()
def accuracy(locator: Locator, n: int = 1000, seed: int = 1, augment: bool = False, two_toned: bool = False) -> float:
    """Mean intersection over union of the thresholded masks, on renders of held-out test items."""
    pixels, truth = rendered_batch("test", n, np.random.default_rng(seed), augment, float(two_toned))
    found, truth = torch.sigmoid(locator(pixels)) > 0.5, truth > 0.5
    return float(((found & truth).sum((1, 2)) / (found | truth).sum((1, 2)).clamp(min=1)).mean())


def main_blob(mask: np.ndarray) -> np.ndarray:
    """`mask` kept only on the blob of object pixels (> 0.5) around their densest 9x9 patch, and its rim.

    The world draws one object, so object pixels elsewhere (a leaf taken for cloth) are the locator's
    mistakes, and would widen the crop."""
    found = torch.from_numpy(mask > 0.5).float()[None, None]  # (1, 1, 64, 64)
    if not found.any():
        return mask
    density = nn.functional.avg_pool2d(found, 9, stride=1, padding=4, count_include_pad=False) * found
    blob = torch.zeros_like(found)
    blob.view(-1)[density.argmax()] = 1  # one seed: two equally dense blobs must not both be kept
    while not torch.equal(grown := nn.functional.max_pool2d(blob, 3, stride=1, padding=1) * found, blob):
        blob = grown
    rim = nn.functional.max_pool2d(blob, 3, stride=1, padding=1)  # the soft edge just outside
    return mask * rim[0, 0].numpy()


def object_crop(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The smallest square around the mask's main blob, the object kept by the mask and the rest gray.

    An image with no object pixels comes back whole, on gray where the mask is low: the encoder then
    sees what little the locator found, as for any other image."""
    mask = main_blob(mask)
    pixels = np.asarray(image.convert("RGB").resize((world.SIZE, world.SIZE), Image.BICUBIC), np.float32)
    kept = (mask[..., None] * pixels + (1 - mask[..., None]) * GROUND).round().astype(np.uint8)
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0:
        return Image.fromarray(kept)
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    top = int(np.clip((ys.min() + ys.max() + 1 - side) // 2, 0, world.SIZE - side))
    left = int(np.clip((xs.min() + xs.max() + 1 - side) // 2, 0, world.SIZE - side))
    return Image.fromarray(kept[top:top + side, left:left + side])


def object_crops(locator: Locator, images: list[Image.Image]) -> list[Image.Image]:
    """Each image's `object_crop` under the locator's mask."""
    return [object_crop(image, mask) for image, mask in zip(images, object_masks(locator, images).numpy())]


def crop_name(encoder_name: str) -> str:
    """The name results carry for an encoder read on object crops."""
    return f"{encoder_name}, object crops"


class ObjectCrops:
    """An image encoder that sees only the object: `encoder` on each image's object crop."""

    def __init__(self, encoder: ImageEncoder, locator: Locator | None = None) -> None:
        self.encoder, self.locator = encoder, load() if locator is None else locator
        self.name, self.family = crop_name(encoder.name), encoder.family

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit embeddings of the images' object crops."""
        return self.encoder.embed(object_crops(self.locator, images))


def crop_sheet(locator: Locator, folders: list[Path], out: Path, per_folder: int = 8) -> None:
    """Two rows a folder: its first images, then their object crops (to look at the locator's work on
    generated images, whose masks nobody knows)."""
    from dreambooth.demo import labelled_sheet
    from dreambooth.evaluation.evaluate import image_files, open_images

    rows = []
    for folder in folders:
        images = open_images(image_files(folder)[:per_folder])
        crops = [crop.resize((world.SIZE, world.SIZE), Image.NEAREST) for crop in object_crops(locator, images)]
        rows += [(folder.name, images), ("object crops", crops)]
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_sheet(rows).save(out)


def main() -> None:
    parser, _, a = command_line(__doc__, "locator", LOCATOR_DIR, steps=3000, batch=32)
    a.add_argument("--sheet", type=Path, help="also draw images and their object crops here (PNG)")
    a.add_argument("--images", type=Path, nargs="+", help="folders of images for --sheet (e.g. generated ones)")
    args = parser.parse_args()
    if args.command == "accuracy":
        from dreambooth.evaluation.evaluate import image_files

        if bool(args.sheet) != bool(args.images):
            parser.error("--sheet and --images go together: --sheet OUT.png --images FOLDER [FOLDER ...]")
        for images in args.images or []:
            if not images.is_dir():
                parser.error(f"--images {images}: not a folder; pass folders of images")
            if not image_files(images):
                raise DataError(f"--images {images}: no images directly in it; pass the folders that hold them")
    torch.set_num_threads(args.threads)
    # a place train cannot write to is found now, not after its minutes of training
    folder = writable_folder(args.out, "--out") if args.command == "train" else args.locator
    locator = train(folder, args.steps, args.batch, device=args.device) if args.command == "train" else load(folder)
    if args.command == "accuracy" and args.sheet:
        crop_sheet(locator, args.images, args.sheet)
    result = {"clean": accuracy(locator), "degraded": accuracy(locator, augment=True),
              "two-toned (like the subjects)": accuracy(locator, two_toned=True)}
    text = json.dumps({"mean IoU on held-out renders": result}, indent=2)
    print(text)
    if args.command == "train" or args.record:
        write_text_atomic(folder / "accuracy.json", text + "\n")


if __name__ == "__main__":
    sys.exit(run_command(main))
