"""What a run trains and how it is saved: all UNet weights, or LoRA adapters (one loop serves both)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from dreambooth.config import TrainConfig
from dreambooth.models import Components
from dreambooth.outputs import LORA_WEIGHTS


class FullFineTune:
    """The paper's method: every UNet layer (and optionally the text encoder) is trained."""

    def configure(self, parts: Components, cfg: TrainConfig) -> None:
        parts.unet.requires_grad_(True)
        for encoder in parts.text_encoders:
            encoder.requires_grad_(cfg.train_text_encoder)

    def register_checkpoint_hooks(self, accelerator) -> None:
        """Full fine-tunes checkpoint whole models: accelerate's default."""

    def save(self, pipe: DiffusionPipeline, out: Path, cfg: TrainConfig) -> None:
        pipe.save_pretrained(out, safe_serialization=True)


class LoRAFineTune:
    """Low-rank adapters (Hu et al., 2021) on the attention projections; the base stays frozen."""

    def configure(self, parts: Components, cfg: TrainConfig) -> None:
        def adapter(modules: tuple[str, ...]) -> LoraConfig:
            return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.resolved_lora_alpha, lora_dropout=cfg.lora_dropout,
                              init_lora_weights="gaussian", target_modules=list(modules))

        parts.unet.requires_grad_(False)
        parts.unet.add_adapter(adapter(cfg.lora_target_modules))
        for encoder in parts.text_encoders:
            encoder.requires_grad_(False)
            if cfg.train_text_encoder:
                encoder.add_adapter(adapter(cfg.lora_text_encoder_modules))

    def register_checkpoint_hooks(self, accelerator) -> None:
        """Checkpoints hold the adapters only (megabytes), not the frozen base weights around them."""
        def save(models, weights, output_dir):
            if accelerator.is_main_process:
                for i, model in enumerate(models):
                    adapters = get_peft_model_state_dict(accelerator.unwrap_model(model), save_embedding_layers=False)
                    save_file({k: v.contiguous() for k, v in adapters.items()}, Path(output_dir) / f"adapters_{i}.safetensors")
            weights.clear()  # accelerate saves nothing else for the models

        def load(models, input_dir):
            for i, model in enumerate(models):
                set_peft_model_state_dict(accelerator.unwrap_model(model),
                                          load_file(Path(input_dir) / f"adapters_{i}.safetensors"))
            models.clear()  # ...and loads nothing else

        accelerator.register_save_state_pre_hook(save)
        accelerator.register_load_state_pre_hook(load)

    def save(self, pipe: DiffusionPipeline, out: Path, cfg: TrainConfig) -> None:
        from dreambooth.export import write_kohya_lora  # export owns the file formats

        layers, metadata = {}, {}
        encoders = [n for n in ("text_encoder", "text_encoder_2") if hasattr(pipe, n)] if cfg.train_text_encoder else []
        for name in ["unet", *encoders]:
            model = getattr(pipe, name)
            # The UNet's keep peft's names: diffusers would rename only its attention projections', and its
            # UNet loader reads a file of mixed names by its first key, silently dropping the other kind. A
            # text encoder's take diffusers' own: its loader finds peft's only on attention projections, so
            # adapters on other layers alone (--lora_text_encoder_modules fc1) would not load.
            # (the vocabulary is never resized, so no embedding table travels: peft's check of that warned)
            # transformers 5's CLIPTextModel has no `text_model.` level; files keep it, as transformers 4 and
            # ComfyUI read them (diffusers strips it again where the model has none)
            adapters = get_peft_model_state_dict(model, save_embedding_layers=False)
            if name != "unet":
                adapters = {re.sub(r"^encoder\.", "text_model.encoder.", k)
                            .replace(".lora_A.", ".lora_linear_layer.down.")
                            .replace(".lora_B.", ".lora_linear_layer.up."): v for k, v in adapters.items()}
            layers[f"{name}_lora_layers"] = adapters
            # the adapter config (alpha above all) travels in the file, so loaders scale it as trained
            metadata[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
        out.mkdir(parents=True, exist_ok=True)
        type(pipe).save_lora_weights(out, **layers, **metadata, safe_serialization=True)
        if cfg.lora_format == "kohya":
            write_kohya_lora(out / LORA_WEIGHTS, out / "lora_kohya.safetensors", cfg)


def strategy_for(cfg: TrainConfig) -> FullFineTune | LoRAFineTune:
    return LoRAFineTune() if cfg.lora else FullFineTune()


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def cast_frozen_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Frozen weights to the autocast precision, for memory and speed; trained ones (a full fine-tune's
    or LoRA's adapters) stay float32, which the optimizer's small updates need. Parameters only: the
    diffusers and CLIP models trained here hold no floating-point buffers."""
    for param in module.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)
