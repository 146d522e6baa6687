"""Checkpoints are atomic, resume is exact, and a resume with nothing to resume fails loudly."""

import os
import pickle
import shutil

import pytest
from PIL import Image

from dreambooth import checkpoints
from dreambooth.errors import DreamBoothError
from dreambooth.trainer import train
from tests.test_trainer import config, losses


def test_resumed_run_reproduces_the_uninterrupted_losses(tiny_sd, subject_dir, tmp_path):
    common = dict(max_train_steps=6, checkpointing_steps=3, random_flip=True, train_text_encoder=True)
    full = losses(train(config(tiny_sd, subject_dir, tmp_path / "full", **common)))
    # the same run stopped after step 3, then resumed from its checkpoint
    photos = tmp_path / "photos"  # a copy, so a photo can be added
    shutil.copytree(subject_dir, photos)
    part = config(tiny_sd, photos, tmp_path / "part", **{**common, "max_train_steps": 3, "checkpointing_steps": 1})
    train(part)
    out = tmp_path / "part" / "out"
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]  # limit 2
    with pytest.raises(DreamBoothError, match=r"checkpoint-40 does not exist; .*out has checkpoint-1, checkpoint-2$"):
        train(config(tiny_sd, photos, tmp_path / "part", **common, resume_from_checkpoint="checkpoint-40"))
    with pytest.raises(DreamBoothError, match=r"checkpoint-2 was trained with other settings \(learning_rate: "
                                              r"trained with 0.001, now 0.002; lora: trained with False, now True\)"):
        # (more steps than the interrupted run's 3 is no change: training on is what a resume is for)
        train(config(tiny_sd, photos, tmp_path / "part", **{**common, "learning_rate": 2e-3}, lora=True,
                     resume_from_checkpoint="latest"))  # refused up front, not mixed into one model
    Image.new("RGB", (32, 32), (200, 10, 10)).save(photos / "new.png")  # same folder, other photos
    resumed = config(tiny_sd, photos, tmp_path / "part", **common, resume_from_checkpoint="latest")
    with pytest.raises(DreamBoothError, match=r"--instance_data_dir: its photos changed since .*checkpoint-2 "
                                              r"\(1 added or edited, 0 gone\)"):
        train(resumed)
    (photos / "new.png").unlink()
    with pytest.raises(DreamBoothError, match=r"--max_train_steps 1: .*checkpoint-2 is at step 2 already"):
        train(config(tiny_sd, photos, tmp_path / "part", **{**common, "max_train_steps": 1},
                     resume_from_checkpoint="latest"))  # would save step 2's model labelled as trained 1 step
    train(resumed)
    assert [r["step"] for r in losses(out)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in losses(out)] == [r["loss"] for r in full]
    # its saved config trains the same run again (`train --config`), not a resume of a folder's checkpoint
    assert "resume_from_checkpoint: null" in (out / "dreambooth_config.yaml").read_text()


def test_resume_with_nothing_to_resume_fails_clearly_before_any_work(tiny_sd, subject_dir, tmp_path):
    with pytest.raises(DreamBoothError, match="no complete checkpoint"):
        train(config(tiny_sd, subject_dir, tmp_path, resume_from_checkpoint="latest"))
    with pytest.raises(DreamBoothError, match=f"nope does not exist; {tmp_path / 'out'} has no checkpoint"):
        train(config(tiny_sd, subject_dir, tmp_path, resume_from_checkpoint=str(tmp_path / "nope")))
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)  # cut short: no state file
    with pytest.raises(DreamBoothError, match="checkpoint-4 is not a complete checkpoint"):
        train(config(tiny_sd, subject_dir, tmp_path, resume_from_checkpoint="checkpoint-4"))
    assert not list(tmp_path.rglob("*.png"))  # found by the checks up front: no class image was generated


