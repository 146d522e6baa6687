"""SDXL through the same loop: two text encoders, pooled + size/crop conditioning, full and LoRA
(diffusers and kohya files)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth.export import kohya_key
from dreambooth.generate import sample
from dreambooth.identifier import find_identifiers
from dreambooth.models import load_components
from dreambooth.outputs import LORA_WEIGHTS, load_trained
from dreambooth.single_file import unet_namer
from dreambooth.trainer import Trainer, train
from tests.test_lora import loaded_pipes
from tests.test_trainer import config, losses


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


@pytest.fixture(scope="module")
def sdxl_lora(tiny_sdxl, subject_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl-lora")
    # the last step's validation image is our own sampling of the adapted model, as `image` samples
    return train(config(tiny_sdxl, subject_dir, tmp, lora=True, train_text_encoder=True, lora_format="kohya",
                        max_train_steps=2, learning_rate=5e-2, validation_prompts=["a dog"], validation_steps=2,
                        num_validation_images=1, inference_steps=2, guidance_scale=5.0))


def image(pipe) -> np.ndarray:
    return np.asarray(sample(pipe, "a dog", 1, 2, 5.0, 0)[0], np.int16)


def test_lora_loads_with_load_lora_weights(sdxl_lora, tiny_sdxl):
    assert (sdxl_lora / LORA_WEIGHTS).is_file()
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    before = image(base)
    base.load_lora_weights(sdxl_lora, weight_name=LORA_WEIGHTS)
    after = image(base)
    assert np.abs(after - before).max() > 0 and np.abs(image(load_trained(sdxl_lora)) - after).max() <= 1
    in_training = np.asarray(Image.open(sdxl_lora / "validation" / "step-000002.png"), np.int16)
    assert np.abs(after - in_training).max() <= 1  # the file reproduces the model as trained, encoders included


def test_kohya_names_follow_the_original_sdxl_unet():
    # the real SDXL UNet: 2 layers per block, attention in down blocks 1-2 and up blocks 0-1
    config = {"layers_per_block": 2, "block_out_channels": [320, 640, 1280],
              "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
    ldm = unet_namer(config)
    assert (kohya_key("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", ldm)
            == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight")
    assert (kohya_key("unet.up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_out.0.lora_B.weight", ldm)
            == "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0.lora_up.weight")
    assert ldm("down_blocks.2.resnets.1.conv1") == "input_blocks.8.0.in_layers.2"
    assert ldm("up_blocks.0.upsamplers.0.conv.weight") == "output_blocks.2.2.conv.weight"
    assert (kohya_key("text_encoder_2.text_model.encoder.layers.3.self_attn.k_proj.lora_A.weight", ldm)
            == "lora_te2_text_model_encoder_layers_3_self_attn_k_proj.lora_down.weight")


def test_kohya_file_loads_with_the_same_outputs(sdxl_lora, tiny_sdxl):
    with safe_open(str(sdxl_lora / "lora_kohya.safetensors"), "pt") as f:
        modules, metadata = {k.split(".")[0] for k in f.keys()}, f.metadata()
    # tiny SDXL: down block 1 (the one with attention) is input block 3; up block 0 is output blocks 0-1
    assert {"lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
            "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_out_0"} <= modules
    assert any(m.startswith("lora_te1_text_model_") for m in modules)
    assert any(m.startswith("lora_te2_text_model_") for m in modules)
    assert all(m.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for m in modules)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    pipes = loaded_pipes(StableDiffusionXLPipeline, tiny_sdxl, sdxl_lora, local_files_only=True)
    for part in ("unet", "text_encoder", "text_encoder_2"):  # every adapter landed on the same module
        ours, kohya = (get_peft_model_state_dict(getattr(p, part), adapter_name="default_0", save_embedding_layers=False)
                       for p in pipes)
        assert ours and ours.keys() == kohya.keys() and all(torch.equal(ours[k], kohya[k]) for k in ours), part
    assert np.abs(image(pipes[0]) - image(pipes[1])).max() <= 1


def test_validation_under_fp16_decodes_with_the_float32_vae(tiny_sdxl, subject_dir, tmp_path, monkeypatch):
    """Under fp16 the VAE stays float32 (force_upcast: SDXL's overflows in half precision); sampling under
    autocast must not run its convolutions in fp16 anyway. accelerate's CPU autocast ignores fp16, so the
    test runs the sampling under torch's own."""
    trainer = Trainer(config(tiny_sdxl, subject_dir, tmp_path, lora=True, prior_mode="prediction", max_train_steps=1,
                             validation_prompts=["a {identifier} dog"], num_validation_images=1, inference_steps=2))
    trainer.setup()
    assert trainer.parts.vae.config.force_upcast
    monkeypatch.setattr(trainer.accelerator, "autocast", lambda: torch.autocast("cpu", dtype=torch.float16))
    decoded, unet = [], []
    trainer.parts.vae.decoder.conv_out.register_forward_hook(lambda m, i, out: decoded.append(out.dtype))
    trainer.parts.unet.conv_out.register_forward_hook(lambda m, i, out: unet.append(out.dtype))
    trainer.validate()
    assert set(unet) == {torch.float16} and decoded == [torch.float32]  # autocast was on, but not for the VAE
    assert (trainer.output_dir / "validation" / "step-000000.png").is_file()
    assert "decode" not in vars(trainer.parts.vae)  # unwrapped again


def test_the_pipeline_built_around_trained_parts_keeps_the_bases_empty_prompt_choice(tiny_sdxl, tmp_path):
    """SDXL bases choose zeros or the encoded "" as the negative of an empty prompt (model_index.json)."""
    import json
    import shutil

    from dreambooth.export import pipeline_from

    base = shutil.copytree(tiny_sdxl, tmp_path / "base")
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    parts = load_components(base)
    pipe = pipeline_from(parts, parts.unet, parts.text_encoders)
    assert pipe.config.force_zeros_for_empty_prompt is False
