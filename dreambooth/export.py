"""Writing the personalized model: a diffusers pipeline folder, its model card and config."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from dreambooth.atomic import fsync, fsync_tree, removed_on_failure, save_file_atomic, umask_modes
from dreambooth.config import TrainConfig, fill_prompt, from_dict
from dreambooth.errors import ConfigError, ModelError
from dreambooth.models import Components, load_sampling_scheduler
from dreambooth.outputs import CONFIG_FILE, LORA_WEIGHTS, is_lora_folder, load_trained, lora_base, training_record

# kohya-ss `ss_base_model_version` (a v-prediction SD 1.x or 2.x adds "_v"); with `ss_v2` it is how A1111
# files a LoRA under SD 1, SD 2 or SDXL
KOHYA_BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def pipeline_from(parts: Components, unet, text_encoders: list, vae=None) -> DiffusionPipeline:
    """A sampling pipeline (SD or SDXL) around the given, possibly fine-tuned, UNet and text encoders."""
    common = dict(vae=vae or parts.vae, unet=unet, scheduler=load_sampling_scheduler(parts.path),
                  text_encoder=text_encoders[0], tokenizer=parts.tokenizers[0])
    if parts.is_sdxl:
        # the base's own choice of negative conditioning for an empty prompt (zeros, or the encoded "")
        index = json.loads((parts.path / "model_index.json").read_text())
        pipe = StableDiffusionXLPipeline(**common, text_encoder_2=text_encoders[1], tokenizer_2=parts.tokenizers[1],
                                         force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True))
    else:
        pipe = StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scalar_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config with only scalar values, as TensorBoard's hparams need."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.to_dict().items()}


@contextlib.contextmanager
def staged(out: Path):
    """A staging folder in `out` to write a model into: published into `out` if the block succeeds,
    deleted at once if it fails (a full disk gets its space back; `out` keeps what it held)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # a crashed write's
    with removed_on_failure(staging, writing=out):
        yield staging
    publish(staging, out)


def publish(staging: Path, out: Path) -> None:
    """Move a fully written model from `staging` into `out` so that a crash never leaves a folder that
    looks complete: the files loaders look for first go out first and come back last, the config
    (what `dreambooth batch` takes as "finished") the very last."""
    markers = ("model_index.json", CONFIG_FILE)
    umask_modes(staging)
    fsync_tree(staging)
    for name in markers:
        (out / name).unlink(missing_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: markers.index(p.name) + 1 if p.name in markers else 0)
    for entry in entries:
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
    fsync(out)  # the renames; what they moved was flushed in staging


def write_card_and_config(out: Path, cfg: TrainConfig, instance_prompt: str, class_prompt: str,
                          best_step: int | None = None) -> None:
    """The resolved config (what `generate` reads back, and `train --config` runs again) and the model card,
    beside the weights. A resume's `--resume_from_checkpoint` is left out: the run it records starts afresh;
    and `--overwrite_output_dir`, a permission for that run's folder, not for a run of the record's."""
    cfg = dataclasses.replace(cfg.with_absolute_paths(), resume_from_checkpoint=None, overwrite_output_dir=False)
    cfg.save(out / CONFIG_FILE)
    (out / "README.md").write_text(model_card(cfg, instance_prompt, class_prompt, best_step))


