"""diffusers' DreamBooth scripts' flags that have no option of the same name here: accepted and
unused, mapped onto one of ours, or refused with what to do instead, so a pasted recipe never fails
on argparse's bare "unrecognized arguments" (train_dreambooth.py, train_dreambooth_lora.py,
train_dreambooth_lora_sdxl.py)."""

from __future__ import annotations

import argparse

from dreambooth.config import flag_spellings

# Flags of diffusers' train_dreambooth.py that need no option here, and why.
DIFFUSERS_NO_OPS = {
    "--enable_xformers_memory_efficient_attention": "PyTorch SDPA attention is used (same memory savings)",
    "--set_grads_to_none": "gradients are always set to None",
    "--pre_compute_text_embeddings": "frozen text embeddings are always precomputed",
    "--local_rank": "accelerate tells each process its rank",
    "--dataloader_num_workers": "images are encoded once and their latents cached, so loading is not the bottleneck",
    # older train_dreambooth_lora_sdxl.py: one crop corner for every photo
    **dict.fromkeys(("--crops_coords_top_left_h", "--crops_coords_top_left_w"),
                    "SDXL is told each photo's own crop corner, the one its resize and crop kept"),
}
# Flags of diffusers' script that cannot do here what they do there: refused, saying what to do instead.
_UPLOAD = "nothing is uploaded from here; upload OUTPUT_DIR afterwards (e.g. `huggingface-cli upload`)"
_IF_ONLY = "an option for DeepFloyd IF, which this tool does not train"
DIFFUSERS_REFUSED = {
    "--push_to_hub": _UPLOAD, "--hub_token": _UPLOAD, "--hub_model_id": _UPLOAD,
    "--revision": "models are never downloaded; pass the local folder of the revision you want",
    "--variant": "pass a folder with full-precision weights; --mixed_precision sets the training precision",
    "--tokenizer_name": "the tokenizer is the base model's own (its tokenizer/ folder)",
    "--tokenizer_max_length": _IF_ONLY, "--text_encoder_use_attention_mask": _IF_ONLY,
    "--class_labels_conditioning": _IF_ONLY, "--skip_save_text_encoder": _IF_ONLY,
    "--validation_images": "an option for image-variation and upscaler pipelines, which this tool does not train",
    "--validation_scheduler": "validation samples with the base model's own sampler",
    # diffusers' LoRA scripts (train_dreambooth_lora.py, train_dreambooth_lora_sdxl.py)
    "--validation_epochs": "pass --validation_steps N; and --lora for a LoRA recipe (without it every UNet "
                           "weight trains)",
    "--pretrained_vae_model_name_or_path": "put that VAE in a copy of the model folder as its vae/ "
                                           "(--mixed_precision fp16 keeps a force_upcast VAE in fp32 anyway)",
    **dict.fromkeys(("--dataset_name", "--dataset_config_name", "--cache_dir", "--image_column", "--caption_column"),
                    "datasets are not downloaded; put the photos in a folder and pass --instance_data_dir"),
    "--repeats": "--max_train_steps sets the run's length; the photos repeat as often as it needs",
    "--do_edm_style_training": "EDM-style training is not supported (nor are base models with an EDM scheduler)",
    "--use_dora": "DoRA is not supported; --lora trains plain LoRA adapters",
    "--adam_weight_decay_text_encoder": "the text encoder's adapters use --adam_weight_decay too",
    **dict.fromkeys(("--prodigy_beta3", "--prodigy_decouple", "--prodigy_use_bias_correction",
                     "--prodigy_safeguard_warmup"), "the Prodigy optimizer is not supported; AdamW is used"),
}
# Flags of diffusers' scripts whose one value here is what they select there: other values are refused.
DIFFUSERS_ONLY_VALUE = {"--optimizer": ("adamw", "only AdamW is supported (--use_8bit_adam for its 8-bit form)"),
                        "--image_interpolation_mode": ("lanczos", "photos are always resized with Lanczos")}
EPOCHS_REFUSED = ("--num_train_epochs: pass --max_train_steps (which diffusers lets win over epochs too); one of "
                  "diffusers' epochs is max(instance, class images) / train_batch_size steps, divided by "
                  "--gradient_accumulation_steps (rounded up)")
# Flags of diffusers' scripts that map onto one of our options.
DIFFUSERS_RENAMED = {"--offset_noise": ("noise_offset", 0.1), "--output_kohya_format": ("lora_format", "kohya")}


class Refused(argparse.Action):
    """A diffusers flag with no meaning here: a one-line error that says what to do instead."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {DIFFUSERS_REFUSED['--' + self.dest]}")


class OnlyValue(argparse.Action):
    """A diffusers flag whose value must be the one this tool always uses (case aside)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        value, reason = DIFFUSERS_ONLY_VALUE["--" + self.dest]
        if values.lower() != value:
            parser.error(f"{option_string} {values}: {reason}")


def add_diffusers_flags(parser: argparse.ArgumentParser) -> None:
    """The tables above as flags of `parser` (`dreambooth train`)."""
    for flag, reason in DIFFUSERS_NO_OPS.items():  # some take a value (--local_rank 0): it is read and unused
        parser.add_argument(*flag_spellings(flag[2:]), nargs="?", const=True, dest=f"noop{flag}", metavar="IGNORED",
                            help=f"accepted for diffusers recipes: {reason}")
    for flag in DIFFUSERS_REFUSED:
        parser.add_argument(*flag_spellings(flag[2:]), dest=flag[2:], action=Refused)
    # diffusers ignores epochs when --max_train_steps is given; so do we, and refuse them alone
    parser.add_argument(*flag_spellings("num_train_epochs"), dest="epochs_ignored", help=argparse.SUPPRESS)
    for flag in DIFFUSERS_ONLY_VALUE:
        parser.add_argument(*flag_spellings(flag[2:]), dest=flag[2:], action=OnlyValue)
    for flag, (name, value) in DIFFUSERS_RENAMED.items():
        parser.add_argument(*flag_spellings(flag[2:]), dest=name, action="store_const", const=value,
                            help=f"same as --{name} {value}")
