"""What `dreambooth train` writes, and reading it back. A full fine-tune writes a diffusers pipeline
folder; a LoRA run, only the adapters (diffusers' `pytorch_lora_weights.safetensors`), loaded onto the
base model its record names. Both keep the run's resolved config beside the weights."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dreambooth.errors import ModelError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

CONFIG_FILE = "dreambooth_config.yaml"  # the resolved config: what `generate` and `batch` read back
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name, which its loaders look for


def training_record(model: Path) -> dict:
    """The resolved config `dreambooth train` saved with the model ({} for models from elsewhere)."""
    config_file = model / CONFIG_FILE
    return (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}


def is_lora_folder(model: Path) -> bool:
    return (model / LORA_WEIGHTS).is_file() and not (model / "model_index.json").is_file()


def lora_base(lora_dir: Path, base: str | Path | None = None) -> Path:
    """The base model a LoRA folder loads onto, checked: `base` (--base), or the one recorded at training."""
    from dreambooth.models import check_model_folder  # diffusers and transformers: only when loading

    record = training_record(lora_dir)
    option = "--base"
    if base is None:
        base, option = record.get("pretrained_model_name_or_path"), f"the base model of LoRA {lora_dir} (or pass --base)"
        if not base:
            raise ModelError(f"{lora_dir}: LoRA weights without {CONFIG_FILE}; pass the base model with --base")
        if not Path(base).expanduser().is_dir():
            raise ModelError(f"{lora_dir} is a LoRA on {base}, which is gone; pass the base model with --base FOLDER")
    # pickled weights only with --allow_pickle typed for this run: a LoRA folder from elsewhere could
    # record allow_pickle to have its base's .bin read
    return check_model_folder(base, option=option)


def load_trained(model: Path, base: str | Path | None = None) -> "DiffusionPipeline":
    """A pipeline folder, or a LoRA folder on its base model (`base`, or the one recorded at training)."""
    from dreambooth.models import load_pipeline

    if is_lora_folder(model):
        base = lora_base(model, base)
        pipe = load_pipeline(base)
        # diffusers logs the error below whole and peft warns before it: heard only if the adapters load
        loader_log = logging.getLogger("diffusers.loaders.peft")
        level = loader_log.level
        loader_log.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe.load_lora_weights(model, weight_name=LORA_WEIGHTS)
        except RuntimeError as exc:
            if "size mismatch" not in str(exc):  # (out of GPU memory, say): not a matter of the base
                raise
            # torch's "size mismatch for <key>: copying ...": adapters of another architecture
            mismatch = str(exc).strip().splitlines()[-1].strip().split(": copying")[0]
            raise ModelError(f"{model}: its LoRA does not fit the base model {base} ({mismatch}); pass the "
                             "--base it was trained on") from None
        finally:
            loader_log.setLevel(level)
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return pipe
    return load_pipeline(model)


def is_model_folder(path: Path) -> bool:
    """A diffusers pipeline folder or a LoRA folder `dreambooth train` wrote."""
    return (path / "model_index.json").is_file() or (path / LORA_WEIGHTS).is_file()
