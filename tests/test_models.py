"""Model folders: clear errors for wrong folders, pickled weights refused unless allowed."""

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from dreambooth.errors import ModelError
from dreambooth.models import check_model_folder, load_components


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


def test_components_report_native_size_and_prediction_type(tiny_sd):
    parts = load_components(tiny_sd)
    assert parts.native_resolution == 32 and parts.prediction_type == "epsilon"
    assert json.loads((tiny_sd / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
