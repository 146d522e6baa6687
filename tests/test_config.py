import re

import pytest

from dreambooth.cli import build_parser, build_train_config
from dreambooth.config import TrainConfig, changed_settings, fill_prompt, from_dict, read_config_file
from dreambooth.errors import ConfigError
from tests.test_cli import exit_code

REQUIRED = {"pretrained_model_name_or_path": "m", "instance_data_dir": "d", "class_noun": "dog"}


def test_defaults_follow_the_paper():
    cfg = from_dict(REQUIRED)
    assert cfg.with_prior_preservation and cfg.prior_loss_weight == 1.0 and cfg.num_class_images == 100
    assert fill_prompt(cfg.instance_prompt, "zwx", cfg.class_noun) == "a zwx dog"
    assert fill_prompt(cfg.class_prompt, "zwx", cfg.class_noun) == "a dog"


def test_every_problem_is_reported_at_once_with_the_option_name():
    with pytest.raises(ConfigError) as err:
        from_dict({"max_train_steps": 0, "learning_rate": -1, "resolution": 30})
    message = str(err.value)
    for name in ("--pretrained_model_name_or_path", "--instance_data_dir", "--class_noun", "--max_train_steps",
                 "--learning_rate", "--resolution"):
        assert name in message


def test_bad_types_and_unknown_keys_name_the_field():
    with pytest.raises(ConfigError, match="--max_train_steps: expected int, got 'many'"):
        from_dict({**REQUIRED, "max_train_steps": "many"})
    with pytest.raises(ConfigError, match="unknown option.*lerning_rate"):
        from_dict({**REQUIRED, "lerning_rate": 1e-5})
    with pytest.raises(ConfigError, match="--mixed_precision: 'fp8' is not one of"):
        from_dict({**REQUIRED, "mixed_precision": "fp8"})


def test_none_turns_an_optional_number_off():
    assert from_dict({**REQUIRED, "checkpoints_total_limit": "none"}).checkpoints_total_limit is None
    assert from_dict({**REQUIRED, "class_data_dir": "none"}).class_data_dir == "none"  # a folder may be called that


def test_literal_prompts_need_no_class_noun():
    cfg = from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d",
                     "instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog"})
    assert cfg.class_noun is None


def test_scoring_during_training_needs_the_class_noun_its_prompts_name():
    with pytest.raises(ConfigError, match="--eval_every: needs --class_noun"):
        from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d", "eval_every": 10,
                   "instance_prompt": "a photo of sks dog", "class_prompt": "a photo of dog"})


@pytest.mark.parametrize("uses", [{"eval_every": 10, "class_noun": "dog"}, {"validation_prompts": ["a {identifier} dog"]}])
def test_a_literal_prompt_that_names_no_identifier_is_refused_where_one_is_used(uses):
    with pytest.raises(ConfigError, match="--identifier: .* use the identifier, and no one word of --instance_prompt"):
        from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d", "with_prior_preservation": False,
                   "instance_prompt": "a photo of sks dog", **uses})


def test_diffusers_flags_parse_unchanged(tmp_path):
    argv = ["train", "--pretrained_model_name_or_path", "m", "--instance_data_dir", "d",
            "--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog", "--class_data_dir", "c",
            "--with_prior_preservation", "--prior_loss_weight", "0.5", "--num_class_images", "10",
            "--max_train_steps", "7", "--learning_rate", "2e-6", "--train_batch_size", "2", "--resolution", "64",
            "--center_crop", "--train_text_encoder", "--mixed_precision", "no", "--gradient_checkpointing",
            "--seed", "3", "--output_dir", str(tmp_path), "--checkpointing_steps", "5",
            "--validation_prompt", "a photo of sks dog", "--enable_xformers_memory_efficient_attention",
            "--offset_noise", "--local-rank=0", "--dataloader_num_workers", "2", "--num_train_epochs", "5", "--scale_lr",
            "--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", "3", "--lr_power", "2"]
    cfg = build_train_config(build_parser().parse_args(argv))
    assert (cfg.prior_loss_weight, cfg.num_class_images, cfg.max_train_steps, cfg.train_batch_size) == (0.5, 10, 7, 2)
    assert cfg.learning_rate == 2e-6 and cfg.center_crop and cfg.train_text_encoder and cfg.gradient_checkpointing
    assert cfg.validation_prompts == ("a photo of sks dog",) and cfg.noise_offset == 0.1 and cfg.class_data_dir == "c"
    assert cfg.scale_lr and (cfg.lr_num_cycles, cfg.lr_power) == (3, 2.0)


