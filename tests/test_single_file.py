"""Single-file export in the original SD layouts, checked by diffusers' own single-file loader."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.single_file import model_family
from dreambooth.single_file_import import marked_scheduler_settings, read_header, write_configs
from tests.tiny_models import build_tiny_sd2, build_tiny_sdxl

# family: (pipeline class, builder (None: the session's tiny SD 1.x), {key: shape} the original layout has)
FAMILIES = {
    "sd1": (StableDiffusionPipeline, None, {
        "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
        "first_stage_model.decoder.up.0.block.0.conv1.weight": (16, 32, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 32)}),
    "sd2": (StableDiffusionPipeline, build_tiny_sd2, {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (32, 32),  # linear, not 1x1 conv
        "cond_stage_model.model.token_embedding.weight": (49408, 32),
        "cond_stage_model.model.positional_embedding": (77, 32),
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight": (96, 32),  # q, k, v fused
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight": (64, 32),
        "cond_stage_model.model.ln_final.bias": (32,)}),
    "sdxl": (StableDiffusionXLPipeline, build_tiny_sdxl, {
        "model.diffusion_model.label_emb.0.2.weight": (128, 128),
        "model.diffusion_model.output_blocks.1.2.conv.weight": (64, 64, 3, 3),  # upsampler after attention
        "first_stage_model.encoder.mid.attn_1.q.weight": (32, 32, 1, 1),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (32,),
        "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias": (144,),
        "conditioner.embedders.1.model.text_projection": (48, 48)}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_round_trips_through_diffusers(family, tiny_sd, tmp_path):
    cls, build, expected = FAMILIES[family]
    folder = build(tmp_path / "model") if build else tiny_sd
    extra = {"safety_checker": None} if cls is StableDiffusionPipeline else {}
    assert model_family(folder) == family
    out = tmp_path / "model.safetensors"
    assert main(["export", "--model", str(folder), "--output", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        shapes, metadata = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata()
    assert {k: shapes.get(k) for k in expected} == expected
    # the model spec SwarmUI tells a file's kind by (the tiny SD 2.x predicts noise: 2.x-512, not 768-v)
    architecture = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base"}
    assert (metadata["modelspec.architecture"], metadata["modelspec.prediction_type"], metadata["modelspec.title"],
            metadata["modelspec.implementation"]) == (architecture[family], "epsilon", "model",
                                                      "https://github.com/Stability-AI/generative-models")
    loaded = cls.from_single_file(str(out), config=str(folder), local_files_only=True, **extra)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2")[:4 if family == "sdxl" else 3]:
        want, got = load_file(next((folder / name).glob("*.safetensors"))), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name


def test_a_sharded_unet_is_exported_whole(tiny_sd, tmp_path):
    """save_pretrained splits large weights (an SDXL UNet in fp32) into shards; all of them go out."""
    import shutil

    from diffusers import UNet2DConditionModel

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_sd, sharded)
    shutil.rmtree(sharded / "unet")
    UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").save_pretrained(sharded / "unet", max_shard_size="200KB")
    assert len(list((sharded / "unet").glob("*.safetensors"))) > 1
    files = [tmp_path / f"{name}.safetensors" for name in ("whole", "sharded")]
    for folder, file in zip((tiny_sd, sharded), files):
        assert main(["export", "--model", str(folder), "--output", str(file)]) == 0
    whole, from_shards = (load_file(f) for f in files)
    assert whole.keys() == from_shards.keys() and all(torch.equal(whole[k], from_shards[k]) for k in whole)


def test_a_vae_with_the_old_attention_names_exports_as_the_new(tiny_sd, tmp_path):
    """Folders saved by older diffusers name the VAE's attention query/key/value/proj_attn; diffusers
    loads them, and so must the single file's readers (they drop names they do not know, silently)."""
    import shutil

    from safetensors.torch import save_file

    old = tmp_path / "old-names"
    shutil.copytree(tiny_sd, old)
    weights = old / "vae" / "diffusion_pytorch_model.safetensors"
    renamed = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for key, value in load_file(weights).items():
        for new_name, old_name in renamed.items():
            key = key.replace(new_name, old_name) if ".attentions." in key else key
        state[key] = value
    assert any(".query." in key for key in state)
    save_file(state, weights)
    files = [tmp_path / f"{name}.safetensors" for name in ("new", "old")]
    for folder, file in zip((tiny_sd, old), files):
        assert main(["export", "--model", str(folder), "--output", str(file)]) == 0
    new, from_old = (load_file(f) for f in files)
    assert new.keys() == from_old.keys() and all(torch.equal(new[k], from_old[k]) for k in new)


def test_export_output_mistakes_are_one_line_errors(tiny_sd, tmp_path, capsys):
    assert main(["export", "--model", str(tiny_sd), "--output", str(tmp_path)]) == 2
    assert "is a folder; name the file" in capsys.readouterr().err
    assert main(["export", "--model", str(tiny_sd), "--output", str(tmp_path / "model.ckpt")]) == 2
    assert "end the name in .safetensors" in capsys.readouterr().err
    assert main(["export", "--model", str(tiny_sd), "--output", str(tmp_path / "new" / "model.safetensors")]) == 0
    assert (tmp_path / "new" / "model.safetensors").is_file()


def test_a_v_prediction_sdxl_carries_the_markers_loaders_read(tmp_path, capsys):
    import json

    folder = build_tiny_sdxl(tmp_path / "model")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "v_prediction",
                                  "rescale_betas_zero_snr": True}))
    out = tmp_path / "model.safetensors"
    assert main(["export", "--model", str(folder), "--output", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        assert {"v_pred", "ztsnr"} <= set(f.keys()) and f.metadata()["modelspec.prediction_type"] == "v"
    # and our import writes them into the configs it loads the file with (SDXL's publised ones predict noise)
    settings = marked_scheduler_settings(*read_header(out))
    assert settings == {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    written = json.loads((write_configs("sdxl", tmp_path / "configs", settings) / "scheduler" /
                          "scheduler_config.json").read_text())
    assert {k: written[k] for k in settings} == settings and written["_class_name"] == "EulerDiscreteScheduler"


def test_a_trained_model_names_its_trigger_and_resolution(tiny_sd, tmp_path):
    """What UIs may add to a prompt (the identifier and class noun) and the size it was trained at."""
    import shutil

    import yaml

    folder = tmp_path / "trained"
    shutil.copytree(tiny_sd, folder)
    (folder / "dreambooth_config.yaml").write_text(yaml.safe_dump(
        {"pretrained_model_name_or_path": "/models/base-sd", "identifier": "zwx", "class_noun": "dog", "resolution": 48}))
    out = tmp_path / "zwx-dog.safetensors"
    assert main(["export", "--model", str(folder), "--output", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert (metadata["modelspec.trigger_phrase"], metadata["modelspec.resolution"], metadata["modelspec.title"]) == (
        "zwx dog", "48x48", "zwx-dog")
    assert metadata["modelspec.description"] == 'DreamBooth fine-tune of base-sd; prompt with "zwx dog"'
