"""The DreamBooth paper's Tables 1, 3 and 4, and the LoRA prior-mode comparison, on the toy world.

    python scripts/paper_tables.py --seeds 0 1 --markdown docs/results-tables.md

Every run (subject x seed x variant) trains with the demo's recipe changed in one option, samples
the toy-world DreamBench prompts 4 times each plus "a [class]", and is scored by `evaluate`
(dino-imgfocus and efficientnet-lite0, on whole images and on the object crops of the toy-world
locator; the world judge). Each run's scores land in
`--results` (committed: docs/results/runs/<subject>-<variant>-seed<N>.json, suffixed -steps<N>,
-frozen-text-encoder or -fast for another recipe) only when it is done, with the base model's
fingerprint and the recipe, so finished runs on the same base model and recipe are skipped and an
interrupted invocation, in this session or a later one, resumes where it stopped (a run on another
base model or recipe is done again); models and images go to `--work`. After the judge or the
locator is retrained, `--rescore` scores every finished run again from its images (nothing is
trained or sampled again); a finished run that lacks a metric added since is scored again that way
when it is reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from dreambooth.atomic import write_text_atomic
from dreambooth.class_images import model_fingerprint
from dreambooth.config import fill_prompt
from dreambooth.demo import BASE_MODEL, DemoSettings, labelled_sheet
from dreambooth.errors import DataError, positive_int, run_command
from dreambooth.evaluation.encoders import DEFAULT_ENCODERS, ImageEncoder, load_encoder
from dreambooth.evaluation.evaluate import evaluate, generate_images
from dreambooth.evaluation.metrics.prompt_fidelity import PromptScorer
from dreambooth.evaluation.prompts import load_prompts
from dreambooth.outputs import training_record
from dreambooth.toyworld import locator
from dreambooth.toyworld.judge import JudgeScorer
from dreambooth.toyworld.subjects import EXAMPLES
from dreambooth.toyworld.world import COLORS
from dreambooth.trainer import train

SUBJECTS = ("striped-bag", "two-tone-sneaker", "split-dress")
WRONG_NOUN = {"bag": "trouser", "sneaker": "dress", "dress": "sandal"}  # far-off classes, like the paper's "can"
LORA = {"lora": True, "lora_rank": 8, "learning_rate": 1e-3}
VARIANTS = {  # TrainConfig changes from the demo recipe
    "dreambooth": {},
    "no-prior": {"with_prior_preservation": False},
    "no-noun": {"with_prior_preservation": False, "class_noun": None, "instance_prompt": "a {identifier}"},
    "wrong-noun": {"with_prior_preservation": False},  # class_noun: WRONG_NOUN, set per subject
    "lora-images": LORA,
    "lora-prediction": {**LORA, "prior_mode": "prediction"},
}
GUIDANCE = 7.5
ENCODER_NAMES = (*DEFAULT_ENCODERS, *map(locator.crop_name, DEFAULT_ENCODERS))


@functools.cache
def encoders() -> list[ImageEncoder]:
    """The fidelity encoders on whole images, then the same on the locator's object crops (ENCODER_NAMES)."""
    whole = [load_encoder(name) for name in DEFAULT_ENCODERS]
    found = locator.load()
    return [*whole, *(locator.ObjectCrops(e, found) for e in whole)]


def subject_noun(subject: str) -> str:
    return json.loads((EXAMPLES / subject / "subject.json").read_text())["class_noun"]


def score(model: Path, texts: list[str], subject: str, identifier: str | None, seed: int, out: Path,
          settings: DemoSettings) -> dict:
    """Sample `texts` (plus "a [class]" for PRES) from `model` and score them against the subject photos."""
    noun = subject_noun(subject)
    images = generate_images(model, [*texts, f"a {noun}"], settings.images_per_prompt, seed, settings.inference_steps,
                             GUIDANCE, out / "images")
    return evaluate(images, EXAMPLES / subject, class_noun=noun, identifier=identifier, encoders=encoders(),
                    prompt_scorer=JudgeScorer())


