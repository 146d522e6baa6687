"""Durable writes: what is renamed into place must already be on disk."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from dreambooth.errors import disk_full


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


def _whole_or_nothing(write, tmp: Path, path: Path) -> None:
    """`write(tmp)`, then rename it onto `path`; on any failure (a full disk) remove `tmp`."""
    try:
        write(tmp)
        replace_durably(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise disk_full(exc, path) from exc


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename a fully written `tmp` onto `path`, with both the data and the rename on disk."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a crash leaves the old file (or none), never half of one."""
    _whole_or_nothing(lambda tmp: tmp.write_text(text), path.with_name(path.name + ".tmp"), path)


def save_file_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, whole or not at all: a crash leaves the old file (or none)."""
    _whole_or_nothing(lambda tmp: save_file(tensors, tmp, metadata=metadata), path.with_name(path.name + ".tmp"), path)
