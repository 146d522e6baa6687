"""Pretraining's decoder stage keeps the latent space (encoder frozen) and sees two-toned objects."""

from dataclasses import replace

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from dreambooth.toyworld import fashion_mnist, pretrain, quality, world

ITEMS = np.zeros((3, 28, 28), np.uint8)
ITEMS[:, 4:24, 4:24] = 255  # stand-in items: tests don't need the Fashion-MNIST package
LABELS = np.array([0, 7, 8])


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         sample_size=world.SIZE)


def test_decoder_stage_trains_the_decoder_only_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (ITEMS, LABELS))
    cfg = replace(pretrain.PretrainConfig(), decoder_steps=2, decoder_batch=2, checkpoint_every=1)
    vae = tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    pretrain.train_decoder(cfg, vae, pretrain.Checkpointer(tmp_path, "decoder"), lambda *a: None)
    changed = {k for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    resumed = tiny_vae()
    assert pretrain.Checkpointer(tmp_path, "decoder").load({"vae": resumed}, None) == 2
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_decoder_batches_mix_one_and_two_toned_objects(monkeypatch):
    scenes = []
    monkeypatch.setattr(world, "render", lambda scene, render=world.render: scenes.append(scene) or render(scene))
    cfg = replace(pretrain.PretrainConfig(), decoder_batch=64)
    pixels = pretrain.decoder_batch(cfg, ITEMS, LABELS, np.random.default_rng(0))
    assert pixels.shape == (64, 3, world.SIZE, world.SIZE) and -1 <= pixels.min() and pixels.max() <= 1
    two_toned = [s for s in scenes if s.second_color is not None]
    assert 16 < len(two_toned) < 48 and {s.pattern for s in two_toned} == set(world.PATTERNS)


def test_reconstruction_psnr_names_each_subject(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "model" / "vae")
    for name in ("a", "b"):
        (tmp_path / "subjects" / name).mkdir(parents=True)
        (tmp_path / "subjects" / name / "subject.json").write_text("{}")
        world_image = world.render(world.sample_scene(np.random.default_rng(0), ITEMS[0], "bag"))
        Image.fromarray(world_image).save(tmp_path / "subjects" / name / "00.png")
    psnr = quality.reconstruction_psnr(tmp_path / "model", tmp_path / "subjects")
    assert set(psnr) == {"a", "b"} and all(np.isfinite(v) and v > 0 for v in psnr.values())
