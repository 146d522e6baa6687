"""Single-file export in the original SD layout, checked by diffusers' own single-file loader."""

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from dreambooth.cli import main


def test_single_file_round_trips_through_diffusers(tiny_sd, tmp_path):
    out = tmp_path / "model.safetensors"
    assert main(["export", "--model", str(tiny_sd), "--output", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd), local_files_only=True,
                                                      safety_checker=None)
    original = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        expected, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
