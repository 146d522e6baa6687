"""Score a personalized model (or images it already generated) with the paper's metrics.

Image-folder layout (the one `dreambooth generate` writes, so its output folders can be scored as they
are): one sub-folder per prompt, holding that prompt's images and a `prompt.txt` with the exact text
they were generated from (identifier filled in). A sub-folder whose prompt is "a {class_noun}" holds the
fine-tuned model's plain class images and is scored as PRES instead of as a subject prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from dreambooth.data.images import IMAGE_SUFFIXES, load_rgb, to_rgb
from dreambooth.config import fill_prompt
from dreambooth.errors import ConfigError, DataError
from dreambooth.evaluation.encoders import DEFAULT_ENCODERS, EfficientNetLite0, ImageEncoder, load_encoder
from dreambooth.evaluation.metrics import div as div_metric
from dreambooth.evaluation.metrics.fidelity import label, self_similarity, subject_fidelity
from dreambooth.evaluation.metrics.pres import pres
from dreambooth.evaluation.metrics.prompt_fidelity import PromptScorer
from dreambooth.evaluation.prompts import load_prompts, prompt_set_for
from dreambooth.outputs import is_model_folder, load_trained, training_record

PROMPT_FILE = "prompt.txt"


@dataclass
class PromptImages:
    """The images generated for one prompt, and where they are on disk (for the report)."""

    prompt: str
    images: list[Image.Image]
    paths: list[Path] = field(default_factory=list)


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Decoded as training decodes the photos: upright 8-bit RGB, transparency over white."""
    return [load_rgb(path) for path in paths]


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted; `grid.png` previews are not samples."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name != "grid.png")


def load_image_folder(folder: Path) -> list[PromptImages]:
    """Read the layout described in the module docstring."""
    sets = []
    for sub in sorted(p for p in folder.iterdir() if (p / PROMPT_FILE).is_file()):
        paths = image_files(sub)
        if paths:
            sets.append(PromptImages((sub / PROMPT_FILE).read_text(encoding="utf-8").strip(), open_images(paths), paths))
    if not sets:
        raise DataError(f"{folder}: no sub-folder with {PROMPT_FILE} and images; "
                        "pass a model folder or one sub-folder per prompt (see docs/evaluation.md)")
    return sets


def generate_images(model: Path, prompts: Sequence[str], n_per_prompt: int, seed: int, steps: int,
                    guidance: float, out: Path, base: str | Path | None = None) -> Path:
    """Sample every (filled) prompt with the same seeds (image i uses seed + i) into `out` in the folder layout,
    at the size the model was trained at (as `generate` and the validation grids), else its native size."""
    from dreambooth.generate import sample  # diffusers import only when generating

    pipe = load_trained(model, base)
    trained_at = training_record(model).get("resolution")
    with tqdm(total=len(prompts) * n_per_prompt, desc="sampling for evaluation", unit="img") as bar:
        for index, prompt in enumerate(prompts):
            folder = out / f"{index:02d}-{re.sub(r'[^a-z0-9]+', '-', prompt.lower()).strip('-')[:60]}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(sample(pipe, prompt, n_per_prompt, steps, guidance, seed, trained_at, bar=bar)):
                image.save(folder / f"{seed + i:06d}.png")
            (folder / PROMPT_FILE).write_text(prompt + "\n", encoding="utf-8")
    return out


def without_identifier(prompt: str, identifier: str | None) -> str:
    """The prompt as CLIP-T reads it: the rare-token identifier removed (the usual convention), in any case
    and with a possessive ("zwx's"), as CLIP's tokenizer would read it."""
    if not identifier:
        return prompt
    return " ".join(re.sub(rf"(?<!\w){re.escape(identifier)}(?:'s)?(?!\w)", " ", prompt, flags=re.IGNORECASE).split())


def _same_prompt(a: str, b: str) -> bool:
    return a.lower().split() == b.lower().split()


def row(metric: str, encoder: str, value: float | None) -> dict[str, Any]:
    return {"metric": metric, "encoder": encoder, "value": value}


def counted(summary_row: dict[str, Any], prompts: int, images: int) -> dict[str, Any]:
    """A summary number with how many prompts and images it was computed from."""
    return {**summary_row, "prompts": prompts, "images": images}


