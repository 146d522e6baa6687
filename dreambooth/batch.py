"""Many personalizations from one file, for apps that run them by the dozen.

    # runs.yaml: `defaults` holds options shared by every run, each entry of `runs` its own
    defaults: {pretrained_model_name_or_path: sd15, max_train_steps: 400}
    runs:
      - {instance_data_dir: photos/rex, class_noun: dog, output_dir: out/rex}
      - {instance_data_dir: photos/mug, class_noun: mug, output_dir: out/mug}

    dreambooth batch runs.yaml [--check] [--shard K/N]

Every run is checked before any trains. Running the same file again skips the finished runs and
resumes an interrupted one from its last checkpoint (a signal saves one; a crash resumes from the last
periodic one, or starts the run over); a run
whose options the file has changed since it started is refused, not mixed. A run that fails is
reported at the end and the others go on. Runs whose class images are the same (class prompt, base
model, seed, sampler settings) find them in the class-image cache, so they are generated once.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from dreambooth import checkpoints
from dreambooth.atomic import write_text_atomic
from dreambooth.config import TrainConfig, changed_settings, field_keys, from_dict, key_names, read_config_file
from dreambooth.errors import OUT_OF_MEMORY, ConfigError, DreamBoothError
from dreambooth.outputs import CONFIG_FILE
from dreambooth.run_guard import Interrupted, InUse, only_run_in

log = logging.getLogger("dreambooth")
STARTED_FILE = "dreambooth_batch_run.yaml"  # the options a run started with, until its model is saved
# what accelerate reads to join a process group; a launched batch's processes train apart
DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                   "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Run:
    number: int  # 1-based, as the file lists it
    cfg: TrainConfig

    @property
    def name(self) -> str:
        return f"run {self.number} ({self.cfg.output_dir})"

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir).expanduser()

    def config_to_train(self) -> TrainConfig:
        """The run's config, resuming from its last checkpoint if it was interrupted."""
        return dataclasses.replace(self.cfg, resume_from_checkpoint="latest" if self.status() == "resume" else None)

    def status(self) -> str:
        """'done', 'resume' (a checkpoint, no final model) or 'new'."""
        if (self.output_dir / CONFIG_FILE).is_file():
            return "done"
        return "resume" if checkpoints.latest(self.output_dir) else "new"


def read_runs(path: str | Path) -> list[Run]:
    """The file's runs as validated configs; every problem in every run is reported at once."""
    runs, problems = parse_runs(path)
    if problems:
        raise ConfigError(f"{Path(path).expanduser()}:\n  " + "\n  ".join(problems))
    return runs