def dreambooth_run(base: Path, subject: str, seed: int, variant: str, out: Path, settings: DemoSettings) -> dict:
    """Train one variant and score it on the toy-world prompts, with the noun it was trained with."""
    noun = subject_noun(subject)
    changes = {**VARIANTS[variant], "seed": seed}
    if variant == "wrong-noun":
        changes["class_noun"] = WRONG_NOUN[noun]
    if variant == "lora-images":  # its own class-image cache, so its time includes generating them
        changes["class_cache_dir"] = str(out / "class-images")
    cfg = settings.train_config(base, EXAMPLES / subject, noun, out / "model")
    started = time.perf_counter()
    model = train(dataclasses.replace(cfg, **changes))
    seconds = time.perf_counter() - started
    identifier = training_record(model)["identifier"]
    texts = [fill_prompt(t, identifier, changes.get("class_noun", noun)) for t in load_prompts("toyworld")]
    return {**score(model, texts, subject, identifier, seed, out, settings), "train_seconds": seconds}


def base_run(base: Path, subject: str, seed: int, out: Path, settings: DemoSettings) -> dict:
    """The base model's best description of the subject (no DreamBooth): the lower bound of Table 1.

    Candidates: the class alone, each color, and the subject's two colors; the one with the best DINO
    on 4 samples replaces [V] in the evaluation prompts."""
    noun, colors = subject_noun(subject), json.loads((EXAMPLES / subject / "subject.json").read_text())["colors"]
    candidates = ["", *COLORS, f"{colors[0]} and {colors[1]}"]
    probes = evaluate(generate_images(base, [f"a {c} {noun}".replace("  ", " ") for c in candidates],
                                      settings.images_per_prompt, seed, settings.inference_steps, GUIDANCE,
                                      out / "probes"),
                      EXAMPLES / subject, div_features=None)  # no class noun: "a bag" is a candidate, not PRES
    dino = [next(r["value"] for r in p["metrics"] if r["metric"] == "DINO") for p in probes["prompts"]]
    best = candidates[dino.index(max(dino))]
    texts = [fill_prompt(t, best, noun).replace("  ", " ") for t in load_prompts("toyworld")]
    return {**score(base, texts, subject, None, seed, out / "eval", settings), "best_description": best}


def run_name(subject: str, variant: str, seed: int, settings: DemoSettings) -> str:
    """<subject>-<variant>-seed<N>, plus what differs from the recipe, so runs of other recipes never mix."""
    name = f"{subject}-{variant}-seed{seed}"
    if settings != DemoSettings(steps=settings.steps, train_text_encoder=settings.train_text_encoder):
        return f"{name}-fast"
    if variant == "base":  # the base model is not trained
        return name
    if settings.steps != DemoSettings.steps:
        name += f"-steps{settings.steps}"
    return name if settings.train_text_encoder else f"{name}-frozen-text-encoder"


def recipe(settings: DemoSettings, variant: str) -> dict:
    """What a run's result depends on besides the base model (the untrained base model: only its sampling)."""
    fields = dataclasses.asdict(settings)
    return {k: fields[k] for k in ("images_per_prompt", "inference_steps")} if variant == "base" else fields


def run(results: Path, work: Path, base: Path, subject: str, seed: int, variant: str, settings: DemoSettings) -> dict:
    """A finished run's result on this base model and recipe, or train and score it now (a half-done
    run, or one on another base model or recipe, is started afresh)."""
    folder = work / run_name(subject, variant, seed, settings)
    result_file = results / f"{folder.name}.json"
    work.mkdir(parents=True, exist_ok=True)  # also holds the fingerprint memo
    fingerprint = model_fingerprint(base, memo_dir=work)
    made_with = {"base_model": fingerprint, "recipe": recipe(settings, variant)}
    redo = ""
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if all(result.get(key) == value for key, value in made_with.items()):
            scored_with = {r["encoder"] for r in result["summary"]}
            return result if scored_with >= set(ENCODER_NAMES) else rescore(result_file, JudgeScorer())
        redo = " (made on another base model or recipe: done again)"
    shutil.rmtree(folder, ignore_errors=True)
    print(f"== {folder.name}{redo}", flush=True)
    result = (base_run(base, subject, seed, folder, settings) if variant == "base"
              else dreambooth_run(base, subject, seed, variant, folder, settings))
    result.update(made_with)
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(result_file, json.dumps(result, indent=2))
    return result


