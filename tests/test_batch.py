"""`dreambooth batch`: every run checked first, finished runs skipped, interrupted ones resumed, a
failed run reported while the others go on."""

import dataclasses
import logging
import re
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from dreambooth import runlog
from dreambooth.batch import STARTED_FILE, plan, read_runs, run_batch, shard
from dreambooth.cli import main
from dreambooth.errors import ConfigError, DreamBoothError, Terminated
from dreambooth.run_guard import Interrupted
from dreambooth.trainer import Trainer


def write_runs(tmp_path, tiny_sd, subject_dir, *runs, **defaults):
    shared = dict(pretrained_model_name_or_path=str(tiny_sd), instance_data_dir=str(subject_dir), class_noun="dog",
                  class_cache_dir=str(tmp_path / "cache"), num_class_images=2, class_inference_steps=2,
                  max_train_steps=2, learning_rate=1e-3, report_to="none", center_crop=True)
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump({"defaults": {**shared, **defaults},
                                    "runs": [{"output_dir": str(tmp_path / name), **extra} for name, extra in runs]}))
    return path


def test_runs_train_once_and_a_changed_setting_is_refused(tiny_sd, subject_dir, tmp_path, capsys):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {"lora": True, "learning_rate": 1e-2}))
    assert main(["batch", str(runs)]) == 0
    assert capsys.readouterr().out.startswith("saved 2 personalized model(s)\n")
    assert main(["batch", str(runs)]) == 0
    assert capsys.readouterr().out == "no run left to train here (the line above counts them)\n"
    assert [len(runlog.read(tmp_path / n)) for n in "ab"] == [2, 2]
    assert (tmp_path / "b" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "a" / STARTED_FILE).exists()  # the start record goes once the model is saved
    capsys.readouterr()
    assert run_batch(runs) == []  # both finished: nothing trains again
    # options that do not shape the model, and another spelling of a path, are no change
    respelled = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {"report_to": "tensorboard", "checkpointing_steps": 7,
                                                                  "class_cache_dir": str(tmp_path / "moved"),
                                                                  "gradient_checkpointing": True}),
                           ("b", {"lora": True, "learning_rate": 1e-2, "instance_data_dir": f"{subject_dir}/"}))
    assert run_batch(respelled) == []
    assert "run 2 (" in plan(read_runs(runs)) and "finished, skipped" in plan(read_runs(runs))
    changed = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {"lora": True}))
    with pytest.raises(ConfigError, match=r"run 2 .* was finished with other settings \(learning_rate: trained with 0.01, now 0.001\)"):
        run_batch(changed)


def test_every_problem_of_every_run_is_reported_before_any_trains(tiny_sd, subject_dir, tmp_path):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {"instance_data_dir": str(tmp_path / "none")}),
                      ("c", {"lora_rank": 0}), ("a", {"seed": 1}), random_flp=True)
    with pytest.raises(ConfigError) as error:
        run_batch(runs)
    # one pass finds them all: a misspelled default (once, not per run), a run's bad option, two runs in one
    # folder, and a missing photo folder (found by the checks of the runs that parsed)
    assert re.fullmatch(r"4 problem\(s\) found before training:\n"
                        r"  defaults: unknown option\(s\) random_flp; see `dreambooth train --help`\n"
                        r"  run 3: invalid config:\n    --lora_rank: must be >= 1, got 0\n.*\n"
                        r"  runs 1 and 4 both write .*\n"
                        r"  run 2 \(.*\): --instance_data_dir .*none: no such folder.*", str(error.value)), str(error.value)
    only_missing = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {"instance_data_dir": str(tmp_path / "none")}))
    with pytest.raises(ConfigError, match=r"1 problem\(s\) found before training:\n  run 2 \(.*none"):
        run_batch(only_missing)
    assert not (tmp_path / "a").exists()  # run 1 was fine, but nothing trained