def test_fresh_run_into_a_folder_with_an_earlier_runs_checkpoints_is_refused(tiny_sd, subject_dir, tmp_path):
    # it would prune its own first checkpoint against the earlier, higher-numbered ones
    earlier = tmp_path / "out" / "checkpoint-1500"
    earlier.mkdir(parents=True)
    (earlier / checkpoints.STATE_FILE).write_text('{"step": 1500}')
    with pytest.raises(DreamBoothError, match="holds checkpoint-1500 of an earlier run: add --resume_from_checkpoint"):
        train(config(tiny_sd, subject_dir, tmp_path))
    assert checkpoints.complete_checkpoints(tmp_path / "out") == [earlier]
    assert not list(tmp_path.rglob("*.png"))


def test_half_written_checkpoints_are_never_trusted(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()  # no state file: a write that died before the rename
    (tmp_path / ".checkpoint-9.tmp").mkdir()
    good = tmp_path / "checkpoint-3"
    good.mkdir()
    (good / checkpoints.STATE_FILE).write_text('{"step": 3}')
    assert checkpoints.latest(tmp_path) == good


def test_lora_checkpoints_hold_adapters_only_and_resume_exactly(tiny_sd, subject_dir, tmp_path):
    # with dropout, a resume must also restore the random state its masks are drawn from
    common = dict(lora=True, train_text_encoder=True, max_train_steps=4, checkpointing_steps=2, learning_rate=1e-2,
                  lora_dropout=0.3)
    full = losses(train(config(tiny_sd, subject_dir, tmp_path / "full", **common)))
    part = tmp_path / "part"
    train(config(tiny_sd, subject_dir, part, **{**common, "max_train_steps": 3}))
    out = part / "out"
    saved = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"adapters_0.safetensors", "adapters_1.safetensors"} <= saved
    assert not any(name.startswith("model") for name in saved)  # no full model copies
    train(config(tiny_sd, subject_dir, part, **common, resume_from_checkpoint="latest"))
    assert [r["loss"] for r in losses(out)] == [r["loss"] for r in full]


def test_no_keep_checkpoints_deletes_them_once_the_model_is_saved(tiny_sd, subject_dir, tmp_path):
    out = train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=3, checkpointing_steps=1, keep_checkpoints=False))
    assert (out / "model_index.json").is_file() and (out / "dreambooth_config.yaml").is_file()
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".checkpoint-*"))
    kept = train(config(tiny_sd, subject_dir, tmp_path / "kept", max_train_steps=3, checkpointing_steps=1))
    assert [p.name for p in checkpoints.complete_checkpoints(kept)] == ["checkpoint-1", "checkpoint-2"]


def _enospc(path):
    import errno

    return OSError(errno.ENOSPC, "No space left on device", path)


def _safetensors_full(path):  # what safetensors raises when its write fails for lack of space
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                           "message: \"No space left on device\" })")


def _torch_save_full(path):  # what torch.save raises (the optimizer's state) when the disk fills
    return RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: "
                        "No space left on device")


@pytest.mark.parametrize("full", [_enospc, _safetensors_full, _torch_save_full])
def test_a_full_disk_is_one_line_and_the_run_resumes(full, tiny_sd, subject_dir, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from accelerate import Accelerator

    from dreambooth import runlog
    from dreambooth.cli import main

    original = Accelerator.save_state

    def full_disk_at_step_2(self, output_dir, **kwargs):
        if ".checkpoint-2." in output_dir:
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise full(output_dir)
        return original(self, output_dir, **kwargs)

    out = tmp_path / "out"
    argv = ["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
            "--class_noun", "dog", "--output_dir", str(out), "--class_cache_dir", str(tmp_path / "cache"),
            "--num_class_images", "2", "--class_inference_steps", "2", "--max_train_steps", "3",
            "--checkpointing_steps", "1", "--learning_rate", "1e-3", "--report_to", "none", "--center_crop"]
    monkeypatch.setattr(Accelerator, "save_state", full_disk_at_step_2)
    assert main(argv) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the disk is full writing") and "--resume_from_checkpoint latest" in line
    assert "Traceback" not in err
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-1"]
    assert not list(out.glob(".checkpoint-*"))  # the half-written one gave its space back at once
    monkeypatch.undo()
    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert [row["step"] for row in runlog.read(out)] == [1, 2, 3]


def test_an_error_other_than_a_full_disk_is_raised_as_it_was(tmp_path):
    from dreambooth.atomic import removed_on_failure

    with pytest.raises(ValueError, match="boom") as error:
        with removed_on_failure(tmp_path / "partial"):
            raise ValueError("boom")
    assert error.value.__cause__ is None  # not its own cause: a loop for anything walking the chain


def test_a_resume_on_another_number_of_processes_is_warned_about(tiny_sd, subject_dir, tmp_path, caplog):
    """Each process draws its own block of examples: a resume on another count is valid but not exact."""
    import json
    import logging

    train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=2, checkpointing_steps=1))
    state_file = tmp_path / "out" / "checkpoint-1" / checkpoints.STATE_FILE
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))  # as if it ran on two GPUs
    with caplog.at_level(logging.WARNING, logger="dreambooth"):
        train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=2, checkpointing_steps=1,
                     resume_from_checkpoint="latest"))
    assert "ran on 2 process(es), this resume on 1" in caplog.text