@pytest.mark.parametrize("flags", [["--push_to_hub"], ["--hub-model-id", "me/dog"], ["--revision", "fp16"],
                                   ["--validation_epochs", "25"],
                                   ["--pretrained_vae_model_name_or_path", "madebyollin/sdxl-vae-fp16-fix"],
                                   ["--dataset_name", "me/dogs"], ["--use_dora"], ["--optimizer", "prodigy"],
                                   ["--image-interpolation-mode", "bilinear"]])
def test_diffusers_flags_that_cannot_apply_are_one_line_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--pretrained_model_name_or_path", "m", *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"error: {flags[0].split('=')[0]}") and "\n" not in err
    assert len(err) > len(f"error: {flags[0]}: ") + 20  # says what to do instead


def test_diffusers_lora_script_flags_map_or_pass(capsys):
    """train_dreambooth_lora*.py's flags: those whose value is ours pass, and kohya output maps onto ours."""
    cfg = build_train_config(build_parser().parse_args(
        ["train", "--pretrained_model_name_or_path", "m", "--instance_data_dir", "d", "--class_noun", "dog", "--lora",
         "--optimizer", "AdamW", "--image_interpolation_mode", "lanczos", "--output_kohya_format", "--offset-noise",
         "--crops_coords_top_left_h", "0", "--crops_coords_top_left_w", "0"]))
    assert cfg.lora_format == "kohya" and cfg.noise_offset == 0.1


def test_lora_gets_a_lora_learning_rate_by_default():
    """Adapters start at zero: at a full fine-tune's 5e-6 a LoRA barely moves in a run's few hundred steps."""
    assert from_dict(REQUIRED).learning_rate == 5e-6
    assert from_dict({**REQUIRED, "lora": True}).learning_rate == 1e-4
    assert from_dict({**REQUIRED, "lora": True, "learning_rate": 3e-4}).learning_rate == 3e-4


def test_one_problem_is_one_line_and_a_diffusers_recipe_hears_of_no_prior_preservation():
    with pytest.raises(ConfigError) as err:
        from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d",
                   "instance_prompt": "a photo of sks dog"})
    assert "\n" not in str(err.value) and "--no_prior_preservation" in str(err.value)
    with pytest.raises(ConfigError, match="divided by --gradient_accumulation_steps"):
        build_train_config(build_parser().parse_args(["train", "--num_train_epochs", "3"]))


def test_config_file_with_cli_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("pretrained_model_name_or_path: m\ninstance_data_dir: d\nclass_noun: cat\n"
                                       "max_train_steps: 50\nrandom_flip: true\n")
    (tmp_path / "run.toml").write_text('pretrained_model_name_or_path = "m"\ninstance_data_dir = "d"\n'
                                       'class_noun = "cat"\nmax_train_steps = 60\n')
    parser = build_parser()
    cfg = build_train_config(parser.parse_args(["train", "--config", str(tmp_path / "run.yaml"),
                                                "--max-train-steps", "9", "--no_random_flip"]))
    assert cfg.max_train_steps == 9 and cfg.class_noun == "cat" and not cfg.random_flip
    cfg = build_train_config(parser.parse_args(["train", "--config", str(tmp_path / "run.toml")]))
    assert cfg.max_train_steps == 60


def test_resolved_config_round_trips(tmp_path):
    cfg = from_dict({**REQUIRED, "validation_prompts": ["a", "b"], "snr_gamma": 5})
    cfg.save(tmp_path / "c.yaml")
    from dreambooth.config import read_config_file

    assert from_dict(read_config_file(tmp_path / "c.yaml")) == cfg
    assert isinstance(cfg, TrainConfig)


