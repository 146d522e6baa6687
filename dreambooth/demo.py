"""`dreambooth demo`: the whole method on the shipped toy-world model and one shipped subject, on a CPU.

Same trainer as any real model: class images from the base model, DreamBooth with prior
preservation, then the subject in new contexts and with new properties, and "a [class]" before
and after to show the class prior survives. Writes one PNG sheet and an HTML report.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from dreambooth.config import TrainConfig, fill_prompt
from dreambooth.errors import DataError
from dreambooth.generate import sample
from dreambooth.models import load_pipeline
from dreambooth.outputs import load_trained, training_record
from dreambooth.toyworld.quality import GUIDANCE, STEPS
from dreambooth.toyworld.subjects import EXAMPLES
from dreambooth.trainer import train

PACKAGE = Path(__file__).resolve().parent
BASE_MODEL = PACKAGE / "assets" / "base-model"
NEW_CONTEXTS = ("in the snow", "on the beach", "in the jungle", "floating on top of water",
                "with a mountain in the background", "on top of pink fabric")
NEW_PROPERTIES = ("a red {identifier} {class_noun}", "a blue {identifier} {class_noun}")


@dataclass(frozen=True)
class DemoSettings:
    """The toy-world recipe; `fast` shrinks it for a smoke test."""

    steps: int = 300
    learning_rate: float = 1e-4
    batch_size: int = 2
    num_class_images: int = 50
    images_per_prompt: int = 4
    inference_steps: int = STEPS
    train_text_encoder: bool = True  # [V] is learned in the text encoder too: the subject shows far more often

    @classmethod
    def fast(cls) -> "DemoSettings":
        return cls(steps=4, num_class_images=2, images_per_prompt=1, inference_steps=2)

    def train_config(self, model: Path, instance_dir: Path, class_noun: str, output_dir: Path) -> TrainConfig:
        """The recipe as a training config (docs/results.md varies it one option at a time)."""
        return TrainConfig(
            pretrained_model_name_or_path=str(model), instance_data_dir=str(instance_dir), class_noun=class_noun,
            output_dir=str(output_dir), num_class_images=self.num_class_images,
            class_inference_steps=self.inference_steps, max_train_steps=self.steps, learning_rate=self.learning_rate,
            train_batch_size=self.batch_size, random_flip=True, center_crop=True, report_to="none",
            train_text_encoder=self.train_text_encoder, checkpointing_steps=max(self.steps, 1),
            overwrite_output_dir=True)  # the demo and the paper tables always start over


def find_subject(name: str) -> tuple[Path, str]:
    """A shipped subject by name, or any folder with photos and a subject.json (see toyworld.subjects)."""
    folder = Path(name).expanduser() if Path(name).expanduser().is_dir() else EXAMPLES / name
    info = folder / "subject.json"
    if folder.parent != EXAMPLES and not info.is_file():  # the user's own photos
        raise DataError(f'--subject {name}: a folder of your photos needs a subject.json naming their class, '
                        f'e.g. {{"class_noun": "bag"}} in {info}')
    if not info.is_file():
        names = sorted(p.name for p in EXAMPLES.iterdir() if (p / "subject.json").is_file()) if EXAMPLES.is_dir() else []
        raise DataError(f"--subject {name}: no {info}; choose one of {', '.join(names) or '(none: run from a source checkout)'}")
    try:
        class_noun = json.loads(info.read_text())["class_noun"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f'--subject {name}: {info} must be JSON like {{"class_noun": "bag"}}') from None
    return folder, class_noun


def labelled_row(label: str, images: list[Image.Image], size: int = 128, label_width: int = 260) -> Image.Image:
    row = Image.new("RGB", (label_width + size * len(images), size), "white")
    ImageDraw.Draw(row).text((6, size // 2 - 6), label, fill="black")
    for i, image in enumerate(images):
        row.paste(image.convert("RGB").resize((size, size), Image.NEAREST), (label_width + i * size, 0))
    return row


def labelled_sheet(rows: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    """The rows stacked, each with its label on the left."""
    strips = [labelled_row(label, images) for label, images in rows]
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    for i, strip in enumerate(strips):
        sheet.paste(strip, (0, i * strip.height))
    return sheet


def write_report(rows: list[tuple[str, list[Image.Image]]], out: Path, timings: dict[str, float]) -> Path:
    """demo.png (one sheet) and index.html (the same rows, with the prompts as text) in `out`."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    labelled_sheet(rows).save(out / "demo.png")
    body = []
    for r, (label, images) in enumerate(rows):
        cells = []
        for i, image in enumerate(images):
            name = f"row{r:02d}-{i}.png"
            image.save(images_dir / name)
            cells.append(f'<img src="images/{name}" width="128" style="image-rendering:pixelated">')
        body.append(f"<tr><td>{html.escape(label)}</td><td>{''.join(cells)}</td></tr>")
    times = "".join(f"<li>{html.escape(k)}: {v:.1f} s</li>" for k, v in timings.items())
    page = (f"<!doctype html><meta charset='utf-8'><title>dreambooth demo</title><h1>DreamBooth demo</h1>"
            f"<table>{''.join(body)}</table><h2>Time</h2><ul>{times}</ul>")
    (out / "index.html").write_text(page)
    return out / "demo.png"


