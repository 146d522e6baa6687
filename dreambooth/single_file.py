"""Export a Stable Diffusion 1.x, 2.x or SDXL pipeline folder as one `.safetensors` in the original
(CompVis/LDM, Stability SGM) key layout, the file AUTOMATIC1111 and ComfyUI load.

Key facts of that layout: UNet under `model.diffusion_model.` with `input_blocks` / `middle_block` /
`output_blocks` numbered per layer (SDXL's size/crop MLP as `label_emb.0`), VAE under
`first_stage_model.` with reversed decoder blocks and 1x1-conv attention. Text encoders: SD 1.x keeps
Hugging Face CLIP names under `cond_stage_model.transformer.`; SD 2.x is OpenCLIP under
`cond_stage_model.model.` (q/k/v fused into `in_proj`); SDXL has CLIP-L with Hugging Face names under
`conditioner.embedders.0.transformer.` and OpenCLIP bigG under `conditioner.embedders.1.model.`.
The mapping is derived from the model's own config, so it serves any block count.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Literal

import torch
from safetensors.torch import load_file

from dreambooth.atomic import save_file_atomic
from dreambooth.errors import ConfigError, ModelError
from dreambooth.models import is_sdxl_folder, native_resolution
from dreambooth.outputs import training_record

Family = Literal["sd1", "sd2", "sdxl"]

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                 # as older diffusers saved VAEs (many SD 1.x/2.x folders), which diffusers still loads
                 "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
OPEN_CLIP = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
# family -> (component, original prefix, layout) per text encoder
TEXT_ENCODERS: dict[Family, tuple[tuple[str, str, str], ...]] = {
    "sd1": (("text_encoder", "cond_stage_model.transformer.", "clip"),),
    "sd2": (("text_encoder", "cond_stage_model.model.", "open_clip"),),
    "sdxl": (("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
             ("text_encoder_2", "conditioner.embedders.1.model.", "open_clip")),
}
# Stability AI's model spec: the architecture IDs it lists (SD 2.x's depend on what the model predicts)
MODELSPEC_ARCHITECTURE = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                          "sd2-v": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}
ORIGINAL_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str] | None = None) -> str | None:
    """`key` with its leading module path replaced by `prefixes`, then its next level by `inner`.
    Works on parameter names and on bare module names alike (kohya LoRA names are modules)."""
    for old, new in prefixes.items():
        if key == old or key.startswith(old + "."):
            rest = key[len(old):]  # "" or ".<more>"
            for a, b in (inner or {}).items():
                if rest == f".{a}" or rest.startswith(f".{a}."):
                    rest = f".{b}{rest[len(a) + 1:]}"
            return new + rest
    return None


def component_config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def scheduler_config(folder: Path) -> dict:
    """The pipeline's scheduler settings (what it predicts, among them), {} where it has none."""
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    return json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}


def model_family(folder: Path) -> Family:
    """Which original layout the diffusers pipeline in `folder` maps to: SDXL has a second text encoder;
    of the one-encoder families only SD 2.x has linear transformer projections in its UNet."""
    if is_sdxl_folder(folder):
        return "sdxl"
    return "sd2" if component_config(folder, "unet").get("use_linear_projection") else "sd1"


def predicts_v(folder: Path) -> bool:
    return scheduler_config(folder).get("prediction_type") == "v_prediction"


def modelspec(base: Path, title: str, record: dict, lora: bool = False) -> dict[str, str]:
    """Stability AI's model-spec metadata (`modelspec.*`), which SwarmUI and model sites read to tell what a
    file is (architecture, prediction type, resolution) without sniffing its keys. `base` is the model (or a
    LoRA's base); `record` the training record, {} for a model `dreambooth train` did not write. For LoRA files
    the architecture ends in "/lora" and the implementation is the layout of the keys, as kohya-ss writes
    them: diffusers' module names for SD 1.x/2.x, the original ones for SDXL."""
    family, v = model_family(base), predicts_v(base)
    architecture = MODELSPEC_ARCHITECTURE["sd2-v" if family == "sd2" and v else family]
    resolution = record.get("resolution") or native_resolution(base)
    spec = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture + ("/lora" if lora else ""),
            "modelspec.implementation": "diffusers" if lora and family != "sdxl" else ORIGINAL_IMPLEMENTATION,
            "modelspec.title": title, "modelspec.resolution": f"{resolution}x{resolution}",
            "modelspec.prediction_type": "v" if v else "epsilon"}
    identifier, class_noun = record.get("identifier"), record.get("class_noun")
    # what UIs may add to a prompt: the identifier and its class, or a literal instance prompt whole
    trigger = " ".join(filter(None, [identifier, class_noun])) if identifier else record.get("instance_prompt")
    if trigger:
        spec["modelspec.trigger_phrase"] = trigger
        spec["modelspec.description"] = (f"DreamBooth {'LoRA' if lora else 'fine-tune'} of "
                                          f"{Path(record.get('pretrained_model_name_or_path', base)).name}; "
                                          f"prompt with \"{trigger}\"")
    return spec