def test_no_class_noun_needed_without_prior_preservation():
    cfg = TrainConfig(pretrained_model_name_or_path="m", instance_data_dir="d", instance_prompt="a {identifier}",
                      with_prior_preservation=False)
    assert cfg.class_noun is None
    with pytest.raises(ConfigError, match="--class_noun: required because --class_prompt"):
        TrainConfig(pretrained_model_name_or_path="m", instance_data_dir="d", instance_prompt="a {identifier}")


def test_epochs_alone_are_refused_and_ignored_beside_max_train_steps():
    parser = build_parser()
    with pytest.raises(ConfigError, match=r"--num_train_epochs: pass --max_train_steps"):
        build_train_config(parser.parse_args(["train", "--pretrained_model_name_or_path", "m",
                                              "--instance_data_dir", "d", "--class_noun", "dog",
                                              "--num_train_epochs", "3"]))


def test_lora_options_without_lora_are_refused():
    # diffusers' LoRA scripts need no --lora: `--rank 4` alone would otherwise full fine-tune at a LoRA rate
    with pytest.raises(ConfigError) as err:
        build_train_config(build_parser().parse_args(["train", *sum((["--" + k, v] for k, v in REQUIRED.items()), []),
                                                      "--rank", "8", "--lora_format", "kohya"]))
    assert "--lora_rank (also spelled --rank): only takes effect with --lora" in str(err.value)  # as typed
    assert "--lora_format: only takes effect with --lora" in str(err.value)
    assert from_dict({**REQUIRED, "lora": True, "lora_rank": 8}).lora_rank == 8
    with pytest.raises(ConfigError, match="--text_encoder_stop_step: must be >= 1"):
        from_dict({**REQUIRED, "train_text_encoder": True, "text_encoder_stop_step": 0})


def test_config_files_take_the_flags_spellings_and_the_command_line_overrides_them(tmp_path):
    (tmp_path / "run.yaml").write_text("model: m\ninstance-dir: d\nclass: cat\nrank: 8\nlora: true\n"
                                       "validation_prompt: a {identifier} cat on the beach\n")
    parser = build_parser()
    cfg = build_train_config(parser.parse_args(["train", "--config", str(tmp_path / "run.yaml"), "--lora_rank", "2"]))
    assert (cfg.pretrained_model_name_or_path, cfg.instance_data_dir, cfg.class_noun) == ("m", "d", "cat")
    assert cfg.lora_rank == 2 and cfg.validation_prompts == ("a {identifier} cat on the beach",)
    with pytest.raises(ConfigError, match="lora_rank and rank name the same option; give it once"):
        from_dict({"pretrained_model_name_or_path": "m", "instance_data_dir": "d", "class_noun": "cat",
                   "lora_rank": 4, "rank": 8})


@pytest.mark.parametrize("key, value, expected", [("class_noun", ["dress"], "expected one str, got ['dress']"),
                                                  ("max_train_steps", True, "expected one int, got True"),
                                                  ("validation_prompts", [{"a": "b"}], "expected text or a list")])
