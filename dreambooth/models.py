"""Loading a base Stable Diffusion model from a local diffusers folder, and encoding prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import (AutoencoderKL, DDPMScheduler, DiffusionPipeline, SchedulerMixin, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

from dreambooth.errors import ModelError

CLIP_TOKENIZER_DIR = str(Path(__file__).parent / "assets" / "clip-tokenizer")
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Components:
    """The parts of a Stable Diffusion pipeline that fine-tuning touches."""

    path: Path
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training (forward-process) scheduler

    @property
    def native_resolution(self) -> int:
        return native_resolution(self.path)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def check_model_folder(path: str | Path, allow_pickle: bool = False) -> Path:
    """Fail early, in one line, if `path` is not a loadable diffusers SD folder.

    Weights must be safetensors: pickled `.bin` files can run code when loaded, so they are refused
    unless `allow_pickle` (and then loaded with `torch.load(weights_only=True)` by the libraries).
    """
    folder = Path(path).expanduser()
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise ModelError(f"--pretrained_model_name_or_path: {folder} is not a folder; pass a local diffusers "
                         "pipeline folder (hub ids cannot be downloaded here)")
    if not index.is_file():
        raise ModelError(f"{folder}: no model_index.json; pass the folder written by `save_pretrained` "
                         "(single .ckpt/.safetensors files are not supported as a base model)")
    try:
        listed = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{index}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    missing = [c for c in SD_COMPONENTS if c not in listed or not (folder / c).is_dir()]
    if missing:
        raise ModelError(f"{folder}: missing component(s) {', '.join(missing)}; a Stable Diffusion folder needs "
                         f"{', '.join(SD_COMPONENTS)}")
    for name in ("unet", "vae", "text_encoder"):
        if any((folder / name).glob("*.safetensors")):
            continue
        if not any((folder / name).glob("*.bin")):
            raise ModelError(f"{folder / name}: no weights (.safetensors) found")
        if not allow_pickle:
            raise ModelError(f"{folder / name}: only pickled .bin weights; convert them to safetensors, or pass "
                             "--allow_pickle if you trust the source")
    return folder


def native_resolution(folder: Path) -> int:
    """The image size the model was trained at, from its configs alone (no weights loaded)."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def _weights_kwargs(folder: Path, *components: str) -> dict:
    """Prefer safetensors; fall back to .bin only where check_model_folder allowed it."""
    has_safetensors = all(any((folder / c).glob("*.safetensors")) for c in components)
    return {"local_files_only": True, "use_safetensors": True if has_safetensors else None}


def load_components(path: str | Path, allow_pickle: bool = False) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and the DDPM training scheduler from a local folder."""
    folder = check_model_folder(path, allow_pickle)
    return Components(
        path=folder,
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder",
                                                   **_weights_kwargs(folder, "text_encoder")),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **_weights_kwargs(folder, "vae")),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **_weights_kwargs(folder, "unet")),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


@dataclass
class FrozenParts:
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None


def reload_frozen(parts: Components, with_text_encoder: bool) -> FrozenParts:
    """Fresh full-precision copies of the frozen parts, from the folder they were loaded from."""
    folder = parts.path
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **_weights_kwargs(folder, "vae"))
    text_encoder = None
    if with_text_encoder:
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder",
                                                     **_weights_kwargs(folder, "text_encoder"))
    return FrozenParts(vae=vae, text_encoder=text_encoder)


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False) -> StableDiffusionPipeline:
    """The sampling pipeline of a local folder (base or personalized), offline and quiet."""
    folder = check_model_folder(path, allow_pickle)
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, safety_checker=None, requires_safety_checker=False,
                                             **_weights_kwargs(folder, "unet", "vae", "text_encoder"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's context length, shaped (B, 77) for CLIP."""
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def encode_text(text_encoder: CLIPTextModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states the UNet cross-attends to, shaped (B, 77, D)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]


def load_sampling_scheduler(path: str | Path) -> SchedulerMixin:
    """The folder's own inference scheduler (the class named in model_index.json)."""
    folder = Path(path)
    library, class_name = json.loads((folder / "model_index.json").read_text())["scheduler"]
    scheduler_class = getattr(diffusers, class_name, None)
    if library != "diffusers" or scheduler_class is None:
        raise ModelError(f"{folder}/model_index.json: unknown scheduler {library}.{class_name}")
    return scheduler_class.from_pretrained(folder, subfolder="scheduler")
