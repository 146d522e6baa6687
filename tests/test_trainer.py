"""End-to-end behaviour of the training loop on a tiny random-weight SD model."""

import json

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from dreambooth import class_images, runlog
from dreambooth.config import from_dict
from dreambooth.trainer import Trainer, train
from tests.tiny_models import IMAGE_SIZE


def config(tiny_sd, subject_dir, tmp_path, **overrides):
    values = dict(pretrained_model_name_or_path=str(tiny_sd), instance_data_dir=str(subject_dir), class_noun="dog",
                  output_dir=str(tmp_path / "out"), class_cache_dir=str(tmp_path / "cache"), num_class_images=2,
                  class_inference_steps=2, max_train_steps=2, learning_rate=1e-3, report_to="none",
                  center_crop=True)
    return from_dict({**values, **overrides})


def losses(out):
    return runlog.read(out)


def test_instance_loss_falls_when_overfitting_one_subject(tiny_sd, subject_dir, tmp_path):
    cfg = config(tiny_sd, subject_dir, tmp_path, with_prior_preservation=False, max_train_steps=30,
                 train_batch_size=4)
    out = train(cfg)
    history = [row["loss/instance"] for row in losses(out)]
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5


def test_prior_term_changes_the_update(tiny_sd, subject_dir, tmp_path):
    def one_step(weight):
        trainer = Trainer(config(tiny_sd, subject_dir, tmp_path / str(weight), prior_loss_weight=weight,
                                 max_train_steps=1))
        trainer.setup()
        trainer.step = 0
        loss = trainer.training_step(0)
        return loss, [p.detach().clone() for p in trainer.unet.parameters()]

    loss0, params0 = one_step(0.0)
    loss1, params1 = one_step(1.0)
    # same data, noise and timesteps: only lambda differs
    assert loss0.instance.item() == pytest.approx(loss1.instance.item())
    assert loss1.total.item() == pytest.approx(loss1.instance.item() + loss1.prior.item())
    assert any(not torch.equal(a, b) for a, b in zip(params0, params1))


def test_output_reloads_in_diffusers_and_differs_from_base(tiny_sd, subject_dir, tmp_path):
    out = train(config(tiny_sd, subject_dir, tmp_path, max_train_steps=3, validation_prompts=["a {identifier} dog"],
                       validation_steps=3, num_validation_images=2, inference_steps=2))
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet is not None and (out / "validation" / "step-000003.png").is_file()
    base = load_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")
    tuned = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert base.keys() == tuned.keys() and any(not torch.equal(base[k], tuned[k]) for k in base)
    card = (out / "README.md").read_text()
    assert "dog" in card and "prior preservation" in card
    image = pipe("a dog", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_text_encoder_training_changes_it_and_stops(tiny_sd, subject_dir, tmp_path):
    out = train(config(tiny_sd, subject_dir, tmp_path, train_text_encoder=True, text_encoder_stop_step=1,
                       text_encoder_lr=1e-2, max_train_steps=2))
    base = load_file(tiny_sd / "text_encoder" / "model.safetensors")
    tuned = load_file(out / "text_encoder" / "model.safetensors")
    assert any(not torch.equal(base[k], tuned[k]) for k in base)


def test_a_text_encoder_past_its_stop_step_conditions_without_dropout(tiny_sd, subject_dir, tmp_path):
    """Frozen from --text_encoder_stop_step on, it must give the UNet the conditioning sampling gives
    (eval mode), not prompts re-randomized by LoRA dropout every step."""
    trainer = Trainer(config(tiny_sd, subject_dir, tmp_path, lora=True, lora_dropout=0.5, train_text_encoder=True,
                             text_encoder_stop_step=1))
    trainer.setup()
    try:
        trainer.step = 1
        first, again = trainer.prompt_embeddings(), trainer.prompt_embeddings()
        assert torch.equal(first.hidden, again.hidden) and not any(e.training for e in trainer.text_encoders)
    finally:
        trainer.close()


def test_nan_loss_stops_with_advice(tiny_sd, subject_dir, tmp_path):
    from dreambooth.errors import DreamBoothError

    with pytest.raises(DreamBoothError, match=r"the loss is not finite; lower --learning_rate \(now 1e\+30\) and "
                                              r"train again, into another --output_dir or after deleting .*out"):
        train(config(tiny_sd, subject_dir, tmp_path, learning_rate=1e30, max_train_steps=20, max_grad_norm=1e30))


def test_nan_in_an_earlier_micro_step_stops_the_run(tiny_sd, subject_dir, tmp_path, monkeypatch):
    """With accumulation, a NaN in micro-step 0 reaches the update even if micro-step 1 is finite."""
    import dataclasses

    from dreambooth.errors import DreamBoothError

    original = Trainer.training_step

    def first_micro_step_diverges(self, micro_step):
        loss = original(self, micro_step)
        return dataclasses.replace(loss, total=loss.total * float("nan")) if micro_step == 0 else loss

    monkeypatch.setattr(Trainer, "training_step", first_micro_step_diverges)
    with pytest.raises(DreamBoothError, match="step 1: the loss is not finite"):
        train(config(tiny_sd, subject_dir, tmp_path, gradient_accumulation_steps=2, max_train_steps=2))


def test_v_prediction_min_snr_offset_noise_checkpointing_bf16_and_accumulation(tmp_path, subject_dir):
    from tests.tiny_models import build_tiny_sd

    model = build_tiny_sd(tmp_path / "v-model", prediction_type="v_prediction")
    out = train(config(model, subject_dir, tmp_path, snr_gamma=5.0, noise_offset=0.1, gradient_checkpointing=True,
                       mixed_precision="bf16", gradient_accumulation_steps=2, lr_scheduler="cosine", lr_warmup_steps=1,
                       validation_prompts=["a {identifier} dog"], validation_steps=2, inference_steps=2))
    rows = losses(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)  # finite
    # frozen parts ran in bf16 but are saved in full precision, unchanged
    base, saved = (load_file(m / "vae" / "diffusion_pytorch_model.safetensors") for m in (model, out))
    assert all(saved[k].dtype == torch.float32 and torch.equal(saved[k], base[k]) for k in base)


class SkipsFirstUpdates:
    """fp16's loss scaler, as accelerate calls it, finding an overflow in the first `n` updates (it skips them)."""

    def __init__(self, n: int):
        self.n = n

    def step(self, optimizer, closure=None):
        if self.n:
            self.n -= 1
        else:
            optimizer.step(closure)

    def update(self):
        pass


def test_updates_fp16_skipped_do_not_advance_the_schedule(tiny_sd, subject_dir, tmp_path):
    """As in diffusers, the rate follows the updates applied; a resume rebuilds it at the same place."""
    cfg = config(tiny_sd, subject_dir, tmp_path, with_prior_preservation=False, lr_scheduler="linear", max_train_steps=8)
    trainer = Trainer(cfg)
    trainer.setup()
    # as accelerate wraps the optimizer under fp16, where a GPU gives it a loss scaler (a CPU gives none)
    trainer.optimizer = AcceleratedOptimizer(trainer.optimizer.optimizer, device_placement=False,
                                             scaler=SkipsFirstUpdates(2))
    for trainer.step in range(3):
        trainer.update()
    trainer.step += 1
    assert trainer.optimizer.step_was_skipped is False
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 7 / 8)  # one update applied of eight
    trainer._save_checkpoint()
    trainer.close()
    resumed = Trainer(from_dict({**cfg.to_dict(), "resume_from_checkpoint": "latest"}))
    resumed.setup()
    assert resumed.start_step == 3 and resumed.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 7 / 8)
    resumed.close()