def score(sets: Sequence[PromptImages], real_images: Sequence[Image.Image], class_noun: str | None,
          identifier: str | None, encoders: Sequence[ImageEncoder], prompt_scorer: PromptScorer | None = None,
          div_features: div_metric.FeatureMaps | None = None) -> dict[str, Any]:
    """Per-prompt and mean metrics; every number carries the encoder (or scorer) that produced it."""
    class_prompt = f"a {class_noun}" if class_noun else None
    if class_prompt is not None:  # PRES is scored on these; unfound, they would be scored as the subject's
        found = [s.prompt for s in sets if _same_prompt(s.prompt, class_prompt)]
        if len(found) != 1:
            raise DataError(f"{len(found)} sets of images have the prompt '{class_prompt}' (the class images PRES "
                            f"is scored on); give exactly one (prompts found: {'; '.join(s.prompt for s in sets)})")
    real = {e.name: e.embed(list(real_images)) for e in encoders}
    per_prompt, pres_rows, class_images = [], [], None
    for s in sets:
        emb = {e.name: e.embed(s.images) for e in encoders}
        if class_prompt is not None and _same_prompt(s.prompt, class_prompt):
            pres_rows = [counted(row("PRES", e.name, pres(emb[e.name], real[e.name])), 1, len(s.images))
                         for e in encoders]
            class_images = {"prompt": s.prompt, "images": [str(p) for p in s.paths], "num_images": len(s.images)}
            continue
        rows = [row(label(e), e.name, subject_fidelity(emb[e.name], real[e.name])) for e in encoders]
        if prompt_scorer is not None:
            rows.append(row("prompt fidelity", prompt_scorer.name,
                            prompt_scorer(s.images, without_identifier(s.prompt, identifier))))
        if div_features is not None and len(s.images) >= 2:
            rows.append(row("DIV", div_metric.metric_name(div_features), div_metric.div(div_features, s.images)))
        per_prompt.append({"prompt": s.prompt, "images": [str(p) for p in s.paths], "num_images": len(s.images),
                           "metrics": rows})
    if not per_prompt:
        raise DataError("no subject prompts to score (only the class prompt was found)")
    div_unscored = []  # asked for, but no prompt has two images to compare: said, not left out
    if div_features is not None and not any(r["metric"] == "DIV" for p in per_prompt for r in p["metrics"]):
        div_unscored = [counted(row("DIV", div_metric.metric_name(div_features), None), 0, 0)]
    return {
        "class_noun": class_noun, "identifier": identifier,
        "summary": means(per_prompt) + div_unscored + pres_rows,
        "real_vs_real": [counted(row(label(e), e.name, self_similarity(real[e.name])), 0, len(real_images))
                         for e in encoders],
        "prompts": per_prompt,
        "class_images": class_images,  # the images PRES was scored on
    }


