"""Up-front validation of a run: every problem found in one pass, before any heavy work.

`dreambooth train --check` prints this report and stops; `train` runs it first and refuses to start
while any problem remains. Only cheap work happens here: folder listings, image decoding, the
tokenizer (not the model weights).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreambooth.config import TrainConfig, fill_prompt, identifier_in_prompts
from dreambooth.data.images import scan_images
from dreambooth.errors import DreamBoothError
from dreambooth.models import check_model_folder, native_resolution

GIB = 2**30


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"problem: {p}" for p in self.problems] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines + self.notes) or "ok"

    def raise_if_problems(self) -> None:
        if self.problems:
            count = len(self.problems)
            raise DreamBoothError(f"{count} problem{'s' * (count > 1)} found before training:\n  "
                                  + "\n  ".join(self.problems))


def _weights_bytes(folder: Path, parts: tuple[str, ...]) -> int:
    return sum(f.stat().st_size for part in parts for f in (folder / part).glob("*.safetensors"))


def _check_images(folder: str, role: str, min_side: int | None, report: Report) -> int:
    try:
        scan = scan_images(Path(folder).expanduser(), role=role, **({"min_side": min_side} if min_side else {}))
        if role == "instance":
            scan.require()
    except DreamBoothError as exc:
        report.problems.append(str(exc))
        return 0
    report.warnings.extend(scan.warnings)
    report.notes.append(scan.summary())
    return len(scan.images)


def _check_prompts(cfg: TrainConfig, model: Path, report: Report) -> None:
    from transformers import CLIPTokenizer

    from dreambooth.identifier import check_identifier

    literal = "{identifier}" not in cfg.instance_prompt and cfg.identifier is None
    if literal and identifier_in_prompts(cfg.instance_prompt, fill_prompt(cfg.class_prompt, None, cfg.class_noun)) is None:
        report.problems.append(f"--instance_prompt {cfg.instance_prompt!r}: cannot tell which word is the identifier; "
                               "pass it as --identifier (e.g. --identifier sks)")
    instance = fill_prompt(cfg.instance_prompt, cfg.identifier or "[V]", cfg.class_noun)
    if instance == fill_prompt(cfg.class_prompt, cfg.identifier, cfg.class_noun):
        report.problems.append(f"--instance_prompt {instance!r} equals the class prompt; it needs the identifier")
    if cfg.identifier:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", local_files_only=True)
        report.warnings.extend(f"--identifier {cfg.identifier!r}: {w}" for w in check_identifier(tokenizer, cfg.identifier))


def _check_runtime(cfg: TrainConfig, report: Report) -> None:
    cuda = torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and not cuda:
        report.problems.append("--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    if cfg.use_8bit_adam and not cuda:
        report.problems.append("--use_8bit_adam needs a CUDA GPU (bitsandbytes); drop it on this machine")


def _check_disk(cfg: TrainConfig, model: Path, num_user_class: int, report: Report) -> None:
    """Class images (~1 byte/pixel as PNG) and checkpoints must fit. A checkpoint holds the trained
    models whole (LoRA: the adapters only) plus Adam's two moments of what trains."""
    trained = ("unet", "text_encoder", "text_encoder_2") if cfg.train_text_encoder else ("unet",)
    weights = _weights_bytes(model, trained)
    adapters = weights // 50  # LoRA adapters are a few percent of the weights at most
    per_checkpoint = 3 * (adapters if cfg.lora else weights)
    kept = cfg.checkpoints_total_limit or (1 + cfg.max_train_steps // cfg.checkpointing_steps)
    final = adapters if cfg.lora else _weights_bytes(model, ("unet", "text_encoder", "text_encoder_2", "vae"))
    need_out = per_checkpoint * kept + final
    resolution = cfg.resolution or 512
    need_cache = 0
    if cfg.with_prior_preservation and cfg.prior_mode == "images":
        need_cache = max(0, cfg.num_class_images - num_user_class) * resolution * resolution * 3 // 2
    for what, where, need in (("output", cfg.output_dir, need_out), ("class-image cache", cfg.class_cache_dir, need_cache)):
        folder = Path(where).expanduser()
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if need > free:
            report.problems.append(f"{where}: the {what} needs ~{need / GIB:.1f} GiB but {free / GIB:.1f} GiB is free; "
                                   "free space or choose another folder")


def preflight(cfg: TrainConfig) -> Report:
    """Check the model folder, images, prompts, options and free disk; collect everything found."""
    report = Report()
    model, resolution = None, cfg.resolution
    try:
        model = check_model_folder(cfg.pretrained_model_name_or_path, cfg.allow_pickle)
        resolution = resolution or native_resolution(model)
    except DreamBoothError as exc:
        report.problems.append(str(exc))
    _check_images(cfg.instance_data_dir, "instance", resolution, report)
    user_class = Path(cfg.class_data_dir).expanduser() if cfg.class_data_dir else None
    num_user_class = _check_images(str(user_class), "class", resolution, report) if user_class and user_class.exists() else 0
    if cfg.resume_from_checkpoint and cfg.resume_from_checkpoint != "latest":
        path = Path(cfg.resume_from_checkpoint).expanduser()
        if not path.exists() and not (Path(cfg.output_dir).expanduser() / cfg.resume_from_checkpoint).exists():
            report.problems.append(f"--resume_from_checkpoint: {path} does not exist")
    _check_runtime(cfg, report)
    if model is not None:
        _check_prompts(cfg, model, report)
        _check_disk(cfg, model, num_user_class, report)
    return report
