"""Errors for user mistakes, and how a command reports them: one line (no traceback), non-zero exit."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable


class DreamBoothError(ValueError):
    """A problem the user can fix; the message says what and how."""


class ConfigError(DreamBoothError):
    """An option or config file is wrong."""


class DataError(DreamBoothError):
    """An input folder or file is unusable."""


class ModelError(DreamBoothError):
    """A model folder is missing, incomplete or not loadable."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException, path: object) -> BaseException:
    """A full disk as OSError(ENOSPC) naming `path`: safetensors and torch.save report it as their own
    error types, with the OS message inside. Other errors come back unchanged."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return exc
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return exc


OUT_OF_MEMORY = ("out of device memory; try --gradient_checkpointing, --mixed_precision bf16, --lora or a smaller "
                 "--train_batch_size (train), a smaller --batch_size (generate)")


def run_command(command: Callable[[], object]) -> int:
    """The exit code of `command`: 0, or 2 with `error: <message>` on stderr for a user mistake."""
    try:
        command()
    except DreamBoothError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: the disk is full{where}; free space and run the same command again (train: add "
              "--resume_from_checkpoint latest). Files are written whole or not at all, so nothing half-written "
              "is kept", file=sys.stderr)
        return 1
    except Exception as exc:
        torch = sys.modules.get("torch")  # only ever raised once torch is loaded; importing it here costs seconds
        if torch is None or not isinstance(exc, torch.OutOfMemoryError):
            raise
        print(f"error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 1
    return 0


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: 0 or less is refused at parse time, not deep in a run."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value
