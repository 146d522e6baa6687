"""metrics.jsonl: one JSON line per optimizer step, consistent with the checkpoint a run resumed from."""

from __future__ import annotations

import json
from pathlib import Path

from dreambooth.atomic import write_text_atomic

FILE = "metrics.jsonl"


def read(output_dir: Path) -> list[dict]:
    """Complete rows only: a line cut short by a crash is dropped."""
    path = output_dir / FILE
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def restart_at(output_dir: Path, step: int) -> None:
    """Keep rows up to `step` (the resumed checkpoint; 0 = a fresh run) and drop the rest, atomically."""
    path = output_dir / FILE
    if not path.exists():
        return
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in read(output_dir) if r["step"] <= step))


def append(output_dir: Path, row: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
