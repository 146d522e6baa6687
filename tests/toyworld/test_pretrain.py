"""Pretraining's decoder stage keeps the latent space (encoder frozen), resumes exactly, and sees
two-toned objects; the UNet's learning rate restarts per cycle."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from dreambooth.toyworld import fashion_mnist, pretrain, world

ITEMS = np.zeros((3, 28, 28), np.uint8)
ITEMS[:, 4:24, 4:24] = 255  # stand-in items: tests don't need the Fashion-MNIST package
LABELS = np.array([0, 7, 8])
CFG = replace(pretrain.PretrainConfig(), decoder_steps=2, decoder_batch=2, checkpoint_every=1)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         sample_size=world.SIZE)


class Interrupted(Exception):
    pass


def interrupt_at(step: int):
    def log(stage: str, at: int, loss: float) -> None:
        if at == step:
            raise Interrupted
    return log


def test_decoder_stage_trains_the_decoder_only(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (ITEMS, LABELS))
    vae = tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    pretrain.train_decoder(CFG, vae, pretrain.Checkpointer(tmp_path, "decoder"), lambda *a: None)
    changed = {k for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)


def test_interrupted_decoder_stage_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (ITEMS, LABELS))
    unbroken = tiny_vae()
    pretrain.train_decoder(CFG, unbroken, pretrain.Checkpointer(tmp_path / "a", "decoder"), lambda *a: None)
    with pytest.raises(Interrupted):  # dies after step 1's checkpoint, inside step 2
        pretrain.train_decoder(CFG, tiny_vae(), pretrain.Checkpointer(tmp_path / "b", "decoder"), interrupt_at(2))
    resumed = tiny_vae()
    pretrain.train_decoder(CFG, resumed, pretrain.Checkpointer(tmp_path / "b", "decoder"), lambda *a: None)
    assert all(torch.allclose(v, unbroken.state_dict()[k], atol=1e-6) for k, v in resumed.state_dict().items())


def test_losses_keep_one_row_per_step_across_a_resume(tmp_path):
    file = tmp_path / "losses.csv"
    interrupted = pretrain.LossLog(file)
    for step in (1, 2, 3):
        interrupted("vae", step, 1.0)
    interrupted("denoiser", 1, 1.0)
    with open(file, "a") as f:
        f.write("deno")  # cut short by the crash
    resumed = pretrain.LossLog(file)  # vae done (its checkpoint at 3), denoiser resumed from step 1's checkpoint
    for step in (2, 3):
        resumed("denoiser", step, 0.25)
    rows = [line.split(",")[:3] for line in file.read_text().splitlines()]
    assert rows == [["vae", "1", "1.000000"], ["vae", "2", "1.000000"], ["vae", "3", "1.000000"],
                    ["denoiser", "1", "1.000000"], ["denoiser", "2", "0.250000"], ["denoiser", "3", "0.250000"]]


def test_decoder_batches_mix_one_and_two_toned_objects(monkeypatch):
    scenes = []
    monkeypatch.setattr(world, "render", lambda scene, render=world.render: scenes.append(scene) or render(scene))
    cfg = replace(pretrain.PretrainConfig(), decoder_batch=64)
    pixels = pretrain.decoder_batch(cfg, ITEMS, LABELS, np.random.default_rng(0))
    assert pixels.shape == (64, 3, world.SIZE, world.SIZE) and -1 <= pixels.min() and pixels.max() <= 1
    two_toned = [s for s in scenes if s.second_color is not None]
    assert 16 < len(two_toned) < 48 and {s.pattern for s in two_toned} == set(world.PATTERNS)
    assert all(s.second_color != s.color for s in two_toned)


def test_unet_rate_warms_up_holds_and_decays_to_zero_in_every_cycle():
    cfg = replace(pretrain.PretrainConfig(), unet_lr=1.0, unet_cycles=(6_000, 9_000), unet_decay_steps=2_000)
    rate = [pretrain.unet_rate(cfg, step) for step in range(9_000)]
    assert rate[0] == 1 / 200 and rate[199] == 1.0 and rate[3_999] == 1.0  # warm-up, then flat
    assert rate[4_000] == 1.0 and rate[5_999] == 1 / 2_000  # the first cycle decays to zero ...
    assert rate[6_000] == 1 / 200 and rate[6_199] == 1.0 and rate[6_999] == 1.0  # ... and restarts
    assert rate[8_999] == 1 / 2_000
    single = replace(cfg, unet_cycles=(6_000,))
    assert [pretrain.unet_rate(single, s) for s in range(6_000)] == rate[:6_000]  # extending keeps the past


def test_saved_pipeline_loads_offline_with_a_tokenizer_free_of_encoding_state(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "model"
    out.mkdir()
    (out / "quality.json").write_text("{}")  # measured on the weights about to be replaced
    vae, text_encoder, unet = pretrain.build_models(CFG)
    pretrain.save_pipeline(CFG, vae, text_encoder, unet, out)
    saved = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.tokenizer.model_max_length == CFG.context_length
    assert (out / "README.md").read_text().count("Not measured yet") == 1
    assert not (out / "quality.json").exists() and [p.name for p in tmp_path.iterdir()] == ["model"]


def first_unet_loss(tmp_path, snr_gamma: float | None) -> float:
    """The logged loss of the UNet stage's first step, from the same weights and batch."""
    from transformers import CLIPTokenizer

    from dreambooth.models import CLIP_TOKENIZER_DIR

    cfg = replace(CFG, unet_batch=4, unet_cycles=(2_001,), snr_gamma=snr_gamma)
    _, text_encoder, unet = pretrain.build_models(cfg)
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, model_max_length=cfg.context_length)
    moments = torch.randn(8, 8, world.SIZE // 4, world.SIZE // 4, generator=torch.Generator().manual_seed(0)).abs()
    data = {"labels": np.arange(8) % 10, "colors": np.arange(8) % len(world.COLORS), "contexts": np.arange(8)}
    losses = []

    def log(stage: str, step: int, loss: float) -> None:
        losses.append(loss)
        raise Interrupted  # one step is enough

    with pytest.raises(Interrupted):
        pretrain.train_denoiser(cfg, data, moments, 1.0, text_encoder, unet, tokenizer,
                                pretrain.Checkpointer(tmp_path / str(snr_gamma), "denoiser"), log)
    return losses[0]


def test_snr_gamma_weights_the_unet_loss_by_min_snr(tmp_path):
    plain = first_unet_loss(tmp_path, None)
    assert first_unet_loss(tmp_path, 1e9) == pytest.approx(plain, rel=1e-6)  # min(SNR, inf) / SNR = 1
    assert first_unet_loss(tmp_path, 1.0) < plain  # high-SNR (low-noise) steps weigh less


def test_object_weight_moves_the_unet_loss_onto_the_object():
    """Errors at and around the object weigh 1 + object_weight against the context's 1, normalized
    per example; with no weight the loss is the plain mean squared error."""
    cover = torch.zeros(1, 16, 16)
    cover[0, 6:10, 6:10] = 0.5  # the object; one latent pixel around it counts as the object's too
    on_object, on_context = torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)
    on_object[:, :, 5:11, 5:11] = 1.0  # 36 of 256 pixels in error, inside the weighted region
    on_context[:, :, 0:4, 0:9] = 1.0  # as many, outside it
    target = torch.zeros(1, 4, 16, 16)
    plain, weighted = CFG, replace(CFG, object_weight=3.0)
    assert pretrain.denoising_loss(plain, on_object, target, None, cover) == pytest.approx(36 / 256)
    assert pretrain.denoising_loss(plain, on_context, target, None, cover) == pytest.approx(36 / 256)
    mean_weight = (36 * 4 + 220) / 256
    assert pretrain.denoising_loss(weighted, on_object, target, None, cover) == pytest.approx(36 * 4 / 256 / mean_weight)
    assert pretrain.denoising_loss(weighted, on_context, target, None, cover) == pytest.approx(36 / 256 / mean_weight)
    snr = torch.tensor([0.5])
    assert pretrain.denoising_loss(weighted, on_object, target, snr, cover) == pytest.approx(36 * 2 / 256 / mean_weight)