def parse_runs(path: str | Path) -> tuple[list[Run], list[str]]:
    """The runs whose options are valid, and the problems of the others (a problem of `defaults` once)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; pass the batch file (YAML) itself, e.g. {path / 'runs.yaml'}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such batch file; see `dreambooth batch --help` for its layout")
    data = read_config_file(path)
    unknown = sorted(set(data) - {"defaults", "runs"})
    entries, defaults = data.get("runs"), data.get("defaults") or {}
    if unknown or not isinstance(defaults, dict) or not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected `runs:` (a list of option mappings) and optionally `defaults:`"
                          + (f"; unknown key(s) {', '.join(unknown)}" if unknown else ""))
    runs, problems = [], []
    known = key_names()
    if unknown_defaults := sorted(key for key in defaults if key not in known):
        problems.append(f"defaults: unknown option(s) {', '.join(unknown_defaults)}; see `dreambooth train --help`")
        defaults = {key: value for key, value in defaults.items() if key in known}
    try:
        defaults = field_keys(defaults, "defaults")
    except ConfigError as error:  # an option spelled twice there: said once, and neither spelling used
        problems.append(str(error))
        fields_named = [known[key] for key in defaults]
        defaults = {known[key]: value for key, value in defaults.items() if fields_named.count(known[key]) == 1}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"run {number}: expected a mapping of option: value")
            continue
        try:
            values = {**defaults, **field_keys(entry, f"run {number}")}
            if "resume_from_checkpoint" in values:
                problems.append(f"run {number}: remove resume_from_checkpoint; a batch resumes interrupted runs itself")
                continue
            # train's default, the current folder, is no place for one of many runs
            if not str(values.get("output_dir") or "").strip():
                problems.append(f"run {number}: needs its own output_dir")
                continue
            runs.append(Run(number, from_dict(values, source=f"run {number}")))
        except ConfigError as error:
            message = str(error) if str(error).startswith(f"run {number}:") else f"run {number}: {error}"
            problems.append(message.replace("\n", "\n  "))
    writers: dict[Path, int] = {}
    for run in runs:
        first = writers.setdefault(run.output_dir.resolve(), run.number)
        if first != run.number:
            problems.append(f"runs {first} and {run.number} both write {run.cfg.output_dir}; "
                            "give each its own output_dir")
    return runs, problems


def parse_shard(spec: str | None) -> tuple[int, int]:
    """`K/N` as (K, N); no spec is the one share 1/1."""
    if spec is None:
        return 1, 1
    try:
        k, n = (int(part) for part in spec.split("/"))
        if not 1 <= k <= n:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--shard: expected K/N with 1 <= K <= N, e.g. 1/4; got {spec!r}") from None
    return k, n


def shard(runs: list[Run], spec: str | None) -> list[Run]:
    """`K/N`: the K-th of N interleaved shares (runs K, K+N, ...), for N machines or GPUs side by side."""
    k, n = parse_shard(spec)
    return [run for run in runs if (run.number - 1) % n == k - 1]


def own_share(shard_spec: str | None) -> str | None:
    """Under `accelerate launch` (or torchrun) process K of N takes shard K/N and trains it alone, on
    its own GPU: the processes train different runs, so they share no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return shard_spec
    if shard_spec is not None:
        raise ConfigError("--shard: each of the launched processes already takes its own share; "
                          "drop --shard, or start one process per GPU with --shard K/N")
    if "RANK" not in os.environ:
        raise ConfigError(f"WORLD_SIZE is {world} but RANK is unset: start the processes with torchrun or "
                          "`accelerate launch`, or unset WORLD_SIZE")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    for name in DISTRIBUTED_ENV:
        os.environ.pop(name, None)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # accelerate's lone process uses the current device
    return f"{rank + 1}/{world}"


def recorded_options(run: Run, status: str) -> Path | None:
    """The options file of a finished run (its saved config) or of an interrupted one (what it started with)."""
    record = run.output_dir / (CONFIG_FILE if status == "done" else STARTED_FILE)
    return record if status != "new" and record.is_file() else None


def run_changed_settings(run: Run, record: Path, may_change: tuple[str, ...] = ()) -> list[str]:
    """Options that shape the model and that the file now sets otherwise than `record` does."""
    try:
        return changed_settings(run.cfg, read_config_file(record), str(record), may_change)
    except ConfigError as error:
        raise ConfigError(f"{run.name}: {record} is unreadable ({str(error).splitlines()[-1].strip()}); "
                          "delete the output_dir to train the run again") from None


def check(runs: list[Run], shard_spec: str | None = None) -> list[str]:
    """Every problem of the share's runs still to train, and of its started runs the file now describes
    otherwise. Free disk is checked for every share's runs together: the shares run side by side (one
    process or machine each), a share's runs one after another, and what they write adds up on each disk."""
    from dreambooth.preflight import disk_problems, preflight

    k, n = parse_shard(shard_spec)
    problems, disk = [], []
    for run in runs:
        status = run.status()
        share = (run.number - 1) % n
        if share != k - 1:  # another share's run: only what it writes counts here
            if status != "done":
                disk += [dataclasses.replace(need, share=share)
                         for need in preflight(run.config_to_train(), check_disk=False).disk]
            continue
        record = recorded_options(run, status)
        try:
            # the record is in the run's folder, so a folder moved is the same run; an interrupted run may be
            # given more steps, and its photos moved, as `train --resume_from_checkpoint` may (preflight compares
            # them with its checkpoint's)
            movable = ("output_dir",) if status == "done" else ("output_dir", "max_train_steps", "instance_data_dir")
            changed = run_changed_settings(run, record, movable) if record else []
        except ConfigError as error:
            problems.append(str(error))
            continue
        if changed:  # its checkpoint would say the same again: one report
            state = "finished" if status == "done" else "started"
            problems.append(f"{run.name} was {state} with other settings ({'; '.join(changed)}); "
                            "delete its output_dir to train it again, or give it another one")
        if status == "done" or changed:
            continue
        report = preflight(run.config_to_train(), check_disk=False)
        problems += [f"{run.name}: {p}" for p in report.problems]
        disk += [dataclasses.replace(need, share=share) for need in report.disk]
        for warning in report.warnings:
            log.warning("warning: %s: %s", run.name, warning)
    return problems + [f"the runs together: {p}" for p in disk_problems(disk)]


