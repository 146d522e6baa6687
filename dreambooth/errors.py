"""Errors for user mistakes, and how a command reports them: one line (no traceback), non-zero exit."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable


class DreamBoothError(ValueError):
    """A problem the user can fix; the message says what and how."""


class ConfigError(DreamBoothError):
    """An option or config file is wrong."""


class DataError(DreamBoothError):
    """An input folder or file is unusable."""


class ModelError(DreamBoothError):
    """A model folder is missing, incomplete or not loadable."""


class Terminated(KeyboardInterrupt):
    """SIGTERM where training's loop does not take it (loading a model, drawing class images, sampling):
    the command stops at once, as on Ctrl-C, with its `finally` blocks run, rather than being killed."""

    signal_number = signal.SIGTERM


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


@contextlib.contextmanager
def sigterm_interrupts():
    """While the block runs, SIGTERM raises `Terminated` as SIGINT raises KeyboardInterrupt. Not in the
    processes of a launch (WORLD_SIZE above 1): a Python handler waits for the native call in progress,
    and one waiting in a collective for a rank that is gone must still die of the launcher's SIGTERM.
    Signal handlers live in the main thread only: elsewhere, nothing changes either."""
    if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return

    def interrupt(number: int, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(command: Callable[[], object]) -> int:
    """The exit code of `command`: 0, or 2 with `error: <message>` on stderr for a user mistake (`interrupted:`
    and 128 + the signal's number for a run a signal stopped)."""
    try:
        with sigterm_interrupts():
            command()
    except DreamBoothError as exc:
        print(f"{getattr(exc, 'label', 'error')}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM, or one outside training's loop
        print("interrupted at once, saving nothing more", file=sys.stderr)
        return 128 + getattr(exc, "signal_number", signal.SIGINT)
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


def image_side(text: str) -> int:
    """argparse type for --height/--width: a multiple of 8, as diffusers' pipelines need (else an error
    after the model has loaded)."""
    value = _whole_number(text, minimum=8)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{value}: give a multiple of 8, e.g. {value // 8 * 8 or 8}")
    return value


def seed_int(text: str) -> int:
    """argparse type for seeds: below 2**32, as `train` takes them (image i uses seed + i, which torch's
    generators take up to 2**64), and not negative: image files are named by them, and '-00001.png' reads
    as an option."""
    value = _whole_number(text, minimum=0)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"{value}: give a seed below 2**32 (4294967296)")
    return value


def finite_float(text: str) -> float:
    """argparse type for scales: 'nan' or 'inf' would be written into a model without a word."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: give a finite number")
    return value


def torch_device(text: str) -> str:
    """argparse type for --device: one this machine has, so 'cuda' without a GPU is refused at once."""
    import torch

    try:
        if torch.device(text).type == "meta":  # holds no data: nothing could be trained or saved on it
            raise RuntimeError("it holds no data")
        torch.empty(0, device=text)
    except (RuntimeError, AssertionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"{text!r} is not a device of this machine ({reason}); give e.g. cpu"
        raise argparse.ArgumentTypeError(message) from None
    return text


def writable_folder(path: str | Path, option: str) -> Path:
    """`path` as a folder that exists, created now, before any work: a file in the way or a place that
    cannot be written is a one-line error naming `option`, not a traceback after minutes of sampling."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {folder}: cannot be created ({exc.strerror or exc}); choose another "
                          "folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {folder}: is not writable; choose another folder")
    return folder


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: 0 or less is refused at parse time, not deep in a run."""
    return _whole_number(text, minimum=1)


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value}: give {minimum} or more")
    return value
