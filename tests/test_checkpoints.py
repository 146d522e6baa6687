"""Checkpoints are atomic, resume is exact, and a resume with nothing to resume fails loudly."""

import pytest

from dreambooth import checkpoints
from dreambooth.errors import ConfigError, DreamBoothError
from dreambooth.trainer import train
from tests.test_trainer import config, losses


def test_resumed_run_reproduces_the_uninterrupted_losses(tiny_sd, subject_dir, tmp_path):
    common = dict(max_train_steps=6, checkpointing_steps=3, random_flip=True, train_text_encoder=True)
    full = losses(train(config(tiny_sd, subject_dir, tmp_path / "full", **common)))
    # the same run stopped after step 3, then resumed from its checkpoint
    part = config(tiny_sd, subject_dir, tmp_path / "part", **{**common, "max_train_steps": 3, "checkpointing_steps": 1})
    train(part)
    out = tmp_path / "part" / "out"
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]  # limit 2
    resumed = config(tiny_sd, subject_dir, tmp_path / "part", **common, resume_from_checkpoint="latest")
    train(resumed)
    assert [r["step"] for r in losses(out)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in losses(out)] == [r["loss"] for r in full]


def test_resume_with_nothing_to_resume_fails_clearly(tiny_sd, subject_dir, tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        train(config(tiny_sd, subject_dir, tmp_path, resume_from_checkpoint="latest"))
    with pytest.raises(DreamBoothError, match="nope does not exist"):
        train(config(tiny_sd, subject_dir, tmp_path, resume_from_checkpoint=str(tmp_path / "nope")))


def test_half_written_checkpoints_are_never_trusted(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()  # no state file: a write that died before the rename
    (tmp_path / ".checkpoint-9.tmp").mkdir()
    good = tmp_path / "checkpoint-3"
    good.mkdir()
    (good / checkpoints.STATE_FILE).write_text('{"step": 3}')
    assert checkpoints.latest(tmp_path) == good


def test_lora_checkpoints_hold_adapters_only_and_resume_exactly(tiny_sd, subject_dir, tmp_path):
    common = dict(lora=True, train_text_encoder=True, max_train_steps=4, checkpointing_steps=2, learning_rate=1e-2)
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
