"""SDXL through the same loop: two text encoders, pooled + size/crop conditioning, full and LoRA."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from dreambooth.finetune import LORA_WEIGHTS
from dreambooth.generate import load_trained, sample
from dreambooth.identifier import find_identifiers
from dreambooth.models import load_components
from dreambooth.toyworld.random_model import build_random_sdxl
from dreambooth.trainer import train
from tests.test_trainer import config, losses


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_random_sdxl(tmp_path_factory.mktemp("sdxl") / "model")


def test_identifier_is_one_token_in_both_tokenizers(tiny_sdxl):
    parts = load_components(tiny_sdxl)
    assert parts.is_sdxl and len(parts.tokenizers) == 2
    top = find_identifiers(parts.tokenizers, top_k=1)[0].text
    assert all(len(t.tokenize(top)) == 1 for t in parts.tokenizers)


def test_full_fine_tune_with_text_encoders_loads_in_diffusers(tiny_sdxl, subject_dir, tmp_path):
    out = train(config(tiny_sdxl, subject_dir, tmp_path, train_text_encoder=True, max_train_steps=2))
    assert len(losses(out)) == 2 and "loss/prior" in losses(out)[0]
    pipe = StableDiffusionXLPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.text_encoder_2 is not None
    for part, weights in (("unet", "diffusion_pytorch_model"), ("text_encoder_2", "model")):
        base = load_file(tiny_sdxl / part / f"{weights}.safetensors")
        tuned = load_file(out / part / f"{weights}.safetensors")
        assert any(not torch.equal(base[k], tuned[k]) for k in base), part
    assert np.asarray(sample(pipe, "a dog", 1, steps=2, guidance=5.0, seed=0)[0]).shape == (32, 32, 3)


def test_lora_loads_with_load_lora_weights(tiny_sdxl, subject_dir, tmp_path):
    out = train(config(tiny_sdxl, subject_dir, tmp_path, lora=True, train_text_encoder=True, max_train_steps=2,
                       learning_rate=5e-2))
    assert (out / LORA_WEIGHTS).is_file()
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    before = np.asarray(sample(base, "a dog", 1, 2, 5.0, 0)[0], np.int16)
    base.load_lora_weights(out, weight_name=LORA_WEIGHTS)
    after = np.asarray(sample(base, "a dog", 1, 2, 5.0, 0)[0], np.int16)
    ours = np.asarray(sample(load_trained(out), "a dog", 1, 2, 5.0, 0)[0], np.int16)
    assert np.abs(after - before).max() > 0 and np.abs(ours - after).max() <= 1