def test_a_config_files_value_of_the_wrong_shape_is_refused(key, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        from_dict({**REQUIRED, key: value})


def test_lora_modules_may_be_one_comma_separated_list():
    cfg = build_train_config(build_parser().parse_args(["train", "--model", "m", "--instance_data_dir", "d",
                                                        "--class_noun", "dog", "--lora", "--lora_target_modules",
                                                        "to_q, to_k,to_v"]))
    assert cfg.lora_target_modules == ("to_q", "to_k", "to_v")


def test_a_resume_that_leaves_the_class_image_precision_to_the_trainer_is_no_change():
    # records hold the trainer's choice (fp16 on a GPU); unset or "no" asks it again, as the first run did
    run = dict(pretrained_model_name_or_path="m", instance_data_dir="d", class_noun="dog")
    recorded = {**run, "prior_generation_precision": "fp16"}
    for asked in (None, "no"):
        assert changed_settings(from_dict({**run, "prior_generation_precision": asked}), recorded, "record") == []
    assert changed_settings(from_dict({**run, "prior_generation_precision": "fp32"}), recorded, "record") == [
        "prior_generation_precision: trained with 'fp16', now 'fp32'"]


@pytest.mark.parametrize("key, value", [("adam_beta1", 1.5), ("adam_beta2", -1), ("adam_epsilon", -1),
                                        ("adam_weight_decay", -3), ("seed", -1), ("seed", 2**32)])
def test_optimizer_values_torch_would_refuse_mid_run_are_refused_up_front(key, value):
    with pytest.raises(ConfigError, match=f"--{key}: must be"):
        from_dict({**REQUIRED, key: value})


@pytest.mark.parametrize("key, value", [("learning_rate", "inf"), ("prior_loss_weight", float("inf")),
                                        ("guidance_scale", "nan"), ("noise_offset", "-inf")])
def test_numbers_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=f"--{key}: expected a finite number"):
        from_dict({**REQUIRED, key: value})


def test_yaml_config_files_mean_what_they_say(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("mixed_precision: no\nidentifier: 0123\nseed: 7\nlearning_rate: 1.0e-4\nrandom_flip: true\n")
    values = read_config_file(file)  # YAML 1.1 would read false, octal 83
    assert values == {"mixed_precision": "no", "identifier": "0123", "seed": 7, "learning_rate": 1e-4,
                      "random_flip": True}
    file.write_text("random_flip: on\ncenter_crop: yes\nwith_prior_preservation: off\n")  # still switches
    cfg = from_dict({**REQUIRED, **read_config_file(file)})
    assert (cfg.random_flip, cfg.center_crop, cfg.with_prior_preservation) == (True, True, False)
    file.write_text("learning_rate: 1.0e-4\nseed: 1\nlearning_rate: 2.0e-4\n")
    with pytest.raises(ConfigError, match="learning_rate given twice"):
        read_config_file(file)
    (tmp_path / "run.json").write_text('{"seed": 1, "seed": 2}')
    with pytest.raises(ConfigError, match="seed given twice"):
        read_config_file(tmp_path / "run.json")
    file.write_text("seed: 1\nvalidation_prompts: [a dog\n")
    with pytest.raises(ConfigError, match=r"run.yaml: cannot parse \(line 3, column 1: ParserError"):
        read_config_file(file)  # where, not only what
    file.write_text("no_prior_preservation: true\n")
    with pytest.raises(ConfigError, match="write with_prior_preservation: false for no_prior_preservation"):
        from_dict({**REQUIRED, **read_config_file(file)})


def test_a_validation_prompt_naming_the_class_noun_needs_one():
    with pytest.raises(ConfigError, match="--class_noun: required because a --validation_prompt uses"):
        from_dict({**REQUIRED, "class_noun": None, "instance_prompt": "a photo of sks", "with_prior_preservation": False,
                   "validation_prompts": ["a {class_noun} on the beach"]})


def test_how_a_run_is_written_or_computed_may_change_on_a_resume():
    recorded = {**REQUIRED, "lora": True, "lora_format": "diffusers", "allow_tf32": False}
    asked = from_dict({**recorded, "lora_format": "kohya", "allow_tf32": True})
    assert changed_settings(asked, recorded, "record") == []


def test_an_unknown_flag_is_named_with_its_commands_help(capsys):
    assert exit_code(["generate", "--model", "m", "--prompt", "p", "--sede", "1"]) == 2
    assert "unrecognized arguments: --sede 1; see `dreambooth generate --help`" in capsys.readouterr().err


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path, capsys):
    file = tmp_path / "run.yaml"
    file.write_text("max_train_steps: many\n")
    assert exit_code(["train", "--config", str(file), "--model", "m", "--instance_data_dir", "d", "--class_noun", "dog",
                      "--check"]) == 2
    assert f"{file}: --max_train_steps: expected int, got 'many'" in capsys.readouterr().err