def rescore(result_file: Path, scorer: PromptScorer) -> dict:
    """A finished run scored again from the images it was scored on, with the current encoders, locator
    and judge; what scoring does not give (training time, base model, recipe) is kept."""
    result = json.loads(result_file.read_text())
    subjects = [s.name for s in EXAMPLES.iterdir() if result_file.name.startswith(f"{s.name}-")]
    if not subjects or not result.get("prompts"):
        raise DataError(f"{result_file}: not a finished run of a subject in {EXAMPLES}; move it out of --results")
    images = Path(result["prompts"][0]["images"][0]).parents[1]  # <images>/<prompt folder>/<image>
    if not images.is_dir():
        raise DataError(f"{result_file}: its images in {images} are gone; delete the file to make the run again")
    if result_file.stem not in images.parts:  # a result renamed by hand still names its old folder
        raise DataError(f"{result_file}: it lists another run's images ({images}); delete the file to make the run again")
    scores = evaluate(images, EXAMPLES / max(subjects, key=len), class_noun=result["class_noun"],
                      identifier=result["identifier"], encoders=encoders(), prompt_scorer=scorer)
    if [p["images"] for p in scores["prompts"]] != [p["images"] for p in result["prompts"]]:
        raise DataError(f"{result_file}: the images in {images} are no longer the ones it was scored on; "
                        "delete the file to make the run again")
    result.update({key: value for key, value in scores.items() if key != "generation"})
    write_text_atomic(result_file, json.dumps(result, indent=2))
    return result


def metric(result: dict, name: str, encoder: str, rows: str = "summary") -> float:
    return next(r["value"] for r in result[rows] if r["metric"] == name and r["encoder"] == encoder)


COLUMNS = {  # column title -> how to read it off a result
    "DINO (dino-imgfocus)": lambda r: metric(r, "DINO", "dino-imgfocus"),
    "fidelity (efficientnet-lite0)": lambda r: metric(r, "fidelity", "efficientnet-lite0"),
    "DINO, object crops": lambda r: metric(r, "DINO", locator.crop_name("dino-imgfocus")),
    "fidelity, object crops": lambda r: metric(r, "fidelity", locator.crop_name("efficientnet-lite0")),
    "prompt fidelity (judge)": lambda r: metric(r, "prompt fidelity", "toy-world-judge"),
    "PRES (dino-imgfocus) ↓": lambda r: metric(r, "PRES", "dino-imgfocus"),
    "PRES, object crops ↓": lambda r: metric(r, "PRES", locator.crop_name("dino-imgfocus")),
    "DIV (lpips-style)": lambda r: next(x["value"] for x in r["summary"] if x["metric"] == "DIV"),
    "train time (s)": lambda r: r["train_seconds"],
}


FIDELITY = ["DINO (dino-imgfocus)", "fidelity (efficientnet-lite0)", "DINO, object crops", "fidelity, object crops"]


def cell(results: list[dict], column: str) -> str:
    values = [COLUMNS[column](r) for r in results]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(title: str, rows: dict[str, list[dict]], columns: list[str]) -> str:
    lines = [f"### {title}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(rs, c) for c in columns) + " |" for name, rs in rows.items()]
    return "\n".join(lines) + "\n"


def paired(better: list[dict], worse: list[dict], column: str) -> str:
    """The paper says `better` beats `worse` on `column`: mean ± std of the per subject x seed
    difference (signed so that > 0 agrees with the paper), and in how many pairs it agrees."""
    sign = -1 if column.endswith("↓") else 1
    diffs = [sign * (COLUMNS[column](b) - COLUMNS[column](w)) for b, w in zip(better, worse, strict=True)]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.3f} ± {spread:.3f} | {sum(d > 0 for d in diffs)}/{len(diffs)}"


