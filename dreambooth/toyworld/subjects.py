"""Held-out subjects for personalization: one Fashion-MNIST *test* item each, two-toned in a
pattern the caption grammar cannot say, photographed 5 times in varied places and light.

    python -m dreambooth.toyworld.subjects --out examples
    python -m dreambooth.toyworld.subjects --out my-subjects --test_index 42 --colors orange black --pattern stripes

The second form makes a new subject from any test item (the demo takes it as `--subject my-subjects/item-42`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth.errors import run_command, writable_folder
from dreambooth.toyworld import fashion_mnist, world

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the shipped subjects, in a source checkout


@dataclass(frozen=True)
class Subject:
    name: str
    test_index: int  # index into the Fashion-MNIST test split (never seen in pretraining)
    colors: tuple[str, str]
    pattern: str
    contexts: tuple[str, ...]  # one photo per context

    @property
    def class_noun(self) -> str:
        return fashion_mnist.CLASS_NOUNS[int(fashion_mnist.load("test")[1][self.test_index])]


SUBJECTS = (
    Subject("striped-bag", 18, ("yellow", "purple"), "stripes",
            ("on top of a wooden floor", "on top of green grass", "on a cobblestone street", "on top of a white rug",
             "on top of pink fabric")),
    Subject("two-tone-sneaker", 9, ("red", "blue"), "left-right",
            ("on top of a dirt road", "on top of a wooden floor", "on top of a white rug", "on top of green grass",
             "on a cobblestone street")),
    Subject("split-dress", 13, ("pink", "green"), "top-bottom",
            ("on top of a wooden floor", "on top of a white rug", "on top of a dirt road", "on a cobblestone street",
             "on top of green grass")),
)


def photos(subject: Subject, seed: int = 0) -> list[Image.Image]:
    """The subject's instance images: same object, varied position, scale, context and light."""
    rng = np.random.default_rng(seed)
    item = fashion_mnist.load("test")[0][subject.test_index]
    out = []
    for context in subject.contexts:
        s = world.sample_scene(rng, item, subject.class_noun, color=subject.colors[0], context=context)
        two_tone = world.Scene(**{**s.__dict__, "second_color": subject.colors[1], "pattern": subject.pattern})
        out.append(Image.fromarray(world.render(two_tone)))
    return out


def write_examples(root: Path, subjects: tuple[Subject, ...] = SUBJECTS) -> None:
    for subject in subjects:
        folder = root / subject.name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(photos(subject)):
            image.save(folder / f"{i:02d}.png")
        info = {"class_noun": subject.class_noun, "fashion_mnist_test_index": subject.test_index,
                "colors": subject.colors, "pattern": subject.pattern}
        (folder / "subject.json").write_text(json.dumps(info, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples"))
    parser.add_argument("--test_index", type=int, help="a new subject from this Fashion-MNIST test item")
    parser.add_argument("--colors", nargs=2, default=("orange", "black"), choices=list(world.COLORS))
    parser.add_argument("--pattern", default="stripes", choices=world.PATTERNS)
    args = parser.parse_args()
    if args.colors[0] == args.colors[1]:  # one color is what the captions can say: no subject's look
        parser.error(f"--colors {' '.join(args.colors)}: give two different colors")
    writable_folder(args.out, "--out")
    if args.test_index is None:
        write_examples(args.out)
        return
    count = len(fashion_mnist.load("test")[0])
    if not 0 <= args.test_index < count:
        parser.error(f"--test_index {args.test_index}: Fashion-MNIST's test split has items 0 to {count - 1}")
    write_examples(args.out, (Subject(f"item-{args.test_index}", args.test_index, tuple(args.colors), args.pattern,
                                      SUBJECTS[0].contexts),))


if __name__ == "__main__":
    sys.exit(run_command(main))