def means(per_prompt: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (metric, encoder)'s mean over the prompts it was scored on (each prompt weighs the same, whatever
    its number of images), with how many prompts and images those were."""
    summary = []
    for key in dict.fromkeys((r["metric"], r["encoder"]) for p in per_prompt for r in p["metrics"]):
        scored = [(p, r["value"]) for p in per_prompt for r in p["metrics"] if (r["metric"], r["encoder"]) == key]
        mean = sum(value for _, value in scored) / len(scored)
        summary.append(counted(row(*key, mean), len(scored), sum(p["num_images"] for p, _ in scored)))
    return summary


def scored_images(prompt_result: dict[str, Any]) -> list[Image.Image]:
    """The images one prompt of a scored result lists, opened again."""
    missing = next((i for i in prompt_result["images"] if not Path(i).is_file()), None)
    if missing:
        raise DataError(f"{missing}: an image this result was scored on is gone; generate and score it again")
    return open_images([Path(i) for i in prompt_result["images"]])


def evaluate(source: Path | Sequence[PromptImages], real_images: Path | Sequence[Image.Image], *,
             class_noun: str | None = None, identifier: str | None = None,
             prompts: str | Path | Sequence[str] | None = None,
             encoders: Sequence[str | ImageEncoder] = DEFAULT_ENCODERS, prompt_scorer: PromptScorer | None = None,
             div_features: div_metric.FeatureMaps | str | None = "efficientnet-lite0",
             n_per_prompt: int = 4, seed: int = 0, steps: int = 50, guidance: float = 7.5,
             out: Path | None = None, base: str | Path | None = None) -> dict[str, Any]:
    """Score `source`: a model folder (sampled into `out/images` first), an image folder, or PromptImages.

    For a model folder, `identifier`/`class_noun` default to those it was trained with; `prompts`
    (templates, "object", "live" or a file; default: the paper's list for the class) are sampled
    `n_per_prompt` times with seeds seed..seed+n-1, plus "a {class_noun}" for PRES. For images, pass
    `class_noun` (to find the PRES folder) and `identifier` (removed from prompts for prompt fidelity).
    `div_features` is "efficientnet-lite0", any `FeatureMaps`, or None to skip DIV. `base`: the base
    model of a LoRA folder, if not the one recorded at training.
    """
    # every input is checked, and every encoder loaded, before any image is generated (hours on a big model)
    if isinstance(real_images, Path) and not real_images.is_dir():
        raise DataError(f"{real_images}: not a folder; pass the folder of the subject's real photos")
    # images given in memory are read as files are: upright RGB, transparency over white
    real = open_images(image_files(real_images)) if isinstance(real_images, Path) else [to_rgb(i) for i in real_images]
    if len(real) < 2:
        raise DataError("evaluation needs at least 2 real subject photos (the paper uses 3-6)")
    if isinstance(source, Path) and source.is_dir() and not is_model_folder(source) and not class_noun:
        # unfound, the class images would be scored as the subject's
        raise ConfigError("scoring a folder of images needs --class_noun: its 'a <class noun>' folder is scored "
                          "as PRES")
    image_encoders = [load_encoder(e) if isinstance(e, str) else e for e in encoders]
    if isinstance(div_features, str):
        div_features = next((e for e in image_encoders if e.name == div_features and hasattr(e, "feature_maps")),
                            None) or load_div_features(div_features)
    protocol = None
    if isinstance(source, Path) and is_model_folder(source):
        record = training_record(source)
        identifier, class_noun = identifier or record.get("identifier"), class_noun or record.get("class_noun")
        if not class_noun:
            raise ConfigError(f"{source} records no class noun; pass --class_noun")
        if out is None:
            raise ConfigError("evaluating a model generates images; pass --output_dir for them")
        if prompts is None or isinstance(prompts, (str, Path)):
            prompts = load_prompts(prompts or prompt_set_for(class_noun))
        if not identifier and any("{identifier}" in t for t in prompts):
            raise ConfigError(f"{source} records no identifier (it was trained on a literal prompt); pass "
                              "--identifier, the word your prompt named the subject by")
        if (out / "images").is_dir() and any((out / "images").iterdir()):
            raise ConfigError(f"--output {out} holds an earlier evaluation's images, which would be scored too; "
                              "pass a new --output folder or delete that one")
        texts = [fill_prompt(t, identifier, class_noun) for t in prompts]
        if any(_same_prompt(text, f"a {class_noun}") for text in texts):
            raise ConfigError(f"--prompts: 'a {class_noun}' is sampled anyway, as the class images PRES is scored "
                              "on; drop it from the list")
        texts.append(f"a {class_noun}")
        protocol = {"model": str(source), "n_per_prompt": n_per_prompt, "seed": seed, "steps": steps,
                    "guidance": guidance, **({"base": str(base)} if base else {})}
        source = generate_images(source, texts, n_per_prompt, seed, steps, guidance, out / "images", base)
    if isinstance(source, Path) and not source.is_dir():
        raise DataError(f"{source}: not a folder; pass a model folder or a folder of generated images")
    sets = (load_image_folder(source) if isinstance(source, Path)
            else [PromptImages(s.prompt, [to_rgb(i) for i in s.images], s.paths) for s in source])
    with torch.no_grad():
        result = score(sets, real, class_noun, identifier, image_encoders, prompt_scorer, div_features)
    return {"generation": protocol, **result}


def load_div_features(name: str) -> div_metric.FeatureMaps:
    """The DIV feature extractor by name (only the offline EfficientNet-Lite0 today)."""
    if name != EfficientNetLite0.name:
        raise ConfigError(f"div_features {name!r}: unknown; use efficientnet-lite0")
    return EfficientNetLite0()