def plan(runs: list[Run]) -> str:
    """One line per run: what this invocation will do with it."""
    lines = []
    for run in runs:
        status = run.status()
        if status == "resume":
            lines.append(f"{run.name}: to resume from {checkpoints.latest(run.output_dir).name}")
        else:
            lines.append(f"{run.name}: {'finished, skipped' if status == 'done' else 'to train'}")
    return "\n".join(lines)


def run_batch(path: str | Path, shard_spec: str | None = None, check_only: bool = False) -> list[Path]:
    """Check every run of the file (or of its shard; the disk for every shard), then train those not
    finished, one after another.
    Returns the trained runs' output folders; raises listing the runs that failed, after the rest ran."""
    from dreambooth.trainer import train

    shard_spec = own_share(shard_spec)
    every_run, problems = parse_runs(path)  # the runs that parse are checked too: every problem at once
    runs = shard(every_run, shard_spec)
    if not runs and not problems:
        log.warning("warning: share %s holds no run of %s", shard_spec, path)
    if runs:
        log.info("%s", plan(runs))
    problems += check(every_run, shard_spec)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) found before training:\n  " + "\n  ".join(problems))
    if check_only:
        return []
    trained, failed, elsewhere = [], [], []
    pending = [run for run in runs if run.status() != "done"]
    for i, run in enumerate(pending, 1):
        log.info("[%d/%d] %s", i, len(pending), run.name)
        try:
            # the run's folder is locked before its state is read again: another batch of the same file may
            # have trained it, or be training it, since the plan
            with only_run_in(run.output_dir):
                if run.status() == "done":
                    elsewhere.append(run.name)
                    log.info("%s: finished meanwhile by another process; skipped", run.name)
                    continue
                cfg = run.config_to_train()
                if cfg.resume_from_checkpoint is None:
                    started = yaml.safe_dump(run.cfg.to_dict(), sort_keys=False)
                    write_text_atomic(run.output_dir / STARTED_FILE, started)
                trained.append(train(cfg))
                (run.output_dir / STARTED_FILE).unlink(missing_ok=True)
        except InUse:
            elsewhere.append(run.name)
            log.warning("warning: %s: being trained by another process; skipped", run.name)
        except (Interrupted, KeyboardInterrupt) as stop:  # the latter at once: loading, class images, a second signal
            earlier = "".join(f"\n  earlier: {f}" for f in failed)
            number = getattr(stop, "signal_number", signal.SIGINT)
            what = (stop.what if isinstance(stop, Interrupted)
                    else f"interrupted at once by {signal.Signals(number).name}")
            raise Interrupted(f"{run.name}: {what}", number,
                              "the same `dreambooth batch` command goes on from there" + earlier) from None
        except (DreamBoothError, torch.OutOfMemoryError) as error:
            if isinstance(error, torch.OutOfMemoryError):
                error = OUT_OF_MEMORY
                gc.collect()
                torch.cuda.empty_cache()
            failed.append(f"{run.name}: {error}")
            log.error("error: %s", failed[-1])
    log.info("%d trained, %d already finished, %d trained by another process, %d failed", len(trained),
             len(runs) - len(pending), len(elsewhere), len(failed))
    if failed:
        raise DreamBoothError(f"{len(failed)} of {len(pending)} runs failed (the others are saved):\n  "
                              + "\n  ".join(failed))
    return trained
