"""`dreambooth import`: a single-file checkpoint in the original layout becomes a base-model folder."""

import sys
import types

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dreambooth import single_file_import
from dreambooth.cli import main
from dreambooth.models import check_model_folder
from dreambooth.single_file_import import ARCHITECTURES, detect_family, read_header, write_configs
from tests.tiny_models import build_tiny_sd2, build_tiny_sdxl

# the tiny SD 2.x predicts noise, as 2.x-base does: its exported file says so (the model spec's architecture)
BUILDERS = {"sd1": None, "sd2-base": build_tiny_sd2, "sdxl": build_tiny_sdxl}


def exported(folder, tmp_path):
    file = tmp_path / "model.safetensors"
    assert main(["export", "--model", str(folder), "--output", str(file)]) == 0
    return file


@pytest.mark.parametrize("family", BUILDERS)
def test_an_exported_file_imports_back_to_the_same_weights(family, tiny_sd, tmp_path, capsys):
    folder = BUILDERS[family](tmp_path / "model") if BUILDERS[family] else tiny_sd
    file = exported(folder, tmp_path)
    keys, metadata = read_header(file)
    assert detect_family(file, keys, metadata) == family
    if family == "sd2-base":  # a file without the model spec is taken as 768-v, as diffusers does
        assert detect_family(file, keys, {}) == "sd2-v"
        assert detect_family(file, keys, {"modelspec.predict_key": "epsilon"}) == "sd2-base"  # as ComfyUI says it
    out = tmp_path / "imported"
    assert main(["import", str(file), "--output", str(out), "--config", str(folder)]) == 0
    assert f"--pretrained_model_name_or_path {out}" in capsys.readouterr().out
    check_model_folder(out)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2")[:4 if family == "sdxl" else 3]:
        want, got = (load_file(next((f / name).glob("*.safetensors"))) for f in (folder, out))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    assert not list(tmp_path.glob(".*.import.tmp"))


# Parameter counts of the published models' parts (diffusers / transformers folders of SD 1.5, SD 2.1, SDXL base 1.0)
PUBLISHED = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2-v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", PUBLISHED)
def test_the_written_configs_build_the_published_architectures(family, tmp_path):
    folder = write_configs(family, tmp_path / family)
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection}
    with torch.device("meta"):  # shapes only: nothing is allocated
        counts = {name: sum(p.numel() for p in classes[name].from_config(classes[name].load_config(folder / name))
                            .parameters()) if name in ("unet", "vae") else
                  sum(p.numel() for p in classes[name](classes[name].config_class.from_pretrained(folder / name))
                      .parameters())
                  for name in PUBLISHED[family]}
    assert counts == PUBLISHED[family]
    tokenizer = CLIPTokenizer.from_pretrained(folder / ("tokenizer_2" if family == "sdxl" else "tokenizer"))
    assert tokenizer.pad_token == ("<|endoftext|>" if family == "sd1" else "!")


def test_zero_terminal_snr_sd1_samples_with_a_scheduler_that_has_it(tmp_path):
    """PNDM, SD 1.5's sampler, has no zero-terminal-SNR betas: such a file gets DDIM, trailing, as diffusers advises."""
    from diffusers import DDIMScheduler

    from dreambooth.models import load_sampling_scheduler

    settings = single_file_import.marked_scheduler_settings(["ztsnr"], {"modelspec.predict_key": "v"})
    scheduler = load_sampling_scheduler(write_configs("sd1", tmp_path / "sd1", settings))
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.rescale_betas_zero_snr
    assert (scheduler.config.prediction_type, scheduler.config.timestep_spacing) == ("v_prediction", "trailing")
    assert scheduler.alphas_cumprod[-1] < 1e-6  # the last step is pure noise


def test_sd2_base_differs_from_768_v_in_size_and_prediction():
    v, base = ARCHITECTURES["sd2-v"], ARCHITECTURES["sd2-base"]
    assert (v["resolution"], base["resolution"]) == (768, 512)
    assert (v["scheduler"][1]["prediction_type"], base["scheduler"][1]["prediction_type"]) == ("v_prediction", "epsilon")
    assert v["unet"]["upcast_attention"] and base["unet"]["upcast_attention"]  # fp16-safe attention, as 2.1 has


def test_bad_files_are_one_line_errors(tiny_sd, tmp_path, capsys):
    file = exported(tiny_sd, tmp_path)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, lora)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    (tmp_path / "model.ckpt").write_bytes(b"not used")
    cases = [([str(tmp_path / "nope.safetensors")], "no such file"),
             ([str(lora)], "no UNet (model.diffusion_model.) or no VAE"),
             ([str(tmp_path / "model.ckpt")], "pass --allow_pickle if you trust the source"),
             ([str(file), "--config", str(tmp_path)], "no model_index.json"),
             ([str(file), "--family", "sdxl"], "does not fit the sdxl architecture"),
             ([str(file), "--family", "sd1", "--config", str(tiny_sd)], "--family and --config: pass one")]
    for extra, message in cases:
        assert main(["import", *extra, "--output", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import", str(file), "--family", "sd3", "--output", str(tmp_path / "out")])
    assert "invalid choice: 'sd3'" in capsys.readouterr().err
    for taken in (tmp_path / "taken", tmp_path / "taken" / "x"):  # a full folder, a file
        assert main(["import", str(file), "--output", str(taken)]) == 2
        assert "exists and is not empty" in capsys.readouterr().err
    assert main(["train", "--check", "--pretrained_model_name_or_path", str(file), "--instance_data_dir", str(tmp_path),
                 "--class_noun", "dog"]) == 2
    assert f"convert it once with `dreambooth import {file} --output FOLDER`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_lightning_era_ckpt_imports_with_allow_pickle(tiny_sd, tmp_path, monkeypatch):
    # SD 1.x's own .ckpt releases keep a Lightning callback and numpy scalars beside the weights,
    # which torch's weights-only loader (and so diffusers') refuses
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    checkpoint_class = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = checkpoint_class
    file = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(exported(tiny_sd, tmp_path)), "global_step": 470000,
                "callbacks": {checkpoint_class: {"best_model_score": np.float64(0.5)}}}, file)
    for name in names:
        monkeypatch.delitem(sys.modules, name)  # not installed where the file is imported
    assert read_header(file) == (list(load_file(tmp_path / "model.safetensors")), {})  # what detection reads
    # with --family named, the pickle is not read a first time for its keys (diffusers reads it once)
    monkeypatch.setattr(single_file_import, "read_header", lambda file: pytest.fail("read the pickle twice"))
    assert main(["import", str(file), "--output", str(tmp_path / "sd1"), "--allow_pickle", "--family", "sd1"]) == 2
    out = tmp_path / "imported"
    assert main(["import", str(file), "--output", str(out), "--allow_pickle", "--config", str(tiny_sd)]) == 0
    want, got = (load_file(next((f / "unet").glob("*.safetensors"))) for f in (tiny_sd, out))
    assert all(torch.equal(want[k], got[k]) for k in want)