def test_a_failed_run_is_reported_after_the_others_ran(tiny_sd, subject_dir, tmp_path):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("bad", {"learning_rate": 1e30, "max_grad_norm": 1e30,
                                                               "max_train_steps": 20}), ("good", {}))
    with pytest.raises(DreamBoothError, match=r"1 of 2 runs failed .*\n  run 1 .*the loss is not finite"):
        run_batch(runs)
    assert len(runlog.read(tmp_path / "good")) == 2


def test_an_interrupted_batch_resumes_where_it_stopped(tiny_sd, subject_dir, tmp_path, monkeypatch):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}), max_train_steps=4)
    original = Trainer.training_step

    def signalled_in_step_3(self, micro_step):
        if micro_step == 2 and self.output_dir.name == "b":
            self.stop_signal = signal.SIGTERM  # what the handler sets on SIGTERM
        return original(self, micro_step)

    monkeypatch.setattr(Trainer, "training_step", signalled_in_step_3)
    with pytest.raises(Interrupted, match=r"run 2 .*at step 3.*the same `dreambooth batch` command goes on from there"):
        run_batch(runs)
    monkeypatch.undo()
    assert f"run 2 ({tmp_path / 'b'}): to resume from checkpoint-3" in plan(read_runs(runs))
    changed = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {"seed": 1}), max_train_steps=4)
    with pytest.raises(ConfigError, match=r"run 2 .* was started with other settings \(seed: trained with 0, now 1\)") as error:
        run_batch(changed)  # not resumed into a mix of two configurations
    assert str(error.value).count("seed: trained with 0") == 1  # once, not again from its checkpoint
    # the folders moved (a disk mounted elsewhere), the interrupted run's photos too: the same runs. It resumes
    # with more steps, as `train --resume_from_checkpoint` may (the finished run keeps its own)
    for name in "ab":
        (tmp_path / name).rename(tmp_path / f"moved-{name}")
    photos = shutil.copytree(subject_dir, tmp_path / "moved-photos")
    moved = write_runs(tmp_path, tiny_sd, subject_dir, ("moved-a", {"instance_data_dir": str(subject_dir)}),
                       ("moved-b", {"max_train_steps": 5}), max_train_steps=4, instance_data_dir=str(photos))
    assert run_batch(moved) == [tmp_path / "moved-b"]
    assert [row["step"] for row in runlog.read(tmp_path / "moved-b")] == [1, 2, 3, 4, 5]


def test_shards_split_the_runs_without_overlap(tiny_sd, subject_dir, tmp_path):
    runs = read_runs(write_runs(tmp_path, tiny_sd, subject_dir, *[(str(i), {}) for i in range(5)]))
    shares = [[run.number for run in shard(runs, f"{k}/2")] for k in (1, 2)]
    assert shares == [[1, 3, 5], [2, 4]]
    with pytest.raises(ConfigError, match="--shard: expected K/N"):
        shard(runs, "0/2")


