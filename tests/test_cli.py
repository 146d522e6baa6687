"""The `dreambooth` command end to end on the tiny model, as a user would run it."""

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from diffusers import StableDiffusionPipeline
from PIL import Image

from dreambooth.cli import build_parser, main
from dreambooth.errors import run_command


def test_train_generate_identifier_and_class_cache_reuse(tiny_sd, subject_dir, tmp_path, capsys, caplog):
    cache = tmp_path / "cache"
    common = ["--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
              "--class_noun", "dog", "--with_prior_preservation", "--num_class_images", "3",
              "--class-inference-steps", "2", "--class_cache_dir", str(cache), "--max_train_steps", "2",
              "--learning_rate", "1e-4", "--center_crop", "--report_to", "none"]
    with caplog.at_level(logging.INFO, logger="dreambooth"):
        assert main(["train", *common, "--output_dir", str(tmp_path / "a")]) == 0
    # the identifier it chose, and that the class is kept (diffusers' scripts train without it unless told)
    assert ("instance prompt: 'a lun dog'; prior preservation on (--no_prior_preservation turns it off), "
            "class prompt: 'a dog'") in caplog.text
    [class_folder] = list(cache.glob("a-dog-*"))
    first = {p.name: p.stat().st_mtime_ns for p in class_folder.glob("*.png")}
    assert len(first) == 3
    # a second subject of the same class reuses the cached class images untouched
    assert main(["train", *common, "--output_dir", str(tmp_path / "b"), "--identifier", "zwx"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in class_folder.glob("*.png")} == first

    out = tmp_path / "a"
    assert StableDiffusionPipeline.from_pretrained(out, local_files_only=True) is not None
    recorded = (out / "dreambooth_config.yaml").read_text()
    assert "identifier: lun" in recorded  # the tokenizer's top rare token was chosen and recorded

    assert main(["generate", "--model", str(out), "--prompt", "a {identifier} {class_noun} on the beach", "-n", "2",
                 "--steps", "2", "--output", str(tmp_path / "samples")]) == 0
    assert (tmp_path / "samples" / "prompt.txt").read_text().strip() == "a lun dog on the beach"
    assert Image.open(tmp_path / "samples" / "grid.png").size == (64, 32)

    capsys.readouterr()
    assert main(["identifier", "--model", str(out), "-k", "3"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split() == ["1", "49390", "lun"] and len(listed) == 4


def test_class_images_command_fills_the_cache(tiny_sd, tmp_path, capsys):
    assert main(["class-images", "--model", str(tiny_sd), "--prompt", "a cat", "-n", "2", "--steps", "2",
                 "--cache_dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("a-cat-*/*.png"))) == 2
    assert main(["class-images", "--model", str(tiny_sd), "--prompt", "a cat", "-n", "2", "--steps", "2",
                 "--cache_dir", str(tmp_path), "--prior_generation_precision", "bf16"]) == 0
    fp32, bf16 = sorted(tmp_path.glob("a-cat-*"), key=lambda folder: (folder / "spec.json").read_text().count("bf16"))
    assert [len(list(folder.glob("*.png"))) for folder in (fp32, bf16)] == [2, 2]  # a folder of its own


def test_every_option_says_what_it_is_and_its_default_or_choices(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside values
    for name, command in build_parser().commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.help is argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings}: no help"
            unset = any(action.default is value for value in (None, False, argparse.SUPPRESS))
            if not unset and "default" not in action.help:
                assert f"(default: {action.default})" in text, f"{name} {action.option_strings}: default not shown"
    train_help = " ".join(build_parser().commands["train"].format_help().split())
    assert "--lr_scheduler {constant,constant_with_warmup,linear,cosine,cosine_with_restarts,polynomial}" in train_help


def test_check_reports_every_problem_at_once(tmp_path, capsys):
    code = main(["train", "--check", "--pretrained_model_name_or_path", str(tmp_path / "no-model"),
                 "--instance_data_dir", str(tmp_path / "no-photos"), "--class_noun", "dog"])
    err = capsys.readouterr().err
    assert code == 2 and "2 problems" in err and "no-model" in err and "no-photos" in err


def test_a_wrong_model_path_is_said_once_and_before_any_photo_size(subject_dir, tmp_path, capsys):
    """Photo sizes are judged against the model's resolution; with no model, not against a guess."""
    code = main(["train", "--check", "--pretrained_model_name_or_path", str(tmp_path / "no-model"),
                 "--instance_data_dir", str(subject_dir), "--class_noun", "dog"])
    out, err = capsys.readouterr()
    assert code == 2 and (out + err).count("no-model") == 1 and "upscaled" not in out + err


def test_unknown_placeholders_in_prompts_are_refused(tmp_path, capsys):
    code = main(["train", "--check", "--pretrained_model_name_or_path", str(tmp_path), "--instance_data_dir",
                 str(tmp_path), "--class_noun", "dog", "--instance_prompt", "a {identifer} {class_noun}",
                 "--validation_prompt", "a {class} on the beach"])
    err = capsys.readouterr().err
    assert code == 2 and "--instance_prompt: unknown placeholder {identifer}; use {identifier} or {class_noun}" in err
    assert "--validation_prompt: unknown placeholder {class};" in err


def test_check_loads_the_eval_encoder_before_training(tiny_sd, subject_dir, capsys):
    code = main(["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
                 str(subject_dir), "--class_noun", "dog", "--eval_every", "50", "--eval_encoder", "dino-vits16"])
    assert code == 2 and "--eval_encoder 'dino-vits16': unknown" in capsys.readouterr().err


def test_bad_input_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dreambooth.cli", "train", "--pretrained_model_name_or_path",
                             str(tmp_path), "--instance_data_dir", str(tmp_path), "--max_train_steps", "zero"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --max_train_steps: expected int, got 'zero'"


@pytest.mark.parametrize("command", [["generate", "--prompt", "x"], ["identifier"], ["export", "--output", "x.safetensors"],
                                     ["class-images", "--prompt", "a dog"]])
def test_a_missing_model_is_named_by_the_option_the_user_typed(command, tmp_path, capsys):
    assert main([command[0], "--model", str(tmp_path / "nowhere"), *command[1:]]) == 2
    assert capsys.readouterr().err.startswith(f"error: --model: {tmp_path / 'nowhere'} is not a folder")


@pytest.mark.parametrize("option", ["-n", "--steps", "--batch_size"])
def test_counts_below_one_are_refused_on_the_command_line(option, tiny_sd, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["class-images", "--model", str(tiny_sd), "--prompt", "a dog", option, "0"])
    assert exit_.value.code == 2 and "0: give 1 or more" in capsys.readouterr().err


def test_check_reports_too_little_disk(tiny_sd, subject_dir, tmp_path, monkeypatch, capsys):
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    code = main(["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
                 str(subject_dir), "--class_noun", "dog", "--output_dir", str(tmp_path / "o"),
                 "--class_cache_dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "is free; free space or choose another folder" in err


def test_check_warns_about_a_weak_identifier(tiny_sd, subject_dir, capsys):
    assert main(["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
                 str(subject_dir), "--class_noun", "dog", "--identifier", "sks"]) == 0
    assert "--identifier 'sks'" in capsys.readouterr().out


def test_a_literal_diffusers_prompt_records_its_own_identifier(tiny_sd, subject_dir, tmp_path):
    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
                 "--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog",
                 "--with_prior_preservation", "--num_class_images", "2", "--class_inference_steps", "2",
                 "--class_cache_dir", str(tmp_path / "c"), "--max_train_steps", "1", "--report_to", "none",
                 "--output_dir", str(tmp_path / "o")]) == 0
    assert "identifier: sks" in (tmp_path / "o" / "dreambooth_config.yaml").read_text()


def test_check_reads_a_literal_prompts_identifier_as_a_named_one(tiny_sd, subject_dir, tmp_path, capsys):
    """diffusers' recipe "a photo of sks dog": sks, a rifle's name to the text encoder, is warned of too."""
    assert main(["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
                 str(subject_dir), "--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog",
                 "--output_dir", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "the identifier of --instance_prompt, 'sks'" in captured.out + captured.err


@pytest.mark.parametrize("identifier, refused", [("lun", True), ("sk", True), ("sks", False)])
def test_a_named_identifier_must_be_a_word_the_literal_prompt_trains(tiny_sd, subject_dir, tmp_path, capsys,
                                                                      identifier, refused):
    """The record would say one word and the run train another, which `generate "{identifier}"` then prompts;
    a record written so before is still read (a batch skips its finished run)."""
    assert main(["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
                 str(subject_dir), "--instance_prompt", "a photo of sks dog,", "--class_prompt", "a photo of dog,",
                 "--identifier", identifier, "--output_dir", str(tmp_path / "o")]) == (2 if refused else 0)
    message = f"--identifier {identifier!r} is not a word of --instance_prompt 'a photo of sks dog,'"
    assert (message in capsys.readouterr().err) == refused
    from dreambooth.config import from_dict

    assert from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d", "identifier": identifier,
                      "instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog"}).identifier == identifier


def test_diffusers_plain_recipe_trains_without_naming_the_identifier(tiny_sd, subject_dir, tmp_path):
    """No class prompt tells which word of "a photo of sks dog" is the identifier, and nothing here needs it."""
    out = tmp_path / "o"
    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
                 "--instance_prompt", "a photo of sks dog", "--no_prior_preservation", "--max_train_steps", "1",
                 "--report_to", "none", "--output_dir", str(out)]) == 0
    assert yaml.safe_load((out / "dreambooth_config.yaml").read_text())["identifier"] is None  # no made-up word
    card = (out / "README.md").read_text()
    assert '--prompt "a photo of sks dog on the beach"' in card and "{identifier}" not in card


def test_check_warns_when_a_real_model_gets_a_lora_rate_without_lora(tiny_sd, subject_dir, monkeypatch, capsys):
    from dreambooth import preflight

    monkeypatch.setattr(preflight, "_weights_bytes", lambda model, parts: 3 * 2**30)  # an SD 1.5-sized UNet
    args = ["train", "--check", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir",
            str(subject_dir), "--class_noun", "dog", "--learning_rate", "1e-4"]
    assert main(args) == 0
    assert "--learning_rate 0.0001 for a full fine-tune of every UNet weight is a LoRA's rate" in capsys.readouterr().out
    assert main([*args, "--lora"]) == 0
    assert "a LoRA's rate" not in capsys.readouterr().out


@pytest.mark.parametrize("scheduler, message", [
    ({"prediction_type": "sample"}, "prediction_type 'sample'; training supports epsilon and v_prediction"),
    ({"_class_name": "EDMDPMSolverMultistepScheduler"}, "EDMDPMSolverMultistepScheduler, an EDM-trained model")])
def test_check_refuses_a_model_trained_otherwise(tiny_sd, subject_dir, tmp_path, capsys, scheduler, message):
    """x0 prediction and EDM schedules: training here is DDPM-style with epsilon or v targets."""
    import json
    import shutil as shutil_module

    model = tmp_path / "model"
    shutil_module.copytree(tiny_sd, model)
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **scheduler}))
    assert main(["train", "--check", "--pretrained_model_name_or_path", str(model), "--instance_data_dir",
                 str(subject_dir), "--class_noun", "dog"]) == 2
    assert message in capsys.readouterr().err


def test_out_of_device_memory_is_one_line_with_what_to_try(tiny_sd, tmp_path, monkeypatch, capsys):
    import torch

    import dreambooth.generate

    def too_big(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(dreambooth.generate, "generate", too_big)
    # --output: the default (MODEL/samples) would write into the model other tests share
    assert main(["generate", "--model", str(tiny_sd), "--prompt", "a dog", "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: out of device memory; try --gradient_checkpointing")


def test_command_inputs_are_one_line_errors_before_any_work(tiny_sd, tmp_path, capsys):
    """A file where a folder goes, a LoRA folder where a full model goes, --base on a full model, bad numbers."""
    (tmp_path / "a-file").write_text("")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    base = ["--model", str(tiny_sd), "--prompt", "a dog", "-n", "1", "--steps", "1"]
    cases = [
        (["generate", *base, "--output", str(tmp_path / "a-file")], "--output .*a-file: cannot be created"),
        (["generate", *base, "--base", str(tiny_sd)], "--base: only for a LoRA folder"),
        (["generate", *base, "--seed", "-1"], "-1: give 0 or more"),
        (["generate", *base, "--guidance_scale", "inf"], "give a finite number"),
        (["class-images", *base, "--resolution", "7", "--cache_dir", str(tmp_path / "c")], "multiple of 8"),
        (["class-images", *base, "--cache_dir", str(tmp_path / "a-file")], "--cache_dir .*cannot be created"),
        (["export", "--model", str(lora), "--output", str(tmp_path / "e.safetensors")],
         "LoRA weights without dreambooth_config.yaml; pass the base model with --base"),
        (["export", "--model", str(lora), "--output", str(tmp_path / "e.safetensors"), "--base", str(tiny_sd)],
         "no dreambooth_config.yaml, which says how the adapters were trained"),
        (["export", "--model", str(tiny_sd), "--output", str(tmp_path / "e.safetensors"), "--base", str(tiny_sd)],
         "--base: only for a LoRA folder"),
        (["export", "--model", str(tiny_sd), "--output", str(tmp_path / "a-file" / "e.safetensors")], "cannot be created"),
        (["demo", "--fast", "--output", str(tmp_path / "a-file")], "--output .*a-file: cannot be created"),
    ]
    for args, message in cases:
        assert exit_code(args) == 2, args
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing was generated


def test_a_custom_demo_subject_with_a_bad_subject_json_is_one_line(tmp_path, capsys):
    subject = tmp_path / "mine"
    subject.mkdir()
    assert main(["demo", "--fast", "--subject", str(subject), "--output", str(tmp_path / "out")]) == 2
    needs = f'needs a subject.json naming their class, e.g. {{"class_noun": "bag"}} in {subject}'
    assert needs in capsys.readouterr().err
    (subject / "subject.json").write_text("{}")
    assert main(["demo", "--fast", "--subject", str(subject), "--output", str(tmp_path / "out")]) == 2
    assert 'must be JSON like {"class_noun": "bag"}' in capsys.readouterr().err


def exit_code(args: list[str]) -> int:
    """main's exit code, whether the parser (SystemExit) or the command refused."""
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


def test_train_never_overwrites_the_base_model_or_a_model_it_did_not_train(tiny_sd, subject_dir, tmp_path, capsys):
    foreign = shutil.copytree(tiny_sd, tmp_path / "someone-elses-model")
    common = ["train", "--model", str(tiny_sd), "--instance_data_dir", str(subject_dir), "--class_noun", "dog",
              "--check"]
    assert main([*common, "--output_dir", str(tiny_sd)]) == 2
    assert "it is the base model's folder, which the trained model would overwrite" in capsys.readouterr().err
    assert main([*common, "--output_dir", str(foreign)]) == 2
    assert "it holds a model that dreambooth did not train" in capsys.readouterr().err
    (foreign / "dreambooth_config.yaml").write_text("{}")  # as an earlier full fine-tune left it
    assert main([*common, "--output_dir", str(foreign), "--lora"]) == 2
    assert "a LoRA's adapters would leave half replaced" in capsys.readouterr().err


def test_sigterm_outside_training_stops_at_once_with_one_line_and_exit_143(capsys):
    """As Ctrl-C does (exit 130): `finally` blocks run, instead of the process being killed silently."""
    before = signal.getsignal(signal.SIGTERM)

    def command():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    assert run_command(command) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "interrupted at once, saving nothing more\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_processes_of_a_launch_keep_sigterm_as_it_was(monkeypatch):
    """A rank waiting in a collective for one that is gone runs no Python handler: the launcher's
    SIGTERM must still end it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    assert run_command(lambda: seen.append(signal.getsignal(signal.SIGTERM))) == 0
    assert seen == [before]


def test_evaluate_help_states_the_sampling_defaults_evaluate_applies():
    """Unset, -n/--steps/--seed take evaluate()'s own defaults (the CLI and the API sample alike); the
    help names them, so it must name those."""
    import inspect

    from dreambooth.evaluation.evaluate import evaluate

    defaults = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()}
    options = {a.dest: a for a in build_parser().commands["evaluate"]._actions}
    for dest, parameter in (("num_images", "n_per_prompt"), ("steps", "steps"), ("seed", "seed")):
        assert options[dest].default is None and f"(default: {defaults[parameter]})" in options[dest].help


def test_a_fresh_run_does_not_replace_a_finished_model_unasked(tiny_sd, subject_dir, tmp_path, capsys):
    """The finished model would be lost at the end of the run; --overwrite_output_dir says to replace it."""
    common = ["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
              "--class_noun", "dog", "--no_prior_preservation", "--max_train_steps", "1", "--report_to", "none",
              "--output_dir", str(tmp_path / "o")]
    assert main(common) == 0
    before = (tmp_path / "o" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert main([*common, "--learning_rate", "1e-3"]) == 2
    assert "holds the finished model of an earlier run" in capsys.readouterr().err
    assert (tmp_path / "o" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert main([*common, "--learning_rate", "1e-3", "--overwrite_output_dir"]) == 0
    # the permission is not recorded for a run of the config; over an earlier run's checkpoints it starts afresh
    assert "overwrite_output_dir: false" in (tmp_path / "o" / "dreambooth_config.yaml").read_text()
    assert main([*common, "--max_train_steps", "3", "--checkpointing_steps", "2", "--overwrite_output_dir"]) == 0
    assert (tmp_path / "o" / "checkpoint-2").is_dir()
    assert main([*common, "--learning_rate", "1e-3"]) == 2
    assert "--overwrite_output_dir to start afresh there" in capsys.readouterr().err
    assert main([*common, "--learning_rate", "1e-3", "--overwrite_output_dir"]) == 0
    assert not (tmp_path / "o" / "checkpoint-2").exists()


def test_identifier_lists_a_lora_folders_base_and_a_typo_gets_a_suggestion(tiny_sd, subject_dir, tmp_path, capsys):
    from dreambooth.config import from_dict
    from dreambooth.errors import ConfigError

    out = tmp_path / "lora"
    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
                 "--class_noun", "dog", "--no_prior_preservation", "--max_train_steps", "1", "--report_to", "none",
                 "--lora", "--output_dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["identifier", "--model", str(out), "-k", "2"]) == 0
    listed = capsys.readouterr().out
    assert main(["identifier", "--model", str(tiny_sd), "-k", "2"]) == 0
    assert capsys.readouterr().out == listed
    assert main(["identifier", "--model", str(out), "--base", str(tiny_sd), "-k", "2"]) == 0  # a base moved
    assert capsys.readouterr().out == listed
    with pytest.raises(ConfigError, match="learnin_rate: did you mean learning_rate"):
        from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d", "learnin_rate": 1e-5})


def test_a_run_stopped_by_a_signal_is_not_called_an_error(capsys):
    import signal

    from dreambooth.errors import run_command
    from dreambooth.run_guard import Interrupted

    def stopped():
        raise Interrupted("stopped by SIGINT at step 3; saved out/checkpoint-3", signal.SIGINT)

    assert run_command(stopped) == 130
    assert capsys.readouterr().err.startswith("interrupted: stopped by SIGINT at step 3")


def test_train_names_the_files_it_skips_and_generate_keeps_out_of_a_base_models_folder(tiny_sd, subject_dir, tmp_path,
                                                                                       capsys, caplog):
    import logging
    import shutil

    photos = shutil.copytree(subject_dir, tmp_path / "photos")
    (photos / "subject.json").write_text('{"class_noun": "dog"}')
    with caplog.at_level(logging.INFO, logger="dreambooth"):
        assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(photos),
                     "--class_noun", "dog", "--no_prior_preservation", "--max_train_steps", "1", "--report_to", "none",
                     "--output_dir", str(tmp_path / "o")]) == 0
    assert "skipped subject.json" in caplog.text
    assert main(["generate", "--model", str(tiny_sd), "--prompt", "a dog", "-n", "1", "--steps", "2"]) == 2
    assert "did not write; name a folder for the images" in capsys.readouterr().err
    assert not (tiny_sd / "samples").exists()