def conclusions(results: dict[str, list[dict]]) -> str:
    """Each of the paper's claims as a paired comparison over the same subjects and seeds."""
    claims = [  # (claim, better, worse, columns)
        ("DreamBooth beats the base model's best description", "dreambooth", "base", FIDELITY),
        ("prior preservation lowers PRES", "dreambooth", "no-prior", ["PRES (dino-imgfocus) ↓", "PRES, object crops ↓"]),
        ("prior preservation raises DIV", "dreambooth", "no-prior", ["DIV (lpips-style)"]),
        ("prior preservation costs a little fidelity", "no-prior", "dreambooth", FIDELITY),
        ("without the prior, DreamBooth beats the base model's best description", "no-prior", "base", FIDELITY),
        ("the correct class noun beats no noun", "no-prior", "no-noun", FIDELITY),
        ("the correct class noun beats a wrong noun", "no-prior", "wrong-noun", FIDELITY),
    ]
    lines = ["### The paper's conclusions, paired by subject and seed", "",
             "| claim | metric | difference (> 0 agrees) | pairs that agree |", "|---|---|---|---|"]
    lines += [f"| {claim} | {column} | {paired(results[b], results[w], column)} |"
              for claim, b, w, columns in claims if b in results and w in results for column in columns]
    return "\n".join(lines) + "\n"


