"""LoRA DreamBooth through the same loop: files diffusers loads, kohya layout, frozen-prediction prior."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreambooth.cli import main
from dreambooth.config import TrainConfig
from dreambooth.export import write_kohya_lora
from dreambooth.generate import sample
from dreambooth.outputs import LORA_WEIGHTS, load_trained
from dreambooth.single_file_import import write_configs
from dreambooth.trainer import Trainer, train
from tests.test_cli import exit_code
from tests.test_trainer import config


def image(pipe, prompt="a dog"):
    return np.asarray(sample(pipe, prompt, 1, steps=2, guidance=7.5, seed=0)[0], dtype=np.int16)


def loaded_pipes(cls, base, lora_dir, **kwargs) -> list:
    """Two fresh pipelines of `cls` from `base`: one with the diffusers LoRA file loaded, one with the kohya file."""
    pipes = []
    for weight_name in (LORA_WEIGHTS, "lora_kohya.safetensors"):
        pipe = cls.from_pretrained(base, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(lora_dir, weight_name=weight_name)
        pipes.append(pipe)
    return pipes


@pytest.fixture(scope="module")
def lora_run(tiny_sd, subject_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    # trained from the base's own folder with a relative path: the tests load it from elsewhere
    here = os.getcwd()
    os.chdir(tiny_sd.parent)
    try:
        # the validation grid at the last step (3, as every 2nd step and the last are sampled) is our own
        # sampling of the adapted model (1 image, seed 0);
        # proj_in and fc1 are adapted too: layers off attention, whose names the files must carry as well
        out = train(config(tiny_sd, subject_dir, tmp, lora=True, lora_rank=4, lora_alpha=8, train_text_encoder=True,
                           lora_target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
                           lora_text_encoder_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
                           lora_format="kohya", max_train_steps=3, learning_rate=5e-2, validation_prompts=["a dog"],
                           validation_steps=2, num_validation_images=1, inference_steps=2,
                           pretrained_model_name_or_path=tiny_sd.name))
    finally:
        os.chdir(here)
    return out


def test_lora_output_is_small_and_loads_in_diffusers(lora_run, tiny_sd):
    assert (lora_run / LORA_WEIGHTS).is_file() and not (lora_run / "unet").exists()
    assert sorted(p.name for p in (lora_run / "validation").iterdir()) == ["step-000002.png", "step-000003.png"]
    base = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    base.set_progress_bar_config(disable=True)
    before = image(base)
    base.load_lora_weights(lora_run, weight_name=LORA_WEIGHTS)
    after = image(base)
    assert np.abs(after - before).max() > 0  # the adapters change the output
    in_training = np.asarray(Image.open(lora_run / "validation" / "step-000003.png"), dtype=np.int16)
    assert np.abs(after - in_training).max() <= 1  # the file reproduces the adapted model we trained
    assert np.abs(image(load_trained(lora_run)) - after).max() <= 1  # and so does our own loading path
    # text-encoder keys under `text_model.`, as transformers 4 and ComfyUI read them, whatever the transformers
    # that trained them (version 5's CLIPTextModel has no such level)
    keys = [k for k in load_file(lora_run / LORA_WEIGHTS) if k.startswith("text_encoder.")]
    assert keys and all(k.startswith("text_encoder.text_model.encoder.layers.") for k in keys)


def test_generate_scales_the_adapters(lora_run, tiny_sd, tmp_path):
    """--lora_scale 0 samples the base model, 1 the model as trained (the default)."""
    def generated(*extra):
        out = tmp_path / "-".join(extra or ("default",))
        assert main(["generate", "--model", str(lora_run), "--prompt", "a dog", "-n", "1", "--steps", "2",
                     "--output", str(out), *extra]) == 0
        return np.asarray(Image.open(out / "000000.png"), np.int16)

    base = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    base.set_progress_bar_config(disable=True)
    without = image(base)
    assert np.abs(generated("--lora_scale", "0") - without).max() <= 1
    assert np.abs(generated("--lora_scale", "1") - generated()).max() == 0
    assert np.abs(generated() - without).max() > 1


def test_kohya_file_loads_with_the_same_outputs(lora_run, tiny_sd):
    with safe_open(str(lora_run / "lora_kohya.safetensors"), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert any("_proj_in.lora_down" in k for k in keys) and any("_mlp_fc1.lora_up" in k for k in keys)
    assert any(k.endswith(".alpha") for k in keys) and metadata["ss_network_dim"] == "4"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_output_name"] == lora_run.name
    identifier = yaml.safe_load((lora_run / "dreambooth_config.yaml").read_text())["identifier"]
    assert metadata["ss_training_comment"] == f"dreambooth: a {identifier} dog"  # the trigger words
    ours, kohya = (image(p) for p in loaded_pipes(StableDiffusionPipeline, tiny_sd, lora_run, safety_checker=None))
    assert np.abs(ours - kohya).max() <= 1


def test_export_writes_the_kohya_file_of_a_lora_trained_without_it(lora_run, tiny_sd, tmp_path, capsys):
    """The file `--lora_format kohya` writes at training, made afterwards from the folder alone; and
    in fp16 with --half (the alphas stay fp32 scalars)."""
    exported, half = tmp_path / "lora.safetensors", tmp_path / "lora-fp16.safetensors"
    assert main(["export", "--model", str(lora_run), "--output", str(exported)]) == 0
    assert "kohya-ss LoRA layout" in capsys.readouterr().out
    at_training = load_file(lora_run / "lora_kohya.safetensors")
    after = load_file(exported)
    assert after.keys() == at_training.keys() and all(torch.equal(after[k], at_training[k]) for k in after)
    with safe_open(str(exported), "pt") as a, safe_open(str(lora_run / "lora_kohya.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata()
    assert main(["export", "--model", str(lora_run), "--output", str(half), "--half", "--base", str(tiny_sd)]) == 0
    halved = load_file(half)
    assert all(v.dtype == (torch.float32 if k.endswith(".alpha") else torch.float16) for k, v in halved.items())
    assert main(["export", "--model", str(lora_run), "--output", str(tmp_path)]) == 2  # a folder: one line
    assert "is a folder; name the file" in capsys.readouterr().err


@pytest.mark.parametrize("family, version, architecture", [
    ("sd1", "sd_v1", "stable-diffusion-v1"), ("sd1-v", "sd_v1_v", "stable-diffusion-v1"),
    ("sd2-base", "sd_v2", "stable-diffusion-v2-512"), ("sd2-v", "sd_v2_v", "stable-diffusion-v2-768-v"),
    ("sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base"), ("sdxl-v", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base")])
def test_kohya_file_names_its_base_as_kohya_does(family, version, architecture, tmp_path):
    """kohya-ss's `ss_base_model_version` (with "_v" for a v-prediction SD 1.x or 2.x) and `ss_v2`, which A1111
    files LoRAs by; and the model spec SwarmUI reads, with kohya's "/lora" and implementation names."""
    v = family.endswith("-v")
    base = write_configs(family.removesuffix("-v") if family != "sd2-v" else family, tmp_path / family,
                         {"prediction_type": "v_prediction"} if v else None)
    diffusers_file = tmp_path / LORA_WEIGHTS
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{module}.lora_A.weight": torch.zeros(4, 640), f"{module}.lora_B.weight": torch.zeros(640, 4)}, diffusers_file)
    cfg = TrainConfig(pretrained_model_name_or_path=str(base), instance_data_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
                      identifier="zwx", instance_prompt="a {identifier} {class_noun}", class_noun="dog", lora=True,
                      lora_rank=4, resolution=384)
    write_kohya_lora(diffusers_file, tmp_path / "kohya.safetensors", cfg)
    with safe_open(str(tmp_path / "kohya.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert (metadata["ss_base_model_version"], metadata["ss_v2"]) == (version, str(family.startswith("sd2")))
    implementation = "https://github.com/Stability-AI/generative-models" if family.startswith("sdxl") else "diffusers"
    assert {k.removeprefix("modelspec."): v for k, v in metadata.items() if k.startswith("modelspec.")} == {
        "sai_model_spec": "1.0.0", "architecture": f"{architecture}/lora", "implementation": implementation,
        "title": "out", "resolution": "384x384", "prediction_type": "v" if v else "epsilon",
        "trigger_phrase": "zwx dog", "description": f'DreamBooth LoRA of {family}; prompt with "zwx dog"'}


def test_text_encoder_adapters_off_attention_alone_load_in_diffusers(tiny_sd, subject_dir, tmp_path):
    """diffusers' text-encoder loader tells a file's format by its key names; adapters on fc1 alone must load too."""
    out = train(config(tiny_sd, subject_dir, tmp_path, lora=True, train_text_encoder=True, lora_text_encoder_modules=["fc1"],
                       prior_mode="prediction", max_train_steps=2, learning_rate=5e-2, validation_prompts=["a dog"],
                       validation_steps=2, num_validation_images=1, inference_steps=2))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(out, weight_name=LORA_WEIGHTS)
    assert any(n.endswith("fc1.lora_A") for n, _ in pipe.text_encoder.named_modules())
    in_training = np.asarray(Image.open(out / "validation" / "step-000002.png"), dtype=np.int16)
    assert np.abs(image(pipe) - in_training).max() <= 1  # the text encoder's adapters, as trained


def test_prediction_prior_needs_no_class_images(tiny_sd, subject_dir, tmp_path):
    cfg = config(tiny_sd, subject_dir, tmp_path, lora=True, prior_mode="prediction", max_train_steps=2)
    out = train(cfg)
    assert not (tmp_path / "cache").exists()  # nothing was generated
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"loss/prior"' in rows[0]


def test_bf16_casts_the_frozen_base_weights_and_keeps_adapters_in_float32(tiny_sd, subject_dir, tmp_path):
    """Memory: under LoRA the frozen UNet is most of the weights; the optimizer still needs float32 adapters."""
    trainer = Trainer(config(tiny_sd, subject_dir, tmp_path, lora=True, train_text_encoder=True,
                             mixed_precision="bf16", prior_mode="prediction", max_train_steps=2))
    trainer.setup()
    for model in (trainer.unet, *trainer.text_encoders):
        dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
        assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    assert {p.dtype for p in trainer.parts.vae.parameters()} == {torch.bfloat16}
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimized and {p.dtype for p in optimized} == {torch.float32}
    before = [p.detach().clone() for p in optimized]
    out = trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, optimized))  # the adapters trained
    with safe_open(str(out / LORA_WEIGHTS), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_generate_takes_a_lora_folder(lora_run, tmp_path):
    assert main(["generate", "--model", str(lora_run), "--prompt", "a {identifier} dog", "-n", "1", "--steps", "2",
                 "--output", str(tmp_path)]) == 0
    assert (tmp_path / "grid.png").is_file()


def test_a_lora_whose_base_moved_says_so_and_takes_base(lora_run, tiny_sd, tmp_path, capsys):
    moved = tmp_path / "lora"
    shutil.copytree(lora_run, moved)
    record = moved / "dreambooth_config.yaml"
    record.write_text(record.read_text().replace(str(tiny_sd), str(tmp_path / "gone")))
    args = ["generate", "--model", str(moved), "--prompt", "a dog", "-n", "1", "--steps", "2", "--output", str(tmp_path)]
    assert main(args) != 0
    assert f"{moved} is a LoRA on {tmp_path / 'gone'}, which is gone; pass the base model with --base FOLDER" \
        in capsys.readouterr().err
    assert main([*args, "--base", str(tiny_sd)]) == 0


def test_merge_refuses_to_overwrite_the_base(lora_run, tiny_sd, capsys):
    before = sorted(p.stat().st_mtime_ns for p in tiny_sd.rglob("*"))
    assert main(["merge", "--lora", str(lora_run), "--output", str(tiny_sd)]) != 0
    assert "is the base model's folder" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in tiny_sd.rglob("*")) == before


