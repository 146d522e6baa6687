"""Resumable training checkpoints, written atomically, in folders named as diffusers names them
(`checkpoint-<step>`), though what they hold is accelerate's state, for resuming, not a pipeline to load.

A checkpoint is written under a temporary name, flushed to disk, and renamed into place, so a
folder named `checkpoint-<step>` is always complete; leftovers of an interrupted write are ignored
and removed. It holds what accelerate saves (models, optimizer, RNG states; the LR schedule is rebuilt
from the optimizer's count of updates, see `updates_applied`) and
`dreambooth_state.json` with the step, the run's config and its photos' sha256s (a resume with other
options or photos is refused);
data order and noise are derived from (seed, step).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from dreambooth.atomic import fsync, fsync_tree, removed_on_failure
from dreambooth.errors import ConfigError, ModelError

STATE_FILE = "dreambooth_state.json"
log = logging.getLogger("dreambooth")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(output_dir: Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def save(accelerator: Accelerator, output_dir: Path, step: int, keep: int | None, config: dict,
         photos: list[str]) -> Path:
    """Save a checkpoint for `step` (of the run `config` describes, on the subject photos whose sha256s are
    `photos`) atomically and prune to the newest `keep`."""
    final = output_dir / f"checkpoint-{step}"
    temp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        for leftover in output_dir.glob(".checkpoint-*.tmp"):  # writes that a crash cut short
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    # a full disk gives its space back now, not at the next save; the others may still be writing into it
    with removed_on_failure(temp, remove=accelerator.is_main_process):
        accelerator.save_state(str(temp), safe_serialization=True)
        accelerator.wait_for_everyone()  # every process's part (its RNG states) is in before it is marked complete
        if accelerator.is_main_process:
            state = {"step": step, "config": config, "photos": sorted(photos), "photo_order": list(photos),
                     "num_processes": accelerator.num_processes}
            (temp / STATE_FILE).write_text(json.dumps(state))
            fsync_tree(temp)
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temp, final)
        fsync(output_dir)  # the rename; not the folder's other entries (a user's dangling link would fail)
        if keep is not None:
            for old in complete_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def delete_all(output_dir: Path) -> None:
    """Delete every checkpoint, complete or cut short (the final model no longer needs them, or a fresh run
    replaces the run they were of)."""
    for path in [*complete_checkpoints(output_dir), *output_dir.glob(".checkpoint-*.tmp")]:
        shutil.rmtree(path, ignore_errors=True)


def named(output_dir: Path, which: str) -> Path:
    """The complete checkpoint `which` names: 'latest', a folder, or a folder's name in `output_dir`
    (diffusers passes "checkpoint-500"); a one-line ConfigError if there is none."""
    if which == "latest":
        path = latest(output_dir)
        if path is None:
            raise ConfigError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}; "
                              "drop the option to start fresh")
        return path
    path = Path(which).expanduser()
    if not path.exists() and (output_dir / which).exists():
        path = output_dir / which
    if not path.exists():
        found = [p.name for p in complete_checkpoints(output_dir)] if output_dir.is_dir() else []
        raise ConfigError(f"--resume_from_checkpoint: {path} does not exist; "
                          + (f"{output_dir} has {', '.join(found)}" if found else f"{output_dir} has no checkpoint"))
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"--resume_from_checkpoint: {path} is not a complete checkpoint "
                          f"(no {STATE_FILE}); use 'latest' or a checkpoint-<step> folder")
    return path


def trained_with(checkpoint: Path) -> tuple[int, dict, list[str] | None]:
    """The step of `checkpoint`, the config of the run that wrote it and the sha256s of its subject photos
    ({} and None for checkpoints from before they were kept)."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    return int(state["step"]), state.get("config", {}), state.get("photos")


def photo_order(checkpoint: Path) -> list[str] | None:
    """The sha256s of the subject photos in the order the run drew them from (None for checkpoints from
    before it was kept): photos renamed since sort otherwise."""
    return json.loads((checkpoint / STATE_FILE).read_text()).get("photo_order")


def resume(accelerator: Accelerator, output_dir: Path, which: str | None) -> int:
    """Load the checkpoint named by `which` ('latest' or a folder) and return its step; 0 if None."""
    if which is None:
        return 0
    path = named(output_dir, which)
    try:  # the optimizer's and RNG states are torch pickles, read by torch's restricted (weights-only) loader
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as exc:
        raise ModelError(f"--resume_from_checkpoint {path}: holds a pickle torch's weights-only loader refuses "
                         f"({str(exc).strip().splitlines()[0][:120]}); resume only from checkpoints this tool wrote "
                         "(yours), or start afresh") from None
    state = json.loads((path / STATE_FILE).read_text())
    step, ran_on = int(state["step"]), state.get("num_processes", accelerator.num_processes)
    if ran_on != accelerator.num_processes and accelerator.is_main_process:
        # each process draws its own block of examples, so the split changes what every later step sees
        log.warning("warning: %s ran on %d process(es), this resume on %d: the examples from here on differ "
                    "from an uninterrupted run's (the training stays valid)", path, ran_on, accelerator.num_processes)
    if accelerator.is_main_process:  # checkpoints of the abandoned future would otherwise win `latest`
        log.info("resuming from %s (step %d)", path, step)
        for newer in complete_checkpoints(output_dir):
            if int(_NAME.match(newer.name).group(1)) > step:
                shutil.rmtree(newer)
    return step


def updates_applied(optimizer) -> int:
    """The updates the optimizer has applied (0 before the first), from Adam's per-parameter step counts,
    which a checkpoint keeps: fewer than the run's steps where fp16's loss scaler skipped an overflow."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state), default=0)
