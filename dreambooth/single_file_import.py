"""Import a single-file Stable Diffusion checkpoint (the original layout that AUTOMATIC1111, ComfyUI
and model sites share) as the diffusers pipeline folder that `train` takes as its base model.

diffusers' `from_single_file` converts the keys, given the diffusers configs of the file's
architecture, which it would otherwise download. They are written here instead, from the published
configs of SD 1.5, SD 2.1 (768-v and base) and SDXL base 1.0; the family is told from the file's
keys, what it predicts from its markers: the model spec's architecture and prediction type (metadata
that kohya-ss and our export write; ComfyUI names the latter `predict_key`), SDXL's `v_pred` and `ztsnr`
keys. Without them an SD 2.x file is taken as 768-v, as diffusers does. A file of another architecture
needs `config=`: a diffusers folder whose configs describe it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import CLIPTokenizer

from dreambooth.atomic import fsync_tree, removed_on_failure, umask_modes
from dreambooth.errors import ModelError
from dreambooth.models import CLIP_TOKENIZER_DIR, clip_text_config, is_sdxl_folder
from dreambooth.single_file import MODELSPEC_ARCHITECTURE, TEXT_ENCODERS

log = logging.getLogger("dreambooth")
FAMILIES = ("sd1", "sd2-v", "sd2-base", "sdxl")
PICKLES = (".ckpt", ".pt", ".pth", ".bin")
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
SD_BLOCKS = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
# OpenCLIP's text towers; diffusers keeps 23 of ViT-H's 24 blocks (SD 2.x conditions on the penultimate)
OPEN_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   hidden_act="gelu", projection_dim=512)
OPEN_CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                       hidden_act="gelu", projection_dim=1280)


def _sd2(sample_size: int, prediction_type: str) -> dict:
    return dict(pipeline="StableDiffusionPipeline", resolution=8 * sample_size,
                unet=dict(SD_BLOCKS, sample_size=sample_size, cross_attention_dim=1024,
                          attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
                          upcast_attention=True),  # 2.1's attention overflows in fp16 otherwise; exact either way
                vae={}, text_encoders=[("CLIPTextModel", OPEN_CLIP_H, "!")],
                scheduler=("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False,
                                                 prediction_type=prediction_type)))


# The published diffusers configs, as far as they differ from the classes' defaults.
ARCHITECTURES = {
    "sd1": dict(pipeline="StableDiffusionPipeline", resolution=512,
                unet=dict(SD_BLOCKS, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                vae={}, text_encoders=[("CLIPTextModel", CLIP_L, "<|endoftext|>")],
                scheduler=("PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False))),
    "sd2-v": _sd2(96, "v_prediction"),
    "sd2-base": _sd2(64, "epsilon"),
    "sdxl": dict(pipeline="StableDiffusionXLPipeline", resolution=1024,
                 unet=dict(sample_size=128, block_out_channels=[320, 640, 1280], layers_per_block=2,
                           down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                           up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                           attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
                           cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                           addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
                 vae=dict(scaling_factor=0.13025, force_upcast=True),
                 text_encoders=[("CLIPTextModel", CLIP_L, "<|endoftext|>"),
                                ("CLIPTextModelWithProjection", OPEN_CLIP_BIG_G, "!")],
                 scheduler=("EulerDiscreteScheduler", dict(timestep_spacing="leading", interpolation_type="linear"))),
}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_configs(family: str, folder: Path, scheduler_settings: dict | None = None) -> Path:
    """A diffusers pipeline folder without weights: the family's configs (its scheduler's changed by
    `scheduler_settings`) and CLIP tokenizers."""
    arch = ARCHITECTURES[family]
    scheduler_class, scheduler = arch["scheduler"]
    scheduler = {**scheduler, **(scheduler_settings or {})}
    if scheduler.get("rescale_betas_zero_snr") and scheduler_class == "PNDMScheduler":  # PNDM has no such betas
        scheduler_class, scheduler = "DDIMScheduler", {**scheduler, "clip_sample": False}
        del scheduler["skip_prk_steps"]
    index = {"_class_name": arch["pipeline"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler_class]}
    if arch["pipeline"] == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    _write_json(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **arch["unet"]})
    _write_json(folder / "vae" / "config.json", {
        "_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "latent_channels": 4, "sample_size": arch["resolution"], **arch["vae"]})
    _write_json(folder / "scheduler" / "scheduler_config.json", {"_class_name": scheduler_class, **BETAS, **scheduler})
    for suffix, (model_class, sizes, pad_token) in zip(("", "_2"), arch["text_encoders"]):
        index[f"text_encoder{suffix}"] = ["transformers", model_class]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        config = clip_text_config(**sizes)
        config.architectures = [model_class]
        config.save_pretrained(folder / f"text_encoder{suffix}")
        CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, pad_token=pad_token).save_pretrained(folder / f"tokenizer{suffix}")
    _write_json(folder / "model_index.json", index)
    return folder


def check_format(file: Path, allow_pickle: bool) -> None:
    """A readable safetensors file, or a pickle only where the user allowed it: loading one can run code."""
    if file.suffix == ".safetensors":
        read_header(file)  # the header alone: a damaged file is named here, not deep in diffusers
        return
    if file.suffix not in PICKLES:
        raise ModelError(f"{file}: expected a .safetensors (or, with --allow_pickle, .ckpt) checkpoint")
    if not allow_pickle:
        raise ModelError(f"{file}: a pickled checkpoint can run code when loaded; convert it to safetensors, "
                         "or pass --allow_pickle if you trust the source")


class _StandIn:
    """An inert placeholder for an object a pickle keeps beside its tensors (a Lightning callback's
    state, a numpy scalar): accepts whatever it is built with and keeps none of it."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


