"""The world judge: a small CNN that reads class, context and color off a 64x64 image.

It is the toy world's prompt-fidelity meter (the role CLIP-T plays for photos): a prompt names some
attributes ("a red [V] bag on the beach"), and the score is the fraction of them the judge sees.
Trained on (randomly mirrored) renders of Fashion-MNIST *train* items, blurred, noised and JPEG-compressed so it
tolerates generated images; evaluated on renders of held-out *test* items.

    python -m dreambooth.toyworld.judge train --out dreambooth/assets/judge --threads 2
    python -m dreambooth.toyworld.judge accuracy --judge dreambooth/assets/judge
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dreambooth.atomic import write_text_atomic
from dreambooth.errors import positive_int, run_command, writable_folder
from dreambooth.toyworld import fashion_mnist, world
from dreambooth.toyworld.readers import command_line, degrade, fit, load_weights, random_scenes, save_weights, to_pixels

JUDGE_DIR = Path(__file__).resolve().parents[1] / "assets" / "judge"
WIDTH = 64  # channels of the first stage; the shipped judge's
HEADS = {"class": fashion_mnist.CLASS_NOUNS, "context": world.CONTEXTS, "color": tuple(world.COLORS)}
IGNORED = -100  # a target no head is trained or scored on (cross_entropy's ignore_index)
TWO_TONE_FRACTION = 0.5  # of training renders; the shipped judge's


class Judge(nn.Module):
    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 2 * width, 4 * width):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(channels, len(values)) for name, values in HEADS.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels (B, 3, 64, 64) in [-1, 1] -> logits per attribute."""
        h = self.features(pixels)
        return {name: head(h) for name, head in self.heads.items()}


def rendered_batch(split: str, n: int, rng: np.random.Generator, augment: bool, two_tone_fraction: float = 0.0):
    """n random renders of `split` items, with their attribute indices (two-toned objects have no one
    color: IGNORED)."""
    images, targets = [], {name: [] for name in HEADS}
    for scene in random_scenes(split, n, rng, two_tone_fraction):
        image = Image.fromarray(world.render(scene))
        images.append(degrade(image, rng) if augment else image)
        for name, value in (("class", scene.class_noun), ("context", scene.context), ("color", scene.color)):
            targets[name].append(IGNORED if name == "color" and scene.second_color else HEADS[name].index(value))
    return to_pixels(images), {k: torch.tensor(v) for k, v in targets.items()}


class RenderedBatches(torch.utils.data.IterableDataset):
    """Endless augmented batches of train-item renders; drawn in worker processes, since rendering
    and degrading a batch costs about as much as the judge's step on it (each worker draws its own)."""

    def __init__(self, batch: int, seed: int, two_tone_fraction: float) -> None:
        self.batch, self.seed, self.two_tone_fraction = batch, seed, two_tone_fraction

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed if worker is None or worker.id == 0 else [self.seed, worker.id])
        while True:
            pixels, targets = rendered_batch("train", self.batch, rng, augment=True, two_tone_fraction=self.two_tone_fraction)
            flip = torch.from_numpy(rng.random(self.batch) < 0.5)  # clothes read the same mirrored
            yield torch.where(flip[:, None, None, None], pixels.flip(-1), pixels), targets


def train(out: Path, steps: int = 9000, batch: int = 64, width: int = WIDTH, seed: int = 0, workers: int = 1,
          two_tone_fraction: float = TWO_TONE_FRACTION, device: str = "cpu") -> Judge:
    torch.manual_seed(seed)
    data = RenderedBatches(batch, seed, two_tone_fraction)
    batches = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers)

    def loss(judge: Judge, pixels: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = judge(pixels)
        return sum(nn.functional.cross_entropy(logits[k], targets[k], label_smoothing=0.1) for k in HEADS)

    judge = fit(Judge(width), batches, loss, steps, lr=2e-3, device=device)
    save(judge, out, steps=steps, batch=batch, width=width, seed=seed, workers=workers,
         two_tone_fraction=two_tone_fraction)
    return judge


def save(judge: Judge, out: Path, **recipe: float) -> None:
    """judge.safetensors in `out`, written whole or not at all, with its training recipe as metadata."""
    save_weights(judge, out / "judge.safetensors", recipe)


def load(path: Path = JUDGE_DIR) -> Judge:
    return load_weights(Judge, path / "judge.safetensors", first_conv="features.0.weight")


@torch.no_grad()
def read(judge: Judge, images: list[Image.Image]) -> list[dict[str, str]]:
    """The judge's reading of each image: {"class": ..., "context": ..., "color": ...}."""
    logits = judge(to_pixels(images))
    return [{k: HEADS[k][int(logits[k][i].argmax())] for k in HEADS} for i in range(len(images))]


@torch.no_grad()
def accuracy(judge: Judge, n: int = 2000, seed: int = 1, augment: bool = False, two_toned: bool = False,
             split: str = "test") -> dict:
    """Per-attribute accuracy on renders of held-out Fashion-MNIST test items (or, with split="train",
    of the items it learned from: how well it fits), and class by class (two-toned objects have no
    color to score)."""
    pixels, targets = rendered_batch(split, n, np.random.default_rng(seed), augment, float(two_toned))
    logits = judge(pixels)
    right = {k: logits[k].argmax(1) == targets[k] for k in HEADS}
    scored = {k: targets[k] != IGNORED for k in HEADS}
    by_class = {noun: float(right["class"][targets["class"] == i].float().mean()) for i, noun in enumerate(HEADS["class"])}
    return {**{k: float(right[k][scored[k]].float().mean()) for k in HEADS if scored[k].any()}, "class, by class": by_class}


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a toy-world prompt names (any other word, such as the identifier, is ignored)."""
    named = {}
    for context in sorted(world.CONTEXTS, key=len, reverse=True):
        if context in prompt:
            named["context"], prompt = context, prompt.replace(context, " ")
            break
    words = prompt.split()
    for key in ("class", "color"):
        named.update({key: w for w in words if w in HEADS[key]})
    return named


class JudgeScorer:
    """Prompt fidelity on the toy world: the mean fraction of named attributes the judge sees."""

    name = "toy-world-judge"

    def __init__(self, judge: Judge | None = None) -> None:
        self.judge = judge or load()

    def __call__(self, images: list[Image.Image], prompt: str) -> float:
        named = parse_prompt(prompt)
        if not named:
            return float("nan")
        seen = read(self.judge, images)
        return float(np.mean([np.mean([r[k] == v for k, v in named.items()]) for r in seen]))


def main() -> None:
    parser, t, _ = command_line(__doc__, "judge", JUDGE_DIR, steps=9000, batch=64)
    t.add_argument("--width", type=positive_int, default=WIDTH, help="channels of the first stage (x2, x2, x4 after)")
    t.add_argument("--workers", type=positive_int, default=1, help="processes that render the training batches")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # a place train cannot write to, or no Fashion-MNIST, is found now, not after (or inside) the training
    folder = writable_folder(args.out, "--out") if args.command == "train" else args.judge
    for split in ("train", "test") if args.command == "train" else ("test",):  # accuracy reads the test items
        fashion_mnist.load(split)
    judge = (train(folder, args.steps, args.batch, args.width, workers=args.workers, device=args.device)
             if args.command == "train" else load(folder))
    result = {"clean": accuracy(judge.eval()), "degraded": accuracy(judge, augment=True),
              "two-toned (like the subjects)": accuracy(judge, two_toned=True),
              "train items (how well it fits)": accuracy(judge, split="train")}
    print(json.dumps(result, indent=2))
    if args.command == "train" or args.record:
        write_text_atomic(folder / "accuracy.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_command(main))