def test_a_signal_during_the_final_save_stops_the_batch_after_it(tiny_sd, subject_dir, tmp_path, monkeypatch):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}))
    original = Trainer.save

    def signalled_while_saving(self):
        self.stop_signal = signal.SIGTERM
        return original(self)

    monkeypatch.setattr(Trainer, "save", signalled_while_saving)
    with pytest.raises(Interrupted, match=r"run 1 .*stopped by SIGTERM after saving"):
        run_batch(runs)
    assert (tmp_path / "a" / "dreambooth_config.yaml").is_file() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_a_signal_before_training_takes_it_stops_the_batch_saying_it_goes_on(stop, code, tiny_sd, subject_dir,
                                                                              tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while a run loads or draws its class images stops at once; the batch says
    that the same command goes on, as it does for a signal during training."""
    def interrupted(cfg):
        raise stop

    monkeypatch.setattr("dreambooth.trainer.train", interrupted)
    with pytest.raises(Interrupted, match="run 1 .*interrupted at once by SIG.*the same `dreambooth batch` command goes on") \
            as raised:
        run_batch(write_runs(tmp_path, tiny_sd, subject_dir, ("a", {})))
    assert raised.value.exit_code == code


def test_publish_moves_the_config_last(tmp_path, monkeypatch):
    """`dreambooth batch` takes a folder with the config as finished: it must be the last file in place."""
    from dreambooth import export

    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    for name in (export.CONFIG_FILE, "model_index.json", "README.md", "unet"):
        (staging / name).write_text("x")
    moved, replace = [], export.os.replace
    monkeypatch.setattr(export.os, "replace", lambda a, b: (moved.append(Path(b).name), replace(a, b)))
    export.publish(staging, out)
    assert moved[-2:] == ["model_index.json", export.CONFIG_FILE]


def test_free_disk_is_checked_for_the_runs_together(tmp_path, monkeypatch):
    """What runs keep adds up on a disk; checkpoints deleted at a run's end count once; shared class
    images count once."""
    from collections import namedtuple

    from dreambooth import preflight
    from dreambooth.preflight import DiskNeed, disk_problems

    free = {"bytes": 0}
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**9, 0, free["bytes"]))
    out_a, out_b, cache = (str(tmp_path / name) for name in ("a", "b", "cache"))
    images = [DiskNeed("class-image cache", cache, 5 * preflight.GIB, shared=("dog",))] * 2
    deleted = [DiskNeed("output", out, 10 * preflight.GIB, 30 * preflight.GIB) for out in (out_a, out_b)] + images
    kept = [DiskNeed("output", out, 40 * preflight.GIB) for out in (out_a, out_b)] + images
    free["bytes"] = 55 * preflight.GIB  # 10 + 10 kept, 5 of class images, 30 of checkpoints at a time
    assert disk_problems(deleted) == []
    [problem] = disk_problems(kept)  # one problem for the one disk, naming every folder on it
    assert problem.startswith(f"{out_a} (output), {out_b} (output), {cache} (class-image cache): needs ~85.0 GiB "
                              "but 55.0 GiB is free") and problem.endswith("(--no_keep_checkpoints) deletes checkpoints "
                                                                           "once a model is saved")
    free["bytes"] -= 1
    assert len(disk_problems(deleted)) == 1
    free["bytes"] = 84 * preflight.GIB  # shards run side by side: both runs' checkpoints exist at once
    side_by_side = [deleted[0], dataclasses.replace(deleted[1], share=1)] + images
    [problem] = disk_problems(side_by_side)
    assert "needs ~85.0 GiB but 84.0 GiB is free" in problem


def test_the_batch_reports_too_little_disk_once_for_all_runs(tiny_sd, subject_dir, tmp_path, monkeypatch):
    from collections import namedtuple

    from dreambooth import preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}))
    with pytest.raises(ConfigError, match=r"1 problem\(s\) found before training:\n  the runs together: ") as error:
        run_batch(runs)
    for folder in ("a (output)", "b (output)", "cache (class-image cache)"):
        assert f"{tmp_path / folder}" in str(error.value)
    assert "MiB is free" in str(error.value)
    with pytest.raises(ConfigError) as error:  # shard 2/2, training b side by side, writes on the same disk
        run_batch(runs, shard_spec="1/2")
    assert f"{tmp_path / 'b'} (output)" in str(error.value)


def test_needs_on_different_disks_are_checked_apart(tmp_path, monkeypatch):
    from collections import namedtuple
    from types import SimpleNamespace

    from dreambooth import preflight
    from dreambooth.preflight import DiskNeed, disk_problems

    disks = {"fast": 1, "big": 2}  # the folder's name says its disk here
    free = {1: 10 * preflight.GIB, 2: 100 * preflight.GIB}
    monkeypatch.setattr(preflight, "_existing", lambda folder: SimpleNamespace(
        stat=lambda: SimpleNamespace(st_dev=disks[folder]), name=folder))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(0, 0, free[disks[path.name]]))
    needs = [DiskNeed("output", "fast", 8 * preflight.GIB), DiskNeed("class-image cache", "big", 50 * preflight.GIB)]
    assert disk_problems(needs) == []  # 58 GiB in all, but 8 of them on the 10 GiB disk
    [problem] = disk_problems(needs + [DiskNeed("output", "fast", 3 * preflight.GIB)])
    assert problem.startswith("fast (output): needs ~11.0 GiB but 10.0 GiB is free")


def test_checkpoints_already_written_count_as_written(tiny_sd, subject_dir, tmp_path):
    from dreambooth import checkpoints
    from dreambooth.preflight import disk_needs
    from tests.test_trainer import config

    cfg = config(tiny_sd, subject_dir, tmp_path)
    before = disk_needs(cfg, tiny_sd, 0)[0].lasting
    written = tmp_path / "out" / "checkpoint-1"
    written.mkdir(parents=True)
    (written / checkpoints.STATE_FILE).write_text('{"step": 1}')
    (written / "model.safetensors").write_bytes(bytes(1000))
    assert disk_needs(cfg, tiny_sd, 0)[0].lasting == before - 1000 - len('{"step": 1}')


def test_disk_estimate_counts_the_checkpoints_a_run_writes(tiny_sd, subject_dir, tmp_path):
    from dreambooth.preflight import disk_needs
    from tests.test_trainer import config

    def lasting(**options):  # 4 steps: checkpoints at steps 1-3 with every=1, none periodic with every=500
        return disk_needs(config(tiny_sd, subject_dir, tmp_path, max_train_steps=4, **options), tiny_sd, 0)[0].lasting

    none, limit_2, unlimited = (lasting(checkpointing_steps=500), lasting(checkpointing_steps=1),
                                lasting(checkpointing_steps=1, checkpoints_total_limit=None))
    # per checkpoint: (limit_2 - none) / 2; the interrupt's (or write-before-prune's) one is in all three
    assert limit_2 > none and (unlimited - none) * 2 == (limit_2 - none) * 3


def test_a_run_without_its_own_output_dir_is_a_problem(tiny_sd, subject_dir, tmp_path):
    """train's default, the current folder, is no place for one of many runs."""
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"pretrained_model_name_or_path": str(tiny_sd),
                                              "instance_data_dir": str(subject_dir), "class_noun": "dog"}]}))
    with pytest.raises(ConfigError, match=r"run 1: needs its own output_dir"):
        read_runs(path)
    for blank in ("", "  "):
        path.write_text(yaml.safe_dump({"runs": [{"pretrained_model_name_or_path": str(tiny_sd), "output_dir": blank,
                                                  "instance_data_dir": str(subject_dir), "class_noun": "dog"}]}))
        with pytest.raises(ConfigError, match=r"run 1: needs its own output_dir"):
            read_runs(path)