@contextlib.contextmanager
def extras_read_as_stand_ins(file: Path):
    """Within: torch's weights-only loader (diffusers' too) reads `file`'s non-tensor objects as stand-ins,
    so Lightning-era checkpoints (SD 1.x/2.x's own releases among them) load; nothing they name is imported."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # not a zip-format torch file: the loader names the problem below
        names = []
    stand_ins = [(type(name.rsplit(".", 1)[-1], (_StandIn,), {"__module__": name.rsplit(".", 1)[0]}), name)
                 for name in names]
    with torch.serialization.safe_globals(stand_ins):
        yield


def read_header(file: Path) -> tuple[list[str], dict[str, str]]:
    """The file's tensor names and metadata (a pickle has none), without loading the tensors where the
    format allows (pickles: see check_format)."""
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt") as handle:
                return list(handle.keys()), handle.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise ModelError(f"{file}: not a readable safetensors file ({exc})") from None
    try:  # diffusers reads it the same way (weights only: no code runs)
        with extras_read_as_stand_ins(file):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{file}: not a loadable torch checkpoint ({exc.__class__.__name__})") from None
    while "state_dict" in state:
        state = state["state_dict"]
    return list(state), {}


def detect_family(file: Path, keys: list[str], metadata: dict[str, str]) -> str:
    """sd1, sd2-v, sd2-base or sdxl, from where the file keeps its text encoder(s); SD 2.x's two by the
    metadata's architecture or prediction type, 768-v where it names neither."""
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if not has("model.diffusion_model.") or not has("first_stage_model."):
        raise ModelError(f"{file}: no UNet (model.diffusion_model.) or no VAE (first_stage_model.) weights; "
                         "pass a full Stable Diffusion checkpoint, not a LoRA, VAE or UNet alone")
    for layout, family in (("sdxl", "sdxl"), ("sd2", "sd2-v"), ("sd1", "sd1")):  # SDXL also has an sd1-like encoder
        if all(has(prefix) for _, prefix, _ in TEXT_ENCODERS[layout]):
            if family == "sd2-v" and (metadata.get("modelspec.architecture") == MODELSPEC_ARCHITECTURE["sd2"]
                                      or stated_prediction(metadata) == "epsilon"):
                return "sd2-base"
            return family
    raise ModelError(f"{file}: no text encoder of SD 1.x, 2.x or SDXL found; for another architecture pass "
                     "--config with a diffusers folder that describes it")