def unet_prefixes(config: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(resnet prefixes, other prefixes): diffusers module path -> LDM module path."""
    layers, blocks = config["layers_per_block"], len(config["block_out_channels"])
    resnets = {"mid_block.resnets.0": "middle_block.0", "mid_block.resnets.1": "middle_block.2"}
    other = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.attentions.0": "middle_block.1"}
    # input_blocks count one per resnet plus one per downsampler; only the last block has none, so
    # the (layers + 1) stride holds for SDXL too
    for i in range(blocks):
        for j in range(layers):
            resnets[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{i * (layers + 1) + j + 1}.0"
            other[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{i * (layers + 1) + j + 1}.1"
        other[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (layers + 1)}.0.op"
        has_attention = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(layers + 1):
            resnets[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (layers + 1) + j}.0"
            other[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (layers + 1) + j}.1"
        other[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{i * (layers + 1) + layers}.{2 if has_attention else 1}"
    return resnets, other


def unet_namer(config: dict) -> Callable[[str], str | None]:
    """diffusers UNet parameter or module name -> its LDM name (None if it has none), for this config."""
    resnets, other = unet_prefixes(config)
    return lambda key: _rename(key, resnets, RESNET) or _rename(key, other)


def vae_prefixes(config: dict) -> dict[str, str]:
    blocks, layers = len(config["block_out_channels"]), config["layers_per_block"]
    prefixes = {"encoder.mid_block.attentions.0": "encoder.mid.attn_1", "decoder.mid_block.attentions.0": "decoder.mid.attn_1",
                "encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for part in ("encoder", "decoder"):
        for j in range(2):
            prefixes[f"{part}.mid_block.resnets.{j}"] = f"{part}.mid.block_{j + 1}"
    for i in range(blocks):
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{blocks - 1 - i}.upsample"
        for j in range(layers + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{blocks - 1 - i}.block.{j}"
    return prefixes


def open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP text model's weights in OpenCLIP's names (SD 2.x, SDXL's second encoder)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        layer = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
        if key == "text_projection.weight":
            out["text_projection"] = value.T  # OpenCLIP computes x @ P; nn.Linear computes x @ W.T
        elif key in OPEN_CLIP:
            out[OPEN_CLIP[key]] = value
        elif key.endswith("position_ids"):
            continue  # a buffer (0..76) that older transformers saved; not a weight
        elif layer and (proj := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", layer[2])):
            qkv.setdefault(f"transformer.resblocks.{layer[1]}.attn.in_proj_{proj[2]}", {})[proj[1]] = value
        elif layer and (name := _rename(layer[2], OPEN_CLIP_LAYER)):
            out[f"transformer.resblocks.{layer[1]}.{name}"] = value
        else:
            raise ModelError(f"no OpenCLIP name for text encoder weight {key}")
    for key, parts in qkv.items():
        # nn.MultiheadAttention packs the projections as one (3 * width, width) matrix, q then k then v
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def weight_files(folder: Path, component: str) -> list[Path]:
    """The component's safetensors files: all shards of a large model (save_pretrained splits an SDXL
    UNet in fp32), never the reduced-precision variants (`*.fp16.safetensors`) kept beside them."""
    part = folder / component
    index = next(part.glob("*.safetensors.index.json"), None)
    if index is not None:
        return [part / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = [f for f in sorted(part.glob("*.safetensors")) if "." not in f.stem]
    if not files:
        raise ModelError(f"{part}: no full-precision .safetensors weights")
    return files


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return {k: v for file in weight_files(folder, component) for k, v in load_file(file).items()}


def convert(folder: Path) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder(s) as one state dict in the original layout."""
    out: dict[str, torch.Tensor] = {}
    ldm_name = unet_namer(component_config(folder, "unet"))
    for key, value in _weights(folder, "unet").items():
        new = ldm_name(key)
        if new is None:
            raise ModelError(f"{folder / 'unet'}: no single-file name for {key}; only SD 1.x, 2.x and SDXL UNets "
                             "are supported")
        out[f"model.diffusion_model.{new}"] = value
    prefixes = vae_prefixes(component_config(folder, "vae"))
    for key, value in _weights(folder, "vae").items():
        new = _rename(key, prefixes, {"conv_shortcut": "nin_shortcut", **VAE_ATTENTION}) or key
        if ".attn_1." in new and value.ndim == 2:
            value = value[:, :, None, None]  # linear -> 1x1 conv
        out[f"first_stage_model.{new}"] = value
    for component, prefix, layout in TEXT_ENCODERS[model_family(folder)]:
        state = _weights(folder, component)
        if layout == "open_clip":
            state = open_clip_state(state)
        else:  # transformers >= 5 saves CLIPTextModel without its `text_model.` level; the original has it
            state = {f"text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}
        out.update({prefix + k: v for k, v in state.items()})
    if model_family(folder) == "sdxl" and predicts_v(folder):
        # SDXL's weights do not say what it predicts; ComfyUI and A1111 read these empty markers
        out["v_pred"] = torch.tensor([])
        if scheduler_config(folder).get("rescale_betas_zero_snr"):
            out["ztsnr"] = torch.tensor([])
    return out


def check_output_file(out_file: Path) -> None:
    """A file for AUTOMATIC1111 and ComfyUI to list: a .safetensors name, not a folder's."""
    if out_file.is_dir():
        raise ConfigError(f"--output {out_file} is a folder; name the file, e.g. {out_file / 'model.safetensors'}")
    if out_file.suffix != ".safetensors":
        raise ConfigError(f"--output {out_file}: end the name in .safetensors (AUTOMATIC1111 and ComfyUI list only those)")


def export_single_file(folder: Path, out_file: Path, half: bool = False) -> Path:
    """Write `folder` (a diffusers SD 1.x, 2.x or SDXL pipeline) as one original-layout safetensors file."""
    check_output_file(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in convert(folder).items()}
    metadata = {"format": "pt", "source": "dreambooth", **modelspec(folder, out_file.stem, training_record(folder))}
    save_file_atomic(tensors, out_file, metadata)
    return out_file
