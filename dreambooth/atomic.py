"""Durable writes: what is renamed into place must already be on disk."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, and `folder` itself."""
    for path in sorted(folder.rglob("*")) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
