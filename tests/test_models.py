"""Model folders: clear errors for wrong folders, pickled weights refused unless allowed."""

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from dreambooth.errors import ModelError
from dreambooth.models import check_model_folder, load_components, native_resolution


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="is not a folder"):
        check_model_folder(tmp_path / "missing")
    with pytest.raises(ModelError, match="no model_index.json"):
        check_model_folder(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        check_model_folder(tmp_path)


def test_missing_component_is_named(tiny_sd, tmp_path):
    copy = shutil.copytree(tiny_sd, tmp_path / "m")
    shutil.rmtree(copy / "vae")
    with pytest.raises(ModelError, match="missing component.*vae"):
        check_model_folder(copy)


def test_pickled_weights_are_refused_unless_allowed(tiny_sd, tmp_path):
    copy = shutil.copytree(tiny_sd, tmp_path / "m")
    unet = UNet2DConditionModel.from_pretrained(copy / "unet")
    for f in (copy / "unet").glob("*.safetensors"):
        f.unlink()
    unet.save_pretrained(copy / "unet", safe_serialization=False)
    with pytest.raises(ModelError, match="--allow_pickle"):
        check_model_folder(copy)
    from dreambooth.preflight import _weights_bytes

    assert _weights_bytes(copy, ("unet",)) > 0  # the disk check counts them too, and does not fail on them
    parts = load_components(copy, allow_pickle=True)
    expected = load_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(parts.unet.state_dict()[k], v) for k, v in expected.items())


def test_the_native_size_and_prediction_type_are_read_off_the_folder(tiny_sd):
    parts = load_components(tiny_sd)
    assert native_resolution(tiny_sd) == 32 and parts.prediction_type == "epsilon"
    assert json.loads((tiny_sd / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_only_the_weights_from_pretrained_reads_count(tiny_sd, tmp_path):
    """A variant-only component (fp16), or a stray .safetensors beside pickled weights, is not taken for them."""
    variant = shutil.copytree(tiny_sd, tmp_path / "variant")
    (variant / "unet" / "diffusion_pytorch_model.safetensors").rename(
        variant / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(ModelError, match=r"no diffusion_pytorch_model.safetensors, only "
                                         r"diffusion_pytorch_model.fp16.safetensors \(a variant"):
        check_model_folder(variant)
    decoy = shutil.copytree(tiny_sd, tmp_path / "decoy")
    weights = load_file(decoy / "text_encoder" / "model.safetensors")
    torch.save(weights, decoy / "text_encoder" / "pytorch_model.bin")  # transformers 5 writes safetensors only
    (decoy / "text_encoder" / "model.safetensors").rename(decoy / "text_encoder" / "notes.safetensors")
    with pytest.raises(ModelError, match="only pickled .bin weights"):
        check_model_folder(decoy)


def test_a_lora_folder_cannot_let_its_base_be_unpickled(tiny_sd, tmp_path):
    from dreambooth.outputs import CONFIG_FILE, LORA_WEIGHTS, lora_base

    base = shutil.copytree(tiny_sd, tmp_path / "base")
    UNet2DConditionModel.from_pretrained(base / "unet").save_pretrained(base / "unet", safe_serialization=False)
    (base / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / LORA_WEIGHTS).write_bytes(b"")
    (lora / CONFIG_FILE).write_text(f"pretrained_model_name_or_path: {base}\nallow_pickle: true\n")
    with pytest.raises(ModelError, match="only pickled .bin weights"):  # --allow_pickle is the user's to give
        lora_base(lora)
