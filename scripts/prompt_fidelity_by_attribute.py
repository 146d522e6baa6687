"""What the judge's prompt fidelity is made of: the hit rate of each named attribute, per variant.

    python scripts/prompt_fidelity_by_attribute.py --variants dreambooth no-prior base

Reads the finished runs of scripts/paper_tables.py (their JSON in --results, and the images each
lists) and lets the shipped judge read every sample again, attribute by attribute: a drop in
prompt fidelity may come from context (the identifier pulling samples toward the training photos),
class or color.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from dreambooth.errors import DataError, run_command
from dreambooth.evaluation.evaluate import scored_images, without_identifier
from dreambooth.toyworld import judge


def hit_rates(runs: list[dict], reader: judge.Judge) -> dict[str, tuple[float, int]]:
    """Per attribute: the fraction of samples whose reading matches the prompt, and how many were read."""
    hits: dict[str, list[bool]] = {}
    for run in runs:
        for p in run["prompts"]:
            named = judge.parse_prompt(without_identifier(p["prompt"], run["identifier"]))
            readings = judge.read(reader, scored_images(p))
            for key, value in named.items():
                hits.setdefault(key, []).extend(r[key] == value for r in readings)
    return {key: (statistics.mean(v), len(v)) for key, v in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["dreambooth", "no-prior", "base"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--results", type=Path, default=Path("docs/results/runs"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    reader = judge.load()
    print("| variant | context | class | color |\n|---|---|---|---|")
    for variant in args.variants:
        files = [f for s in args.seeds for f in sorted(args.results.glob(f"*-{variant}-seed{s}.json"))]
        if not files:
            raise DataError(f"{variant}: no finished runs in {args.results}; run scripts/paper_tables.py first")
        try:
            rates = hit_rates([json.loads(f.read_text()) for f in files], reader)
        except DataError as error:
            raise DataError(f"{variant}: {error}") from None
        cells = [f"{rates[k][0]:.3f} (n={rates[k][1]})" if k in rates else "–" for k in ("context", "class", "color")]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(run_command(main))
