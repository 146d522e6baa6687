"""Check `dreambooth import`'s built-in configs at full size, where the tests (tiny models) cannot.

A family's published architecture is built at random weights, exported as one original-layout file
(`dreambooth export`), and imported back with the configs the file's keys and metadata select (no
--family, no --config); every
weight must come back exactly, and the imported folder must carry the same configs.

    python scripts/check_import.py --family sd1
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from dreambooth.single_file import export_single_file, weight_files
from dreambooth.single_file_import import FAMILIES, import_single_file
from dreambooth.toyworld.random_model import build_random_published


def tensor_files(folder: Path, part: str) -> dict[str, Path]:
    """Tensor name -> the file (shard) that holds it."""
    out = {}
    for file in weight_files(folder, part):
        with safe_open(str(file), "pt") as handle:
            out.update(dict.fromkeys(handle.keys(), file))
    return out


def read(file: Path, key: str) -> torch.Tensor:
    with safe_open(str(file), "pt") as handle:
        return handle.get_tensor(key)


def same_weights(a: Path, b: Path, part: str) -> tuple[int, list[str]]:
    """(tensors compared, names that differ), one tensor in memory at a time."""
    fa, fb = tensor_files(a, part), tensor_files(b, part)
    if fa.keys() != fb.keys():
        return 0, sorted(fa.keys() ^ fb.keys())
    return len(fa), [k for k in fa if not torch.equal(read(fa[k], k), read(fb[k], k))]


def config(folder: Path, part: str) -> dict:
    """A part's config without the bookkeeping keys (library versions, dtype)."""
    values = json.loads((folder / part / "config.json").read_text())
    return {k: v for k, v in values.items() if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="sd1")
    args = parser.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        original = build_random_published(args.family, tmp / "original")
        file = export_single_file(original, tmp / "model.safetensors")
        imported = import_single_file(file, tmp / "imported")  # the family told by the file alone
        results = {}
        for part in sorted(p.name for p in original.iterdir() if p.name.startswith(("unet", "vae", "text_encoder"))):
            count, differ = same_weights(original, imported, part)
            results[part] = {"tensors": count, "differ": differ[:5], "same_config": config(original, part) == config(imported, part)}
    ok = all(r["tensors"] and not r["differ"] and r["same_config"] for r in results.values())
    print(json.dumps({"family": args.family, "ok": ok, "parts": results, "seconds": round(time.time() - start),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)}, indent=1))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
