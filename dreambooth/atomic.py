"""Durable writes: what is renamed into place must already be on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
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


def umask_modes(path: Path) -> None:
    """Give `path` (and all under it) the mode a new file or folder gets from the umask: safetensors and
    mkstemp write files as 0600, which other users of a shared model folder or cache cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for entry in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, and `folder` itself."""
    for path in sorted(folder.rglob("*")) + [folder]:
        fsync(path)


@contextlib.contextmanager
def removed_on_failure(partial: Path, remove: bool = True, writing: Path | None = None):
    """If the block fails, delete `partial` (a file or folder it was writing) at once, so a full disk gets
    its space back, and re-raise a full disk as OSError(ENOSPC) naming `writing` (default: `partial`).
    `remove=False` for a process that shares `partial` with others still writing into it."""
    try:
        yield
    except BaseException as exc:
        if remove and partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif remove:
            partial.unlink(missing_ok=True)
        error = disk_full(exc, writing or partial)
        if error is exc:  # not a full disk: as it was, not as its own cause
            raise
        raise error from exc


def write_atomic(path: Path, write: Callable[[Path], object], unique: bool = False) -> None:
    """`write(tmp)` to a temp file beside `path`, then rename it onto `path` durably: readers see the old
    file (or none) or the whole new one. The temp file is `path` + ".tmp", which the next write replaces
    if a crash left one; `unique` gives each write a hidden one of its own (".<name>.<random>.tmp"), for
    files that several processes may write at once, such as a shared cache's."""
    if unique:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = path.with_name(path.name + ".tmp")
    with removed_on_failure(tmp, writing=path):
        write(tmp)
        umask_modes(tmp)  # mkstemp's and safetensors' 0600 would keep other users out
        replace_durably(tmp, path)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename a fully written `tmp` onto `path`, with both the data and the rename on disk."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a crash leaves the old file (or none), never half of one."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_file_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, whole or not at all: a crash leaves the old file (or none)."""
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
