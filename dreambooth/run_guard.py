"""What surrounds a training run: one run at a time per output folder, and Ctrl-C / SIGTERM turned
into "finish this step, save a checkpoint, stop" rather than a lost run."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Callable

from dreambooth.errors import ConfigError, DreamBoothError, writable_folder

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not locked against each other
    fcntl = None


class InUse(ConfigError):
    """The output folder is locked by another dreambooth run."""


class Interrupted(DreamBoothError):
    """SIGINT/SIGTERM during training: a checkpoint was saved; the message says how to resume."""

    label = "interrupted"  # what was asked for, not an error

    def __init__(self, what: str, signal_number: int,
                 resume: str = "resume with the same command plus --resume_from_checkpoint latest") -> None:
        super().__init__(f"{what}; {resume}")
        self.what, self.signal_number = what, signal_number
        self.exit_code = 128 + signal_number


_held: set[Path] = set()  # the folders this process has locked (a batch locks a run's before `train` does)


@contextlib.contextmanager
def only_run_in(output_dir: Path):
    """One run at a time in an --output_dir: two (a batch started twice, say) would delete each other's
    checkpoints as leftovers. An flock on the folder, taken by the main process (the others write through
    it), goes with the process, so a crash never leaves it held; where the disk has no locks, none is taken."""
    if int(os.environ.get("RANK", "0")) != 0 or fcntl is None or output_dir.resolve() in _held:
        yield
        return
    created = not output_dir.exists()
    writable_folder(output_dir, "--output_dir")
    fd = os.open(output_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse(f"--output_dir {output_dir} is in use by another dreambooth run; wait for it to "
                        "finish, or choose another folder") from None
        except OSError:
            pass
        _held.add(output_dir.resolve())
        yield
    finally:
        _held.discard(output_dir.resolve())
        os.close(fd)
        if created and not any(output_dir.iterdir()):  # refused before writing anything: leave no trace
            output_dir.rmdir()


@contextlib.contextmanager
def signals_noted(note: Callable[[int], None]):
    """While the block runs, SIGINT/SIGTERM only call `note(signal number)` (the loop then saves and
    stops); a second one acts at once. Signal handlers live in the main thread only: elsewhere, none."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def noted(number: int, frame) -> None:
        note(number)
        signal.signal(number, previous[number])  # a second Ctrl-C interrupts at once

    for s in previous:
        signal.signal(s, noted)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