def stated_prediction(metadata: dict[str, str]) -> str | None:
    """"v" or "epsilon" where the file's metadata says: the model spec's key, or ComfyUI's name for it."""
    return metadata.get("modelspec.prediction_type") or metadata.get("modelspec.predict_key")


def marked_scheduler_settings(keys: list[str], metadata: dict[str, str]) -> dict:
    """What the file's markers say of its noise schedule beyond the family's published config: v-prediction
    (SDXL's `v_pred` key, the model spec's prediction type) and a zero terminal SNR (`ztsnr`), sampled with
    trailing timesteps as that schedule needs."""
    settings: dict = {}
    if "v_pred" in keys or stated_prediction(metadata) == "v":
        settings["prediction_type"] = "v_prediction"
    if "ztsnr" in keys:
        settings.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return settings


def import_single_file(file: str | Path, output: str | Path, family: str | None = None,
                       config: str | Path | None = None, allow_pickle: bool = False) -> Path:
    """Write `file` as a diffusers pipeline folder at `output` (fp32 safetensors); return the folder.
    The folder appears whole or not at all."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    file, output = Path(file).expanduser(), Path(output).expanduser()
    if not file.is_file():
        raise ModelError(f"{file}: no such file; pass a single-file .safetensors checkpoint")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ModelError(f"--output {output}: exists and is not empty; choose a new folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    check_format(file, allow_pickle)
    if config is None:
        # a pickle is read whole for its keys: only where they must name the family
        keys, metadata = read_header(file) if family is None or file.suffix == ".safetensors" else ([], {})
        scheduler_settings = marked_scheduler_settings(keys, metadata)
        if family is None:
            family = detect_family(file, keys, metadata)
            if family == "sd2-v" and "modelspec.architecture" not in metadata and not stated_prediction(metadata):
                log.warning("warning: %s: an SD 2.x checkpoint, taken as 768-px v-prediction (SD 2.0/2.1); "
                            "for a 2.x-base model pass --family sd2-base", file)
        if family not in FAMILIES:
            raise ModelError(f"--family {family!r}: expected one of {', '.join(FAMILIES)}")
    elif family is not None:
        raise ModelError("--family and --config: pass one; --config describes the file's architecture itself")
    staging = output.parent / f".{output.name}.import.tmp"
    with tempfile.TemporaryDirectory() as tmp:
        configs = (Path(config).expanduser() if config else
                   write_configs(family, Path(tmp) / "configs", scheduler_settings))
        if not (configs / "model_index.json").is_file():
            raise ModelError(f"--config {configs}: no model_index.json; pass a diffusers pipeline folder")
        pipeline_class = StableDiffusionXLPipeline if is_sdxl_folder(configs) else StableDiffusionPipeline
        extra = {} if pipeline_class is StableDiffusionXLPipeline else dict(safety_checker=None, feature_extractor=None)
        pickled = file.suffix in PICKLES  # allowed: check_format
        try:
            with extras_read_as_stand_ins(file) if pickled else contextlib.nullcontext():
                pipe = pipeline_class.from_single_file(str(file), config=str(configs), local_files_only=True,
                                                       torch_dtype=torch.float32, **extra)
        except (KeyError, RuntimeError, ValueError) as exc:  # keys or shapes the architecture does not have
            described = f"--config {configs}" if config else f"the {family} architecture"
            raise ModelError(f"{file}: does not fit {described} ({_first_line(exc)}); check --family, or pass "
                             "--config with a diffusers folder of the file's architecture (for a file `dreambooth "
                             "export` wrote, the folder it was exported from)") from None
        except OSError as exc:
            if exc.errno is not None:  # the disk's own errors keep their one-line message
                raise
            raise ModelError(f"{file}: not a loadable checkpoint ({_first_line(exc)})") from None
        shutil.rmtree(staging, ignore_errors=True)
        with removed_on_failure(staging):
            pipe.save_pretrained(staging, safe_serialization=True)
            umask_modes(staging)
            fsync_tree(staging)
    if output.exists():
        output.rmdir()  # empty, checked above
    os.replace(staging, output)
    return output


def _first_line(exc: Exception) -> str:
    """The library's message, one line, cut at a word rather than mid-sentence."""
    return textwrap.shorten(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 240,
                            placeholder=" …")