def default_model() -> Path:
    """The shipped toy-world model (a source checkout or an installed package carries it)."""
    if not (BASE_MODEL / "model_index.json").is_file():
        raise DataError(f"no toy-world base model at {BASE_MODEL}; pass --model, or rebuild it with "
                        f"`python -m dreambooth.toyworld.pretrain --out {BASE_MODEL}`")
    return BASE_MODEL


def run_demo(output: Path, subject: str = "striped-bag", model: Path | None = None, instance_dir: Path | None = None,
             class_noun: str | None = None, settings: DemoSettings = DemoSettings()) -> Path:
    """Personalize `model` on a subject and write the sheet and report into `output`."""
    if instance_dir is None:
        instance_dir, class_noun = find_subject(subject)
    model = model or default_model()
    timings, clock = {}, time.perf_counter()
    n, steps = settings.images_per_prompt, settings.inference_steps
    class_prompt = f"a {class_noun}"
    print(f"[1/4] base model: {n} samples of '{class_prompt}' before fine-tuning", flush=True)
    before = sample(load_pipeline(model), class_prompt, n, steps, GUIDANCE, seed=0)
    timings["samples before"] = time.perf_counter() - clock
    print(f"[2/4] DreamBooth with prior preservation: {settings.steps} steps (class images first)", flush=True)
    trained = train(settings.train_config(model, instance_dir, class_noun, output / "model"))
    timings["class images + training"] = time.perf_counter() - clock - sum(timings.values())
    print("[3/4] sampling the subject in new contexts and with new properties", flush=True)
    pipe = load_trained(trained)
    identifier = training_record(trained)["identifier"]
    prompts = [f"a {{identifier}} {{class_noun}} {c}" for c in NEW_CONTEXTS] + list(NEW_PROPERTIES)
    rows = [("subject photos (training)", [Image.open(p) for p in sorted(instance_dir.glob("*.png"))]),
            (f"before: {class_prompt}", before)]
    for template in prompts:
        prompt = fill_prompt(template, identifier, class_noun)
        rows.append((prompt, sample(pipe, prompt, n, steps, GUIDANCE, seed=0)))
    rows.append((f"after: {class_prompt}", sample(pipe, class_prompt, n, steps, GUIDANCE, seed=0)))
    timings["samples after"] = time.perf_counter() - clock - sum(timings.values())
    timings["total"] = time.perf_counter() - clock
    print("[4/4] writing the sheet and report", flush=True)
    sheet = write_report(rows, output, timings)
    print(f"done in {timings['total']:.0f} s: {sheet} and {output / 'index.html'}")
    return sheet