def test_an_option_spelled_twice_in_defaults_is_one_problem(tiny_sd, subject_dir, tmp_path):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}), rank=4)
    text = runs.read_text().replace("rank: 4", "rank: 4\n  lora_rank: 8")
    runs.write_text(text)
    with pytest.raises(ConfigError) as error:
        read_runs(runs)
    assert str(error.value).count("name the same option") == 1, str(error.value)


def test_keep_best_counts_the_second_model_it_keeps(tiny_sd, subject_dir, tmp_path):
    from dreambooth.preflight import _weights_bytes, disk_needs
    from tests.test_trainer import config

    model = _weights_bytes(tiny_sd, ("unet", "text_encoder", "vae"))
    plain = disk_needs(config(tiny_sd, subject_dir, tmp_path), tiny_sd, 0)[0].lasting
    best = disk_needs(config(tiny_sd, subject_dir, tmp_path, eval_every=1, keep_best=True), tiny_sd, 0)[0].lasting
    assert best == plain + model


def test_class_images_already_in_the_cache_need_no_disk(tiny_sd, subject_dir, tmp_path):
    from dreambooth.class_images import generate_for_model
    from dreambooth.preflight import disk_needs
    from tests.test_trainer import config

    cfg = config(tiny_sd, subject_dir, tmp_path, num_class_images=3)
    before = disk_needs(cfg, tiny_sd, 0)[1].lasting
    assert not (tmp_path / "cache").exists()  # the check creates nothing there
    generate_for_model(tiny_sd, "a dog", 2, tmp_path / "cache", None, steps=2, guidance_scale=7.5, seed=0,
                       batch_size=2)  # two of the run's three, drawn as the run would draw them
    assert disk_needs(cfg, tiny_sd, 0)[1].lasting == before // 3


