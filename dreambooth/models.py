"""Loading a base Stable Diffusion (1.x/2.x or XL) model from a local diffusers folder, and encoding
prompts. SD has one tokenizer/text encoder; SDXL has two, whose penultimate hidden states are
concatenated, plus the second one's pooled projection for the UNet's added conditioning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import (AutoencoderKL, DDPMScheduler, DiffusionPipeline, SchedulerMixin,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dreambooth.errors import ModelError
from dreambooth.outputs import LORA_WEIGHTS

CLIP_TOKENIZER_DIR = str(Path(__file__).parent / "assets" / "clip-tokenizer")
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = SD_COMPONENTS + ("text_encoder_2", "tokenizer_2")


def clip_text_config(**sizes) -> CLIPTextConfig:
    """A CLIP text encoder's config that matches CLIP_TOKENIZER_DIR (vocabulary size, special tokens,
    77 positions); `sizes` are the rest (hidden_size, num_hidden_layers, ...)."""
    return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407, **sizes)


@dataclass
class Components:
    """The parts of a Stable Diffusion pipeline that fine-tuning touches."""

    path: Path
    tokenizers: list[CLIPTokenizer]  # one for SD, two for SDXL
    text_encoders: list[CLIPTextModel]
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training (forward-process) scheduler

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) == 2

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def check_model_folder(path: str | Path, allow_pickle: bool = False,
                       option: str = "--pretrained_model_name_or_path") -> Path:
    """Fail early, in one line naming `option`, if `path` is not a loadable diffusers SD folder.

    Weights must be safetensors: pickled `.bin` files can run code when loaded, so they are refused
    unless `allow_pickle` (and then loaded with `torch.load(weights_only=True)` by the libraries).
    """
    folder = Path(path).expanduser()
    index = folder / "model_index.json"
    if folder.is_file() and folder.suffix in (".safetensors", ".ckpt"):
        raise ModelError(f"{option}: {folder} is a single-file checkpoint; convert it once with "
                         f"`dreambooth import {folder} --output FOLDER` and pass FOLDER")
    if not folder.is_dir():
        raise ModelError(f"{option}: {folder} is not a folder; pass a local diffusers "
                         "pipeline folder (hub ids cannot be downloaded here)")
    if not index.is_file() and (folder / LORA_WEIGHTS).is_file():
        raise ModelError(f"{option}: {folder} is a LoRA folder; fold it into a full model first with "
                         f"`dreambooth merge --lora {folder} --output FOLDER` and pass FOLDER")
    if not index.is_file():
        raise ModelError(f"{option}: {folder} has no model_index.json; pass the folder written by `save_pretrained` "
                         "(or by `dreambooth import` from a single-file checkpoint)")
    try:
        listed = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{index}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    # an SDXL index lacking the second encoder's folder is named missing, not loaded as SD
    needed = SDXL_COMPONENTS if is_sdxl_folder(folder) or "XL" in listed.get("_class_name", "") else SD_COMPONENTS
    missing = [c for c in needed if c not in listed or not (folder / c).is_dir()]
    if missing:
        raise ModelError(f"{folder}: missing component(s) {', '.join(missing)}; a {listed.get('_class_name')} "
                         f"folder needs {', '.join(needed)}")
    for name in [c for c in needed if c in ("unet", "vae") or c.startswith("text_encoder")]:
        if _weights_file(folder / name, name, "safetensors"):
            continue
        if not _weights_file(folder / name, name, "bin"):
            others = sorted(p.name for p in (folder / name).glob("*.safetensors"))
            raise ModelError(f"{folder / name}: no {_weights_stem(name)}.safetensors" + (
                f", only {', '.join(others)} (a variant such as fp16: load it in diffusers with its variant and "
                "save_pretrained it without one)" if others else " weights found"))
        if not allow_pickle:
            raise ModelError(f"{folder / name}: only pickled .bin weights, which can run code when read; convert "
                             "them to safetensors (save_pretrained writes them), or, if you trust the source, pass "
                             "--allow_pickle to `train` or `import`")
    return folder


def is_sdxl_folder(folder: Path) -> bool:
    """SDXL is the family with a second text encoder (what its loaders, trainer and exports branch on)."""
    return (folder / "text_encoder_2").is_dir()


def native_resolution(folder: Path) -> int:
    """The image size the model was trained at, from its configs alone (no weights loaded)."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def _weights_stem(component: str) -> str:
    """The name diffusers (UNet, VAE) or transformers (text encoders) give a component's weights file."""
    return "diffusion_pytorch_model" if component in ("unet", "vae") else "model"


def _weights_file(folder: Path, component: str, kind: str) -> bool:
    """Whether a pipeline component's `folder` holds the weights `from_pretrained` reads (see `has_weights`)."""
    stem = "pytorch_model" if kind == "bin" and component.startswith("text_encoder") else _weights_stem(component)
    return has_weights(folder, stem, kind)