def test_a_run_resumes_after_its_folder_and_photos_moved(tiny_sd, subject_dir, tmp_path):
    """A preempted machine's disk mounted elsewhere: the same run, its photos recognized by content (and
    drawn in the order they were, though renamed to sort the other way). A dangling link in the folder
    (a user's) is no part of the run and is left alone."""
    common = dict(max_train_steps=3, checkpointing_steps=2)
    full = losses(train(config(tiny_sd, subject_dir, tmp_path / "full", **common)))
    part = config(tiny_sd, subject_dir, tmp_path / "part", **{**common, "max_train_steps": 2, "checkpointing_steps": 1})
    (tmp_path / "part" / "out").mkdir(parents=True)
    (tmp_path / "part" / "out" / "photos").symlink_to(tmp_path / "nowhere")
    train(part)
    shutil.move(tmp_path / "part", tmp_path / "moved")
    photos = tmp_path / "photos-elsewhere"
    photos.mkdir()
    for i, photo in enumerate(sorted(subject_dir.iterdir())):
        shutil.copy(photo, photos / f"renamed_{9 - i}.png")
    out = train(config(tiny_sd, photos, tmp_path / "moved", **common, resume_from_checkpoint="latest"))
    assert [r["loss"] for r in losses(out)] == [r["loss"] for r in full]


def test_written_models_are_readable_by_the_users_the_umask_lets_read(tmp_path):
    """safetensors writes 0600: a shared model folder or an exported file would be unreadable to others."""
    import os
    import stat

    import torch

    from dreambooth.atomic import save_file_atomic
    from dreambooth.export import publish

    previous = os.umask(0o022)
    try:
        save_file_atomic({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
        staging = tmp_path / "out" / ".final.tmp"
        (staging / "unet").mkdir(parents=True)
        save_file_atomic({"w": torch.zeros(2)}, staging / "unet" / "diffusion_pytorch_model.safetensors")
        os.chmod(staging / "unet" / "diffusion_pytorch_model.safetensors", 0o600)  # as save_pretrained leaves it
        publish(staging, tmp_path / "out")
    finally:
        os.umask(previous)
    for path in (tmp_path / "model.safetensors", tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_a_harmful_pickle_is_one_line_and_runs_nothing(tiny_sd, subject_dir, tmp_path):
    cfg = dict(max_train_steps=2, checkpointing_steps=1)
    train(config(tiny_sd, subject_dir, tmp_path, **cfg))
    checkpoint = tmp_path / "out" / "checkpoint-1"
    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps(RunsACommand(tmp_path / "ran")))  # one someone sent
    with pytest.raises(DreamBoothError, match="holds a pickle torch's weights-only loader refuses"):
        train(config(tiny_sd, subject_dir, tmp_path, **cfg, resume_from_checkpoint="latest"))
    assert not (tmp_path / "ran").exists()
