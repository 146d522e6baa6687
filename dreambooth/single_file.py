"""Export a Stable Diffusion 1.x pipeline folder as one `.safetensors` in the original (CompVis/LDM)
key layout, the file AUTOMATIC1111 and ComfyUI load.

Key facts of that layout: UNet under `model.diffusion_model.` with `input_blocks` / `middle_block` /
`output_blocks` numbered per layer, VAE under `first_stage_model.` with reversed decoder blocks and
1x1-conv attention, text encoder under `cond_stage_model.transformer.` with Hugging Face CLIP names.
The mapping is derived from the model's own config, so it serves any block count.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dreambooth.errors import ModelError

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str] | None = None) -> str | None:
    for old, new in prefixes.items():
        if key.startswith(old + "."):
            rest = key[len(old) + 1:]
            for a, b in (inner or {}).items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
            return f"{new}.{rest}"
    return None


def unet_prefixes(config: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(resnet prefixes, other prefixes): diffusers module path -> LDM module path."""
    layers, blocks = config["layers_per_block"], len(config["block_out_channels"])
    resnets = {"mid_block.resnets.0": "middle_block.0", "mid_block.resnets.1": "middle_block.2"}
    other = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.attentions.0": "middle_block.1"}
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


def convert(folder: Path) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder as one state dict in the LDM layout."""
    out: dict[str, torch.Tensor] = {}
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    if unet_config.get("use_linear_projection") or (folder / "text_encoder_2").is_dir():
        raise ModelError(f"{folder}: single-file export supports SD 1.x only (SD 2.x and SDXL need another "
                         "text-encoder layout); load the diffusers folder directly instead")
    unet = load_file(next((folder / "unet").glob("*.safetensors")))
    resnets, other = unet_prefixes(unet_config)
    for key, value in unet.items():
        new = _rename(key, resnets, RESNET) or _rename(key, other)
        if new is None:
            raise ModelError(f"{folder / 'unet'}: no single-file name for {key}; only SD 1.x-style UNets are supported")
        out[f"model.diffusion_model.{new}"] = value
    vae = load_file(next((folder / "vae").glob("*.safetensors")))
    prefixes = vae_prefixes(json.loads((folder / "vae" / "config.json").read_text()))
    for key, value in vae.items():
        new = _rename(key, prefixes, {"conv_shortcut": "nin_shortcut", **VAE_ATTENTION}) or key
        if ".attn_1." in new and value.ndim == 2:
            value = value[:, :, None, None]  # linear -> 1x1 conv
        out[f"first_stage_model.{new}"] = value
    for key, value in load_file(next((folder / "text_encoder").glob("*.safetensors"))).items():
        # transformers >= 5 saves CLIPTextModel without its `text_model.` level; the LDM layout has it
        out[f"cond_stage_model.transformer.text_model.{key.removeprefix('text_model.')}"] = value
    return out


def export_single_file(folder: Path, out_file: Path, half: bool = False) -> Path:
    """Write `folder` (a diffusers SD 1.x pipeline) as one LDM-layout safetensors file."""
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in convert(folder).items()}
    tmp = out_file.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt", "source": "dreambooth"})
    tmp.replace(out_file)
    return out_file