def test_a_second_batch_of_the_same_file_never_trains_a_run_twice(tiny_sd, subject_dir, tmp_path, monkeypatch, caplog):
    """Runs the other batch is training (their folder locked) or finished after this one planned are skipped."""
    import fcntl
    import logging
    import os

    from dreambooth import batch

    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}), ("c", {}))
    (tmp_path / "b").mkdir()
    held = os.open(tmp_path / "b", os.O_RDONLY)  # the other batch is training b
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    trained = []

    def train_and_meanwhile_the_other_finishes_c(cfg):
        trained.append(Path(cfg.output_dir).name)
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / "dreambooth_config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        return Path(cfg.output_dir)

    monkeypatch.setattr("dreambooth.trainer.train", train_and_meanwhile_the_other_finishes_c)
    try:
        with caplog.at_level(logging.INFO, logger="dreambooth"):
            assert batch.run_batch(runs) == [tmp_path / "a"]
    finally:
        os.close(held)
    assert trained == ["a"] and not (tmp_path / "b" / STARTED_FILE).exists()
    assert "run 2 (" in caplog.text and "being trained by another process; skipped" in caplog.text
    assert "run 3 (" in caplog.text and "finished meanwhile by another process; skipped" in caplog.text
    assert "1 trained, 0 already finished, 2 trained by another process, 0 failed" in caplog.text


def test_a_run_killed_between_the_final_saves_last_renames_resumes(tiny_sd, subject_dir, tmp_path):
    """The model is published, its config not yet: the run's own checkpoints say the folder is ours."""
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {"keep_checkpoints": True, "checkpointing_steps": 1}),
                      max_train_steps=3)
    run_batch(runs)
    (tmp_path / "a" / "dreambooth_config.yaml").unlink()
    assert f"run 1 ({tmp_path / 'a'}): to resume from checkpoint-2" in plan(read_runs(runs))
    assert run_batch(runs) == [tmp_path / "a"] and (tmp_path / "a" / "dreambooth_config.yaml").is_file()


def test_a_launch_environment_without_rank_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE is 2 but RANK is unset"):
        run_batch(tmp_path / "runs.yaml")


def test_a_folder_given_as_the_batch_file_is_one_line_naming_the_file_to_pass(tmp_path, capsys):
    assert main(["batch", str(tmp_path), "--check"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} is a folder; pass the batch file (YAML) itself, "
                                       f"e.g. {tmp_path / 'runs.yaml'}\n")


def test_a_share_with_no_run_warns_once_and_plans_nothing(tiny_sd, subject_dir, tmp_path, caplog):
    """More shards than runs (4 machines, 3 runs): the spare machine's share is empty, not an error."""
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}), ("c", {}))
    with caplog.at_level(logging.INFO, logger="dreambooth"):
        assert main(["batch", str(runs), "--shard", "4/4", "--check"]) == 0
    assert [r.getMessage() for r in caplog.records] == [f"warning: share 4/4 holds no run of {runs}"]