def has_weights(folder: Path, stem: str, kind: str = "safetensors") -> bool:
    """Whether `folder` holds `stem`.`kind` whole or sharded (its index): the exact names `from_pretrained`
    reads, so a variant (`*.fp16.safetensors`) or a stray file is not taken for them."""
    return any((folder / name).is_file() for name in (f"{stem}.{kind}", f"{stem}.{kind}.index.json"))


def _weights_kwargs(folder: Path, *components: str) -> dict:
    """Prefer safetensors; fall back to .bin only where check_model_folder allowed it."""
    has_safetensors = all(_weights_file(folder / c, c, "safetensors") for c in components)
    return {"local_files_only": True, "use_safetensors": True if has_safetensors else None}


def load_tokenizers(folder: Path) -> list[CLIPTokenizer]:
    """The model's tokenizer, and SDXL's second one."""
    suffixes = ("", "_2") if is_sdxl_folder(folder) else ("",)
    return [CLIPTokenizer.from_pretrained(folder, subfolder=f"tokenizer{s}", local_files_only=True) for s in suffixes]


def load_components(path: str | Path, allow_pickle: bool = False) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and the DDPM training scheduler from a local folder."""
    folder = check_model_folder(path, allow_pickle)
    suffixes = ("", "_2") if is_sdxl_folder(folder) else ("",)
    return Components(
        path=folder,
        tokenizers=load_tokenizers(folder),
        text_encoders=[_load_text_encoder(folder, f"text_encoder{s}") for s in suffixes],
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **_weights_kwargs(folder, "vae")),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **_weights_kwargs(folder, "unet")),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


def _load_text_encoder(folder: Path, name: str) -> CLIPTextModel:
    """SD's text encoder, or SDXL's second one (with the projection its pooled output needs)."""
    model_class = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    return model_class.from_pretrained(folder, subfolder=name, **_weights_kwargs(folder, name))


def reload_frozen(parts: Components, with_text_encoders: bool) -> tuple[AutoencoderKL, list[CLIPTextModel] | None]:
    """Fresh full-precision copies of the frozen parts, from the folder they were loaded from."""
    folder = parts.path
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **_weights_kwargs(folder, "vae"))
    names = ["text_encoder", "text_encoder_2"][: len(parts.text_encoders)]
    return vae, [_load_text_encoder(folder, n) for n in names] if with_text_encoders else None


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                  device: torch.device | str | None = None) -> DiffusionPipeline:
    """The sampling pipeline (SD or SDXL) of a local folder, offline, quiet, on `device` (by default the
    GPU if there is one)."""
    folder = check_model_folder(path, allow_pickle)
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, safety_checker=None, requires_safety_checker=False,
                                             **_weights_kwargs(folder, "unet", "vae"))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or default_device())


def default_device() -> str:
    """The GPU if there is one: where sampling and the toy world's training run unless told otherwise."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def tokenize(tokenizers: list[CLIPTokenizer], prompts: list[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer, padded to its context length: (B, 77) each for CLIP."""
    return [t(prompts, padding="max_length", truncation=True, max_length=t.model_max_length,
              return_tensors="pt").input_ids for t in tokenizers]


@dataclass
class TextConditioning:
    """What the UNet is conditioned on: per-token states (B, 77, D) and, for SDXL, pooled (B, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> "TextConditioning":
        return TextConditioning(self.hidden[index], None if self.pooled is None else self.pooled[index])

    def float(self) -> "TextConditioning":
        return TextConditioning(self.hidden.float(), None if self.pooled is None else self.pooled.float())


def encode_text(text_encoders: list[CLIPTextModel], input_ids: list[torch.Tensor]) -> TextConditioning:
    """SD: the encoder's last hidden states. SDXL: both encoders' penultimate hidden states,
    concatenated on features, and the second encoder's pooled projection (as diffusers' SDXL does)."""
    if len(text_encoders) == 1:
        (encoder,), (ids,) = text_encoders, input_ids
        return TextConditioning(encoder(ids.to(encoder.device))[0])
    outputs = [e(ids.to(e.device), output_hidden_states=True) for e, ids in zip(text_encoders, input_ids)]
    hidden = torch.cat([o.hidden_states[-2] for o in outputs], dim=-1)  # (B, 77, D1 + D2)
    return TextConditioning(hidden, outputs[-1].text_embeds)


def load_sampling_scheduler(path: str | Path) -> SchedulerMixin:
    """The folder's own inference scheduler (the class named in model_index.json)."""
    folder = Path(path)
    library, class_name = json.loads((folder / "model_index.json").read_text())["scheduler"]
    scheduler_class = getattr(diffusers, class_name, None)
    if library != "diffusers" or scheduler_class is None:
        raise ModelError(f"{folder}/model_index.json: unknown scheduler {library}.{class_name}")
    return scheduler_class.from_pretrained(folder, subfolder="scheduler")
