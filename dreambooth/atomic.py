"""Durable writes: what is renamed into place must already be on disk."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def fsync(path: Path) -> None:
    """Flush one file's or folder's contents (a folder's: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, and `folder` itself."""
    for path in sorted(folder.rglob("*")) + [folder]:
        fsync(path)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename a fully written `tmp` onto `path`, with both the data and the rename on disk."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a crash leaves the old file (or none), never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    replace_durably(tmp, path)


def save_file_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, whole or not at all: a crash leaves the old file (or none)."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    replace_durably(tmp, path)