def test_scale_lr_and_the_schedule_options_reach_the_optimizer(tiny_sd, subject_dir, tmp_path):
    cfg = config(tiny_sd, subject_dir, tmp_path, with_prior_preservation=False, train_text_encoder=True,
                 learning_rate=1e-4, text_encoder_lr=1e-5, scale_lr=True, train_batch_size=2,
                 gradient_accumulation_steps=3, lr_scheduler="polynomial", lr_power=2.0, max_train_steps=10)
    trainer = Trainer(cfg)
    trainer.setup()
    assert [group["lr"] for group in trainer.optimizer.param_groups] == pytest.approx([6e-4, 6e-5])  # x 2 x 3 x 1
    for _ in range(5):  # half way; polynomial decay to 1e-7: (lr - 1e-7) * (1 - 1/2) ** power + 1e-7
        trainer.lr_scheduler.step()
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx((6e-4 - 1e-7) * 0.25 + 1e-7)


def test_class_images_are_drawn_at_the_models_own_size(tiny_sd, subject_dir, tmp_path):
    # as diffusers does: a model samples worst off its native size; the loader resizes them like the photos
    train(config(tiny_sd, subject_dir, tmp_path, resolution=IMAGE_SIZE // 2, max_train_steps=1))
    sizes = {Image.open(p).size for p in (tmp_path / "cache").rglob("*.png")}
    assert sizes == {(IMAGE_SIZE, IMAGE_SIZE)}


def test_class_images_are_drawn_in_the_chosen_precision_from_a_copy(tiny_sd, subject_dir, tmp_path, monkeypatch):
    drawn_with, generate = [], class_images._generate
    monkeypatch.setattr(class_images, "_generate", lambda spec, pipe, *args: (drawn_with.append(pipe.unet.dtype),
                                                                               generate(spec, pipe, *args)))
    assert Trainer(config(tiny_sd, subject_dir, tmp_path)).cfg.prior_generation_precision == "fp32"  # on a CPU
    trainer = Trainer(config(tiny_sd, subject_dir, tmp_path, prior_generation_precision="bf16"))
    trainer.setup()
    assert drawn_with == [torch.bfloat16]
    assert json.loads(next((tmp_path / "cache").rglob("spec.json")).read_text())["precision"] == "bf16"
    # the weights training starts from are the base's, not rounded to bf16 and back
    base, unet = load_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"), trainer.parts.unet.state_dict()
    assert all(unet[k].dtype == torch.float32 and torch.equal(unet[k], base[k]) for k in base)


def test_unset_mixed_precision_is_accelerates(tiny_sd, subject_dir, tmp_path, monkeypatch):
    # `accelerate launch --mixed_precision bf16` (or `accelerate config`) sets this for the script it runs
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert Trainer(config(tiny_sd, subject_dir, tmp_path)).cfg.mixed_precision == "bf16"
    assert Trainer(config(tiny_sd, subject_dir, tmp_path, mixed_precision="no")).cfg.mixed_precision == "no"


def test_a_second_run_into_a_busy_output_dir_is_refused(tiny_sd, subject_dir, tmp_path):
    """Two runs in one folder would delete each other's checkpoints as leftovers."""
    import fcntl
    import os

    from dreambooth.errors import ConfigError, DreamBoothError

    out = tmp_path / "out"
    out.mkdir()
    held = os.open(out, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as another run's process holds it
    try:
        with pytest.raises(ConfigError, match="--output_dir .*out is in use by another dreambooth run"):
            train(config(tiny_sd, subject_dir, tmp_path))
    finally:
        os.close(held)
    assert not any(out.iterdir())
    new = tmp_path / "new"  # a run refused up front leaves no folder behind
    with pytest.raises(DreamBoothError, match="nothing"):
        train(config(tiny_sd, subject_dir, tmp_path, output_dir=str(new), instance_data_dir=str(tmp_path / "nothing")))
    assert not new.exists()


def test_an_output_dir_under_a_file_is_one_line_up_front(tiny_sd, subject_dir, tmp_path, capsys):
    from dreambooth.cli import main

    (tmp_path / "a-file").write_text("")
    args = ["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
            "--class_noun", "dog", "--output_dir", str(tmp_path / "a-file" / "out")]
    assert main([*args, "--check"]) == 2
    assert "a-file is a file; choose another folder" in capsys.readouterr().err
    assert main(args) == 2
    assert "--output_dir" in capsys.readouterr().err


def test_a_run_says_which_photos_it_skipped(tiny_sd, subject_dir, tmp_path, caplog):
    import logging
    import shutil

    photos = shutil.copytree(subject_dir, tmp_path / "photos")
    (photos / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a phone's photo, not decodable here
    with caplog.at_level(logging.INFO, logger="dreambooth"):
        train(config(tiny_sd, photos, tmp_path, max_train_steps=1))
    assert "photos: skipped IMG_0001.HEIC: HEIC/HEIF: convert it to JPEG" in caplog.text


@pytest.mark.parametrize("steps, every, grids", [(2, 5, ["step-000002.png"]), (3, 2, ["step-000002.png", "step-000003.png"])])
def test_a_run_stopped_at_a_step_it_was_to_look_at_looks_when_resumed(tiny_sd, subject_dir, tmp_path, monkeypatch,
                                                                      steps, every, grids):
    """The stop saves a checkpoint at its step before that step's validation: the resume validates (and
    would score) it first, be it the last step, whose model is the one saved, or one due on the way."""
    import signal

    from dreambooth.run_guard import Interrupted
    from dreambooth.trainer import Trainer

    original = Trainer.training_step

    def signalled_in_step_2(self, draw):
        if draw == 1:
            self.stop_signal = signal.SIGTERM  # what the handler sets on SIGTERM
        return original(self, draw)

    common = dict(max_train_steps=steps, validation_prompts=["a {identifier} dog"], validation_steps=every,
                  num_validation_images=1, inference_steps=2)
    monkeypatch.setattr(Trainer, "training_step", signalled_in_step_2)
    with pytest.raises(Interrupted, match="at step 2"):
        train(config(tiny_sd, subject_dir, tmp_path, **common))
    monkeypatch.undo()
    assert not (tmp_path / "out" / "validation").exists()
    train(config(tiny_sd, subject_dir, tmp_path, **common, resume_from_checkpoint="latest"))
    assert sorted(p.name for p in (tmp_path / "out" / "validation").iterdir()) == grids


def test_class_images_are_drawn_and_their_model_freed_before_the_training_parts_load(tiny_sd, subject_dir, tmp_path,
                                                                                     monkeypatch):
    """Both in memory at once would take twice the memory (an SDXL in fp32 and in fp16: 15 GB)."""
    import weakref

    from dreambooth import trainer as trainer_module

    drawing = []

    def load_pipeline(*args, **kwargs):
        pipe = real_load_pipeline(*args, **kwargs)
        drawing.append(weakref.ref(pipe.unet))
        return pipe

    def load_components(*args, **kwargs):
        assert len(drawing) == 1 and drawing[0]() is None  # loaded once for the class images, and freed
        return real_load_components(*args, **kwargs)

    real_load_pipeline, real_load_components = trainer_module.load_pipeline, trainer_module.load_components
    monkeypatch.setattr(trainer_module, "load_pipeline", load_pipeline)
    monkeypatch.setattr(trainer_module, "load_components", load_components)
    Trainer(config(tiny_sd, subject_dir, tmp_path, num_class_images=2, class_inference_steps=2)).setup()
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 2