def test_a_merge_that_fills_the_disk_leaves_nothing_behind(lora_run, tmp_path, monkeypatch, capsys):
    import errno

    def full_disk(self, folder, **kwargs):
        (Path(folder) / "unet").mkdir(parents=True)
        (Path(folder) / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", full_disk)
    assert main(["merge", "--lora", str(lora_run), "--output", str(tmp_path / "merged")]) == 1
    assert capsys.readouterr().err.startswith(f"error: the disk is full writing {tmp_path / 'merged'}")
    assert not list((tmp_path / "merged").rglob("*"))  # the half-written staging folder is gone


def test_merge_folds_the_lora_into_a_full_pipeline(lora_run, tmp_path):
    assert main(["merge", "--lora", str(lora_run), "--output", str(tmp_path / "merged")]) == 0
    merged = StableDiffusionPipeline.from_pretrained(tmp_path / "merged", local_files_only=True)
    merged.set_progress_bar_config(disable=True)
    assert not any("lora" in k for k in merged.unet.state_dict())
    assert np.abs(image(merged) - image(load_trained(lora_run))).max() <= 2
    record = yaml.safe_load((tmp_path / "merged" / "dreambooth_config.yaml").read_text())
    assert record["merged_from"] == str(lora_run.resolve()) and record["output_dir"] == str((tmp_path / "merged").resolve())
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "load_lora_weights" not in card and str((tmp_path / "merged").resolve()) in card  # the merged model's card


def test_merge_inputs_are_one_line_errors_before_any_work(lora_run, tiny_sd, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    cases = [(["--lora", str(tmp_path / "nope"), "--output", str(tmp_path / "m")], "--lora .*nope: no such folder"),
             (["--lora", str(tiny_sd), "--output", str(tmp_path / "m")], "a full pipeline already"),
             (["--lora", str(lora_run), "--output", str(tmp_path / "a-file" / "m")], "--output .*cannot be created"),
             (["--lora", str(lora_run), "--output", str(tmp_path / "m"), "--scale", "nan"], "give a finite number")]
    for args, message in cases:
        assert exit_code(["merge", *args]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err


def test_lora_targets_are_checked_before_any_work(tiny_sd, subject_dir, tmp_path, capsys):
    args = ["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
            str(subject_dir), "--class_noun", "dog", "--lora", "--train_text_encoder",
            "--lora_target_modules", "to_q", "--lora_target_modules", "to_kk", "--lora_target_modules", "attn1",
            "--lora_text_encoder_modules", "fc1", "--lora_text_encoder_modules", "q_prj",
            "--lora_text_encoder_modules", "token_embedding"]
    assert main(args) == 2
    err = capsys.readouterr().err
    # peft adapts an embedding, but neither file could hold it (diffusers' loaders refuse it): the run would be lost
    assert "--lora_text_encoder_modules token_embedding: matches a layer of type Embedding" in err
    assert "--lora_target_modules to_kk: no layer of the unet is called that; its layers include" in err
    assert "--lora_target_modules attn1: matches a layer of type Attention, which LoRA cannot adapt" in err
    assert "--lora_text_encoder_modules q_prj: no layer of the text_encoder" in err
    assert "to_q:" not in err and "fc1:" not in err


def test_a_model_index_naming_another_module_is_refused_without_importing_it(tiny_sd, subject_dir, tmp_path,
                                                                           monkeypatch, capsys):
    # the target check builds each component from the class model_index.json names: importing an arbitrary
    # module named there would run its code
    (tmp_path / "payload.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass UNet: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = shutil.copytree(tiny_sd, tmp_path / "model")
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "unet": ["payload", "UNet"]}))
    assert main(["train", "--check", "--pretrained_model_name_or_path", str(model), "--instance_data_dir",
                 str(subject_dir), "--class_noun", "dog", "--lora"]) == 2
    assert "its unet is payload.UNet, not a diffusers or transformers model class" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()


def test_merge_redoes_its_own_merge_but_never_overwrites_another_model(lora_run, tiny_sd, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert main(["merge", "--lora", str(lora_run), "--output", str(merged)]) == 0
    assert main(["merge", "--lora", str(lora_run), "--output", str(merged), "--scale", "0.5"]) == 0  # another scale
    other = shutil.copytree(tiny_sd, tmp_path / "another-model")
    (other / "dreambooth_config.yaml").write_text("identifier: zwx\n")  # a full fine-tune of another subject
    assert exit_code(["merge", "--lora", str(lora_run), "--output", str(other)]) == 2
    assert "holds files that no earlier merge wrote" in capsys.readouterr().err


def test_a_lora_on_a_base_of_another_architecture_is_one_line(lora_run, tiny_sdxl, tmp_path, capsys):
    assert main(["generate", "--model", str(lora_run), "--base", str(tiny_sdxl), "--prompt", "a dog", "-n", "1",
                 "--steps", "2", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: .*its LoRA does not fit the base model .*\(size mismatch for .*\); pass the --base it "
                     r"was trained on\n$", err), err


def test_a_kohya_file_a1111_would_apply_only_in_part_is_warned_about(tiny_sd, tiny_sdxl, subject_dir, tmp_path):
    """A1111 drops adapters on an OpenCLIP encoder's attention unless q, k, v and out all have one: said
    before training for SDXL's second encoder (and SD 2.x's), not for SD 1.x's CLIP, where each applies."""
    from dreambooth.preflight import preflight

    def warnings(model, modules):
        cfg = config(model, subject_dir, tmp_path / "out", lora=True, lora_format="kohya", train_text_encoder=True,
                     lora_text_encoder_modules=modules)
        return [w for w in preflight(cfg, check_disk=False).warnings if "AUTOMATIC1111" in w]

    assert warnings(tiny_sdxl, ["q_proj", "v_proj", "fc1"]) == [
        "--lora_text_encoder_modules names q_proj, v_proj of q_proj, k_proj, v_proj, out_proj: AUTOMATIC1111 applies "
        "the kohya file's adapters on the attention of SDXL's second text encoder only with all four, and skips these "
        "in silence; name all four for that file to work there"]
    assert warnings(tiny_sdxl, ["q_proj", "k_proj", "v_proj", "out_proj"]) == []
    assert warnings(tiny_sd, ["q_proj", "v_proj"]) == []