def test_object_weight_on_scenes_rendered_without_masks_is_a_one_line_error():
    from dreambooth.errors import DataError

    with pytest.raises(DataError, match="delete it to render them again"):
        pretrain.train_denoiser(replace(CFG, object_weight=1.0), {"labels": LABELS}, None, 1.0, None, None, None,
                                None, None)


def test_a_work_folder_holds_one_recipe_and_may_only_gain_unet_cycles(tmp_path):
    """Its checkpoints and latents would otherwise be resumed as another recipe's (another VAE's latents)."""
    from dreambooth.errors import DataError

    cfg = replace(pretrain.PretrainConfig(), unet_cycles=(3000, 6000), snr_gamma=5.0)
    pretrain.check_work(cfg, tmp_path)
    pretrain.check_work(replace(cfg, unet_cycles=(3000, 6000, 9000)), tmp_path)  # a finished run extended
    for changed, named in [(dict(snr_gamma=None), "snr_gamma: 5.0 then, None now"),
                           (dict(vae_from="shipped"), "vae_from"),
                           (dict(unet_cycles=(3000,)), "unet_cycles: [3000, 6000, 9000] then, [3000] now")]:
        with pytest.raises(DataError, match=re.escape(named)):
            pretrain.check_work(replace(cfg, **{"unet_cycles": (3000, 6000, 9000), **changed}), tmp_path)


@pytest.mark.parametrize("flag", [["--snr_gamma", "nan"], ["--object_weight", "inf"], ["--unet_lr", "0"],
                                  ["--unet_lr", "nan"], ["--unet_cycles", "1500", "--unet_decay_steps", "1500"],
                                  ["--unet_batch", "0"], ["--device", "nonesuch"], ["--device", "meta"]])
def test_a_setting_that_cannot_work_is_refused_before_any_work(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["pretrain", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), *flag])
    with pytest.raises(SystemExit):
        pretrain.main()
    assert flag[0] in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_the_unet_stage_settings_and_device_reach_the_recipe(tmp_path, monkeypatch):
    """A GPU takes a larger batch at another rate; the recipe records them, so a --work folder is
    resumed only by the same ones."""
    ran = {}
    monkeypatch.setattr(pretrain, "pretrain", lambda cfg, out, work, device: ran.update(cfg=cfg, device=device))
    monkeypatch.setattr("sys.argv", ["pretrain", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
                                     "--unet_batch", "256", "--unet_lr", "6e-4", "--unet_decay_steps", "500",
                                     "--unet_cycles", "1125", "2500", "--device", "cpu"])
    pretrain.main()
    assert ran["device"] == "cpu"
    assert ran["cfg"] == replace(pretrain.PretrainConfig(), unet_batch=256, unet_lr=6e-4, unet_decay_steps=500,
                                 unet_cycles=(1125, 2500))
