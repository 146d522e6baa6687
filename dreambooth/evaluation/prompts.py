"""The paper's evaluation prompts (DreamBench: 25 for objects, 25 for live subjects) and user prompt files."""

from __future__ import annotations

from pathlib import Path

from dreambooth.errors import DataError

PROMPT_DIR = Path(__file__).resolve().parent.parent / "assets" / "dreambench"
PROMPT_SETS = ("object", "live", "toyworld")  # toyworld: the object prompts the toy world can draw
LIVE_CLASSES = {"dog", "cat"}  # the paper's live subjects (9 of its 30) are dogs and cats


def prompt_set_for(class_noun: str) -> str:
    """Which of the paper's prompt lists suits a subject: "live" for animals, "object" otherwise."""
    return "live" if class_noun.strip().lower() in LIVE_CLASSES else "object"


def load_prompts(name_or_path: str | Path) -> list[str]:
    """Prompt templates ({identifier}, {class_noun}) from "object", "live", "toyworld" (also spelled
    "dreambench-object", ...) or a text file, one per line.

    Blank lines and lines starting with "#" (e.g. a source/licence note) are skipped.
    """
    name = str(name_or_path).removeprefix("dreambench-")
    path = PROMPT_DIR / f"prompts_{name}.txt" if name in PROMPT_SETS else Path(name_or_path)
    if not path.is_file():
        raise DataError(f"--prompts {name_or_path}: no such file; use dreambench-object, dreambench-live, "
                        "dreambench-toyworld or a text file of prompts")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"--prompts {path}: no prompts in the file; write one prompt per line")
    return prompts
