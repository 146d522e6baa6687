"""Many personalizations from one file, for apps that run them by the dozen.

    # runs.yaml: `defaults` holds options shared by every run, each entry of `runs` its own
    defaults: {pretrained_model_name_or_path: sd15, max_train_steps: 400}
    runs:
      - {instance_data_dir: photos/rex, class_noun: dog, output_dir: out/rex}
      - {instance_data_dir: photos/mug, class_noun: mug, output_dir: out/mug}

    dreambooth batch runs.yaml [--check] [--shard K/N]

Every run is checked before any trains. Running the same file again skips the finished runs and
resumes an interrupted one from its last checkpoint, so a batch survives crashes and restarts. A run
that fails is reported at the end and the others go on. Runs of one class share their class images
through the class-image cache, so each class is generated once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from dreambooth import checkpoints
from dreambooth.config import TrainConfig, from_dict, read_config_file
from dreambooth.errors import ConfigError, DreamBoothError
from dreambooth.export import CONFIG_FILE

log = logging.getLogger("dreambooth")
RESOLVED_AT_SETUP = ("identifier", "resolution")  # None asks the trainer to choose; the saved config has its choice


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

    def status(self) -> str:
        """'done', 'resume' (a checkpoint, no final model) or 'new'."""
        if (self.output_dir / CONFIG_FILE).is_file():
            return "done"
        return "resume" if checkpoints.latest(self.output_dir) else "new"


def read_runs(path: str | Path) -> list[Run]:
    """The file's runs as validated configs; every problem in every run is reported at once."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such batch file; see `dreambooth batch --help` for its layout")
    data = read_config_file(path)
    unknown = sorted(set(data) - {"defaults", "runs"})
    entries, defaults = data.get("runs"), data.get("defaults") or {}
    if unknown or not isinstance(defaults, dict) or not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected `runs:` (a list of option mappings) and optionally `defaults:`"
                          + (f"; unknown key(s) {', '.join(unknown)}" if unknown else ""))
    runs, problems = [], []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"run {number}: expected a mapping of option: value")
            continue
        if "resume_from_checkpoint" in {**defaults, **entry}:
            problems.append(f"run {number}: remove resume_from_checkpoint; a batch resumes interrupted runs itself")
            continue
        try:
            runs.append(Run(number, from_dict({**defaults, **entry}, source=f"run {number}")))
        except ConfigError as error:
            problems.append(f"run {number}: {error}".replace("\n", "\n  "))
    writers: dict[Path, int] = {}
    for run in runs:
        first = writers.setdefault(run.output_dir.resolve(), run.number)
        if first != run.number:
            problems.append(f"runs {first} and {run.number} both write {run.cfg.output_dir}; give each its own output_dir")
    if problems:
        raise ConfigError(f"{path}:\n  " + "\n  ".join(problems))
    return runs


def shard(runs: list[Run], spec: str | None) -> list[Run]:
    """`K/N`: the K-th of N interleaved shares (runs K, K+N, ...), for N machines or GPUs side by side."""
    if spec is None:
        return runs
    try:
        k, n = (int(part) for part in spec.split("/"))
        if not 1 <= k <= n:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--shard: expected K/N with 1 <= K <= N, e.g. 1/4; got {spec!r}") from None
    return [run for run in runs if (run.number - 1) % n == k - 1]


def changed_settings(run: Run) -> list[str]:
    """Options of a finished run's saved config that the file now sets differently."""
    saved = yaml.safe_load((run.output_dir / CONFIG_FILE).read_text()) or {}
    saved_cfg = from_dict({k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    changed = []
    for field in dataclasses.fields(TrainConfig):
        asked, had = getattr(run.cfg, field.name), getattr(saved_cfg, field.name)
        if field.name == "resume_from_checkpoint" or (asked is None and field.name in RESOLVED_AT_SETUP):
            continue
        if asked != had:
            changed.append(f"{field.name}: trained with {had!r}, now {asked!r}")
    return changed


def check(runs: list[Run]) -> list[str]:
    """Every problem of the runs still to train, and of finished runs the file now describes otherwise."""
    from dreambooth.preflight import preflight

    problems = []
    for run in runs:
        if run.status() == "done":
            changed = changed_settings(run)
            if changed:
                problems.append(f"{run.name} is finished with other settings ({'; '.join(changed)}); "
                                "delete its output_dir to train it again, or give it another one")
            continue
        report = preflight(run.cfg)
        problems += [f"{run.name}: {p}" for p in report.problems]
        for warning in report.warnings:
            log.warning("warning: %s: %s", run.name, warning)
    return problems


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
    """Check every run of the file (or of its shard), then train those not finished, one after another.
    Returns the trained runs' output folders; raises listing the runs that failed, after the rest ran."""
    from dreambooth.trainer import Interrupted, train

    runs = shard(read_runs(path), shard_spec)
    log.info("%s", plan(runs))
    problems = check(runs)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) found before training:\n  " + "\n  ".join(problems))
    if check_only:
        return []
    trained, failed = [], []
    pending = [run for run in runs if run.status() != "done"]
    for i, run in enumerate(pending, 1):
        resume = "latest" if run.status() == "resume" else None
        log.info("[%d/%d] %s", i, len(pending), run.name)
        try:
            trained.append(train(dataclasses.replace(run.cfg, resume_from_checkpoint=resume)))
        except Interrupted as stop:
            raise Interrupted(f"{run.name}: {stop.what}", stop.signal_number,
                              "the same `dreambooth batch` command resumes it and the runs after it") from None
        except DreamBoothError as error:
            failed.append(f"{run.name}: {error}")
            log.error("error: %s", failed[-1])
    log.info("%d trained, %d already finished, %d failed", len(trained), len(runs) - len(pending), len(failed))
    if failed:
        raise DreamBoothError(f"{len(failed)} of {len(pending)} runs failed (the others are saved):\n  "
                              + "\n  ".join(failed))
    return trained