def per_run(results: dict[str, list[dict]], subjects: list[str], seeds: list[int]) -> str:
    """Every run's own scores (the tables' cells are their means), seed-major as the runs are."""
    columns = [c for c in COLUMNS if c != "train time (s)"]
    lines = ["### Per run", "", "| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, runs in results.items():
        for (seed, subject), result in zip(itertools.product(seeds, subjects), runs, strict=True):
            lines.append(f"| {subject}, seed {seed}, {variant} | " + " | ".join(f"{COLUMNS[c](result):.3f}" for c in columns)
                         + " |")
    return "\n".join(lines) + "\n"


def real_ceiling(results: list[dict], subjects: int) -> list[dict]:
    """Real vs. real photos, once per subject (the first seed's runs), shaped like a result."""
    return [{"summary": r["real_vs_real"]} for r in results[:subjects]]


def sample_sheet(results: dict[str, list[dict]], subjects: list[str], subject: str, out: Path) -> None:
    """One subject's photos, then the first sample of every evaluation prompt for DreamBooth, no
    prior preservation and the base model's best description, first seed."""
    index = subjects.index(subject)  # results are seed-major, so the first seed's runs come first
    rows = [("real photos", [Image.open(p) for p in sorted((EXAMPLES / subject).glob("*.png"))])]
    for label, variant in (("DreamBooth", "dreambooth"), ("without prior preservation", "no-prior"),
                           ("base model, best description", "base")):
        images = [Path(p["images"][0]) for p in results[variant][index]["prompts"]]
        if not all(f.is_file() for f in images):
            raise SystemExit(f"--sheet: the images of {subject}-{variant} are gone from --work; run it again to get them")
        rows.append((label, [Image.open(f) for f in images]))
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_sheet(rows).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS))
    parser.add_argument("--tables", nargs="+", choices=["1", "3", "4", "prior-mode"],
                        default=["1", "3", "4", "prior-mode"])
    parser.add_argument("--results", type=Path, default=Path("docs/results/runs"), help="one JSON per finished run")
    parser.add_argument("--work", type=Path, default=Path("~/.cache/dreambooth/paper-tables"), help="models, images")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument("--model", type=Path, default=BASE_MODEL, help="base model (default: the shipped one)")
    parser.add_argument("--sheet", type=Path, default=None, help="also draw the first subject's samples here (PNG)")
    parser.add_argument("--fast", action="store_true", help="the demo's smoke-test recipe (checks the script only)")
    parser.add_argument("--steps", type=positive_int, default=DemoSettings.steps,
                        help="training steps (another value than the recipe's is kept apart: <run>-steps<N>.json)")
    parser.add_argument("--frozen_text_encoder", action="store_true",
                        help="the recipe with the text encoder frozen (kept apart: <run>-frozen-text-encoder.json)")
    parser.add_argument("--rescore", action="store_true",
                        help="first score every finished run again from its images (after a new judge or locator)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--per_run", action="store_true", help="also list every run's own scores")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work.expanduser()
    needed = {"1": ["dreambooth", "base"], "3": ["dreambooth", "no-prior", "base"], "4": ["no-prior", "no-noun", "wrong-noun"],
              "prior-mode": ["lora-images", "lora-prediction"]}
    variants = list(dict.fromkeys(v for t in args.tables for v in needed[t]))
    if args.sheet and not {"dreambooth", "no-prior", "base"} <= set(variants):
        parser.error("--sheet draws DreamBooth, no prior and the base model: add --tables 3")
    for subject in args.subjects:
        if not (EXAMPLES / subject / "subject.json").is_file():
            parser.error(f"--subjects {subject}: not a subject in {EXAMPLES}; choose from {', '.join(SUBJECTS)}")
        if "4" in args.tables and subject_noun(subject) not in WRONG_NOUN:
            parser.error(f"--subjects {subject}: Table 4 has no wrong noun for {subject_noun(subject)!r} (WRONG_NOUN)")
    if args.fast and args.steps != DemoSettings.steps:
        parser.error("--fast has its own step count; drop --steps")
    settings = dataclasses.replace(DemoSettings.fast(), images_per_prompt=2) if args.fast else DemoSettings(steps=args.steps)
    settings = dataclasses.replace(settings, train_text_encoder=not args.frozen_text_encoder)
    if args.rescore:
        scorer = JudgeScorer()
        for result_file in sorted(args.results.glob("*.json")):
            rescore(result_file, scorer)
    results = {v: [] for v in variants}
    for seed in args.seeds:  # seed-major, so an interrupted invocation leaves whole subject x seed comparisons
        for subject in args.subjects:
            for v in variants:
                results[v].append(run(args.results, work, args.model, subject, seed, v, settings))
    text = []
    if "1" in args.tables:
        text.append(table("Table 1 analog: subject and prompt fidelity", {
            "real images (ceiling)": real_ceiling(results["dreambooth"], len(args.subjects)), "DreamBooth": results["dreambooth"],
            "base model, best description (no DreamBooth)": results["base"]}, FIDELITY)
            + "\n" + table("Table 1 analog: prompt fidelity", {
                "DreamBooth": results["dreambooth"], "base model, best description": results["base"]},
                ["prompt fidelity (judge)"]))
    if "3" in args.tables:
        text.append(table("Table 3 analog: prior preservation", {
            "DreamBooth (with prior preservation)": results["dreambooth"], "without prior preservation": results["no-prior"],
            "base model, no fine-tuning (reference)": results["base"]},
            ["PRES (dino-imgfocus) ↓", "PRES, object crops ↓", "DIV (lpips-style)", *FIDELITY,
             "prompt fidelity (judge)"]))
    if "4" in args.tables:
        text.append(table("Table 4 analog: the class noun (no prior preservation)", {
            "correct class noun": results["no-prior"], "no class noun": results["no-noun"],
            "wrong class noun": results["wrong-noun"]}, FIDELITY))
    if "prior-mode" in args.tables:
        text.append(table("LoRA prior target: class images vs. the frozen model's prediction", {
            "--prior_mode images": results["lora-images"], "--prior_mode prediction": results["lora-prediction"]},
            ["PRES (dino-imgfocus) ↓", "PRES, object crops ↓", *FIDELITY, "prompt fidelity (judge)", "train time (s)"]))
    if {"1", "3", "4"} & set(args.tables):
        text.append(conclusions(results))
    if args.per_run:
        text.append(per_run(results, args.subjects, args.seeds))
    n = f"{len(args.subjects)} subjects x {len(args.seeds)} seeds"
    output = f"Mean ± std over {n} (`python scripts/paper_tables.py {' '.join(sys.argv[1:])}`).\n\n"
    output += "\n".join(text)
    print(output)
    if args.markdown:
        args.markdown.write_text(output)
    if args.sheet:
        sample_sheet(results, args.subjects, args.subjects[0], args.sheet)


if __name__ == "__main__":
    sys.exit(run_command(main))