def model_card(cfg: TrainConfig, instance_prompt: str, class_prompt: str, best_step: int | None = None) -> str:
    """A Hugging Face-style model card: YAML front matter, then what was trained and how; with `best_step`,
    of the model `--keep_best` saved at that step into the run's `best/` (the config is the run's)."""
    folder = f"{cfg.output_dir}/best" if best_step else cfg.output_dir
    front = {
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["dreambooth", "text-to-image", "stable-diffusion"],
        "base_model": cfg.pretrained_model_name_or_path,
        "instance_prompt": instance_prompt,
    }
    prior = (f"on, lambda = {cfg.prior_loss_weight}, {cfg.num_class_images} class images for "
             f"\"{class_prompt}\"" if cfg.with_prior_preservation else "off")
    rows = [
        ("base model", cfg.pretrained_model_name_or_path), ("identifier", cfg.identifier or "none named (a literal instance prompt)"),
        ("class noun", cfg.class_noun or "none named (literal prompts)"), ("instance prompt", instance_prompt), ("class prompt", class_prompt),
        ("prior preservation", prior),
        ("steps", f"{best_step}, the best-scoring of {cfg.max_train_steps} (best.json)" if best_step else cfg.max_train_steps),
        ("learning rate", cfg.learning_rate),
        ("batch size", cfg.train_batch_size), ("resolution", cfg.resolution),
        ("text encoder trained", cfg.train_text_encoder), ("seed", cfg.seed),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if cfg.lora:
        load = (f'pipe = DiffusionPipeline.from_pretrained("{cfg.pretrained_model_name_or_path}")\n'
                f'pipe.load_lora_weights("{folder}")')
    else:
        load = f'pipe = DiffusionPipeline.from_pretrained("{folder}")'
    lines = "\n".join(f"{k}: {json.dumps(v)}" for k, v in front.items())
    # a literal instance prompt may name no identifier the record could fill in
    generate_prompt = "a {identifier} {class_noun}" if cfg.identifier and cfg.class_noun else instance_prompt
    return f"""---
{lines}
---

# DreamBooth: {instance_prompt}

Fine-tuned with [DreamBooth](https://arxiv.org/abs/2208.12242) by the `dreambooth` toolkit.

| setting | value |
|---|---|
{table}

```python
from diffusers import DiffusionPipeline
{load}
image = pipe("{instance_prompt} on the beach").images[0]
```

or `dreambooth generate --model {folder} --prompt "{generate_prompt} on the beach"`.
The full resolved configuration is in `{CONFIG_FILE}`.
"""


def kohya_key(diffusers_key: str, ldm_unet: Callable[[str], str | None] | None = None) -> str:
    """`unet.<module>.lora_A.weight` -> `lora_unet_<module_with_underscores>.lora_down.weight` (kohya/A1111);
    `lora_linear_layer.down`/`up` (diffusers' text-encoder names) likewise.

    kohya trains SD 1.x/2.x on the diffusers UNet but SDXL on the original (SGM) one, so SDXL's UNet
    modules take their LDM names (pass `ldm_unet`, see `single_file.unet_namer`) and its two text
    encoders become `te1` and `te2`.
    """
    component, rest = diffusers_key.split(".", 1)
    for marker, kind in ((".lora_A.", "lora_down"), (".lora_B.", "lora_up"),  # peft's names, then diffusers'
                         (".lora_linear_layer.down.", "lora_down"), (".lora_linear_layer.up.", "lora_up")):
        if marker in rest:
            module, tail = rest.split(marker)
            break
    else:
        raise ModelError(f"{diffusers_key}: not a LoRA weight; the kohya file cannot name it")
    if component == "unet":
        prefix = "lora_unet_"
        if ldm_unet is not None:
            ldm = ldm_unet(module)
            if ldm is None:
                raise ModelError(f"{diffusers_key}: this UNet module has no name in the original SDXL layout")
            module = ldm
    else:  # text encoder modules live under CLIPTextModel.text_model in kohya's naming
        encoder = "te" if ldm_unet is None else {"text_encoder": "te1", "text_encoder_2": "te2"}[component]
        prefix, module = f"lora_{encoder}_", "text_model." + module.removeprefix("text_model.")
    return f"{prefix}{module.replace('.', '_')}.{kind}.{tail}"


def write_kohya_lora(diffusers_file: Path, out_file: Path, cfg: TrainConfig, half: bool = False) -> None:
    """Rewrite a diffusers LoRA file in the kohya-ss layout that AUTOMATIC1111 and ComfyUI load:
    renamed keys, one `alpha` scalar per module, and `ss_*` metadata (the weights in fp16 with `half`)."""
    from safetensors.torch import load_file

    from dreambooth.single_file import component_config, model_family, modelspec, predicts_v, unet_namer

    base = Path(cfg.pretrained_model_name_or_path).expanduser()
    family = model_family(base)
    ldm_unet = unet_namer(component_config(base, "unet")) if family == "sdxl" else None
    version = KOHYA_BASE_VERSION[family]
    if family != "sdxl" and predicts_v(base):
        version += "_v"
    alpha = float(cfg.resolved_lora_alpha)
    tensors = {}
    for key, value in load_file(diffusers_file).items():
        new_key = kohya_key(key, ldm_unet)
        tensors[new_key] = (value.half() if half else value).contiguous()
        tensors[new_key.split(".")[0] + ".alpha"] = torch.tensor(alpha)
    # A1111 shows the output name and comment; the comment carries the trigger words
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(cfg.lora_rank),
                "ss_network_alpha": str(alpha), "ss_output_name": Path(cfg.output_dir).name,
                "ss_base_model_version": version, "ss_v2": str(family == "sd2"),
                "ss_training_comment": f"dreambooth: {fill_prompt(cfg.instance_prompt, cfg.identifier, cfg.class_noun)}",
                **modelspec(base, Path(cfg.output_dir).name, cfg.to_dict(), lora=True)}
    save_file_atomic(tensors, out_file, metadata)


def export_kohya_lora(lora_dir: Path, out_file: Path, base: str | Path | None = None, half: bool = False) -> Path:
    """A LoRA folder's adapters as the kohya-ss file `--lora_format kohya` writes at training, for a run
    trained without it: the record beside the adapters says how (rank, alpha, prompt); the base model
    (recorded, or `base`) which family's names to use."""
    from dreambooth.single_file import check_output_file

    check_output_file(out_file)
    record = training_record(lora_dir)
    if not record:
        raise ModelError(f"--model {lora_dir}: no {CONFIG_FILE}, which says how the adapters were trained (alpha, "
                         "prompt); export LoRA folders that `dreambooth train` wrote")
    options = {k: v for k, v in record.items() if k in TrainConfig.__dataclass_fields__}
    cfg = from_dict({**options, "pretrained_model_name_or_path": str(lora_base(lora_dir, base))},
                    source=str(lora_dir / CONFIG_FILE))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_kohya_lora(lora_dir / LORA_WEIGHTS, out_file, cfg, half)
    return out_file


def merge_lora(lora_dir: Path, out: Path, scale: float = 1.0, base: Path | None = None) -> Path:
    """Fold a LoRA folder into its base model's weights (W + scale * B A) and save a full pipeline."""
    if not lora_dir.is_dir():
        raise ModelError(f"--lora {lora_dir}: no such folder; pass a folder written by `dreambooth train --lora`")
    if (lora_dir / "model_index.json").is_file():
        raise ModelError(f"--lora {lora_dir}: a full pipeline already, with nothing to merge; use it as it is")
    if not is_lora_folder(lora_dir):
        raise ModelError(f"--lora {lora_dir}: no {LORA_WEIGHTS}; pass a folder written by `dreambooth train --lora`")
    base = lora_base(lora_dir, base)
    for name, folder in (("base model", base), ("LoRA", lora_dir)):
        if out.resolve() == folder.resolve():
            raise ConfigError(f"--output {out} is the {name}'s folder; merge into another folder")
    if out.is_dir() and any(out.iterdir()) and "merged_from" not in training_record(out):
        # an earlier merge may be redone (another --scale); anything else would be overwritten or mixed in
        raise ConfigError(f"--output {out} holds files that no earlier merge wrote; merge into a new or empty folder")
    pipe = load_trained(lora_dir, base)
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    with staged(out) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        # the LoRA's record (identifier, class noun, how it trained), saying what this folder now is
        record = training_record(lora_dir)
        if record:
            merged = {**record, "output_dir": str(out.resolve()), "merged_from": str(lora_dir.resolve()),
                      "merge_scale": scale}
            (staging / CONFIG_FILE).write_text(yaml.safe_dump(merged, sort_keys=False))
        (staging / "README.md").write_text(
            f"# DreamBooth LoRA, merged\n\n`{lora_dir.resolve()}` folded into `{base}` at scale {scale}: a full "
            f"pipeline, no LoRA to load.\n\n```python\nfrom diffusers import DiffusionPipeline\n"
            f'pipe = DiffusionPipeline.from_pretrained("{out.resolve()}")\n```\n\nHow the LoRA was trained: '
            f"`{CONFIG_FILE}`.\n")
    return out
