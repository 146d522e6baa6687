"""Up-front validation of a run: every problem found in one pass, before any heavy work.

`dreambooth train --check` prints this report and stops; `train` runs it first and refuses to start
while any problem remains. Only cheap work happens here: folder listings, image decoding, the
tokenizer (not the model weights).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreambooth import checkpoints
from dreambooth.class_images import ClassImageSpec, cache_key, cached_count, drawing_precision
from dreambooth.config import FULL_LEARNING_RATE, TrainConfig, changed_settings, fill_prompt, literal_identifier
from dreambooth.data.images import ImageScan, scan_images
from dreambooth.errors import DreamBoothError, ModelError
from dreambooth.models import check_model_folder, native_resolution
from dreambooth.outputs import CONFIG_FILE
from dreambooth.single_file import weight_files

GIB = 2**30
MODEL_LIBRARIES = ("diffusers", "transformers")  # where a model_index.json may name its components' classes
ADAPTABLE = (torch.nn.Linear, torch.nn.Conv2d)  # what peft adapts and diffusers' LoRA loaders read back


@dataclass(frozen=True)
class DiskNeed:
    """Bytes a run will write under `folder`: `lasting` stays after the run; `passing` (checkpoints
    deleted at the end) is freed, so runs one after another need only the largest, and runs side by
    side (different `share`s of a batch) the largest of each share. Needs with the same `shared` key
    (one set of class images) are counted once."""

    what: str
    folder: str
    lasting: int
    passing: int = 0
    shared: tuple | None = None
    share: int = 0


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    disk: list[DiskNeed] = field(default_factory=list)

    def text(self) -> str:
        """Warnings and notes (the problems are the error `raise_if_problems` raises)."""
        return "\n".join([f"warning: {w}" for w in self.warnings] + self.notes) or ("ok" if not self.problems else "")

    def raise_if_problems(self) -> None:
        if self.problems:
            count = len(self.problems)
            raise DreamBoothError(f"{count} problem{'s' * (count > 1)} found before training:\n  "
                                  + "\n  ".join(self.problems))


def _weights_bytes(folder: Path, parts: tuple[str, ...]) -> int:
    """Full-precision weights of the parts the folder has (shards summed, fp16 variant copies not);
    a part with pickled weights only (let in by --allow_pickle) counts its .bin files."""
    total = 0
    for part in (p for p in parts if (folder / p).is_dir()):
        try:
            files = weight_files(folder, part)
        except ModelError:
            files = list((folder / part).glob("*.bin"))
        total += sum(f.stat().st_size for f in files)
    return total


def _check_images(folder: str, role: str, min_side: int | None, report: Report) -> ImageScan | None:
    """The photos' problems and warnings; with no `min_side` (the model folder's problem is reported) their
    sizes are not judged: against a guessed resolution they would be warned about before the real error."""
    try:
        scan = scan_images(Path(folder).expanduser(), role=role, min_side=min_side or 1)
        if role == "instance":
            scan.require()
    except DreamBoothError as exc:
        report.problems.append(str(exc))
        return None
    report.warnings.extend(scan.warnings)
    report.notes.append(scan.summary())
    return scan


def _check_prompts(cfg: TrainConfig, model: Path, report: Report) -> None:
    from transformers import CLIPTokenizer

    from dreambooth.identifier import check_identifier

    instance = fill_prompt(cfg.instance_prompt, cfg.identifier or "[V]", cfg.class_noun)
    if instance == fill_prompt(cfg.class_prompt, cfg.identifier, cfg.class_noun):
        report.problems.append(f"--instance_prompt {instance!r} equals the class prompt; it needs the identifier")
    literal = "{identifier}" not in cfg.instance_prompt
    if cfg.identifier and literal and not re.search(rf"(?<!\w){re.escape(cfg.identifier)}(?!\w)", cfg.instance_prompt,
                                                    re.IGNORECASE):  # CLIP lowercases both
        # the run would train the prompt's words and record another (which `generate "{identifier}"` prompts)
        report.problems.append(f"--identifier {cfg.identifier!r} is not a word of --instance_prompt "
                               f"'{cfg.instance_prompt}', which trains the words it has; put {{identifier}} in the "
                               "prompt, or name the word of it that names your subject")
    identifier = cfg.identifier or literal_identifier(cfg)  # a literal prompt's is checked as a named one
    if identifier:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", local_files_only=True)
        named = f"--identifier {identifier!r}" if cfg.identifier else f"the identifier of --instance_prompt, {identifier!r}"
        report.warnings.extend(f"{named}: {w}" for w in check_identifier(tokenizer, identifier))
        if cfg.class_noun and identifier.lower() == cfg.class_noun.lower():
            report.warnings.append(f"{named} is the class noun itself: the subject gets no word of its own, and prior "
                                   "preservation pulls that word back to the class; use a rare token")


def _modules(model: Path, component: str, library: str, class_name: str) -> dict[str, torch.nn.Module]:
    """A component's modules by name, built from its config on the meta device (no weights read). The
    class is looked up in diffusers or transformers only: its name comes from the model's own files, and
    importing any module they named would run its code."""
    cls = getattr(importlib.import_module(library), class_name, None) if library in MODEL_LIBRARIES else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelError(f"{model / 'model_index.json'}: its {component} is {library}.{class_name}, not a diffusers "
                         "or transformers model class; pass a Stable Diffusion pipeline folder")
    with torch.device("meta"):
        built = (cls.from_config(cls.load_config(model / component)) if library == "diffusers"
                 else cls(cls.config_class.from_pretrained(model / component)))
    return dict(built.named_modules())


def _check_lora_targets(cfg: TrainConfig, model: Path, report: Report) -> None:
    """Each adapter target names a layer LoRA can adapt (peft matches `name` or `*.name`): a typo would
    otherwise be dropped silently, or stop the run after the class images."""
    listed = json.loads((model / "model_index.json").read_text())
    encoders = [e for e in ("text_encoder", "text_encoder_2") if e in listed] if cfg.train_text_encoder else []
    for component, option, targets in [("unet", "lora_target_modules", cfg.lora_target_modules),
                                       *((e, "lora_text_encoder_modules", cfg.lora_text_encoder_modules) for e in encoders)]:
        try:
            modules = _modules(model, component, *listed[component])
        except ModelError as exc:
            report.problems.append(str(exc))
            return
        adaptable = {n: m for n, m in modules.items() if isinstance(m, ADAPTABLE)}
        examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in adaptable if "." in n})[:10])
        for target in targets:
            found = [m for n, m in modules.items() if n == target or n.endswith("." + target)]
            if not found:
                report.problems.append(f"--{option} {target}: no layer of the {component} is called that; "
                                       f"its layers include {examples}")
            elif not all(isinstance(m, ADAPTABLE) for m in found):
                report.problems.append(f"--{option} {target}: matches a layer of type {type(found[0]).__name__}, which "
                                       f"LoRA cannot adapt; name its linear or conv layers ({examples})")


def _check_a1111_attention(cfg: TrainConfig, model: Path, report: Report) -> None:
    """AUTOMATIC1111 fuses the attention of an OpenCLIP text encoder (SD 2.x's, SDXL's second) and applies
    a kohya file's adapters there only if q, k, v and out all have one: with fewer it skips them in silence."""
    from dreambooth.single_file import model_family

    attention = ("q_proj", "k_proj", "v_proj", "out_proj")
    named = [m for m in attention if m in cfg.lora_text_encoder_modules]
    if cfg.lora_format != "kohya" or not cfg.train_text_encoder or not named or len(named) == len(attention):
        return
    if (family := model_family(model)) in ("sd2", "sdxl"):
        encoder = "SD 2.x's text encoder" if family == "sd2" else "SDXL's second text encoder"
        report.warnings.append(f"--lora_text_encoder_modules names {', '.join(named)} of {', '.join(attention)}: "
                               f"AUTOMATIC1111 applies the kohya file's adapters on the attention of {encoder} only "
                               "with all four, and skips these in silence; name all four for that file to work there")


def _check_scheduler(model: Path, report: Report) -> None:
    """Training is DDPM-style (epsilon or v targets on the model's beta schedule); a model trained otherwise
    would be silently trained on a schedule it never saw."""
    config_file = model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    kind = config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        report.problems.append(f"{config_file}: prediction_type {kind!r}; training supports epsilon and v_prediction")
    if "EDM" in config.get("_class_name", ""):
        report.problems.append(f"{config_file}: {config['_class_name']}, an EDM-trained model (such as Playground "
                               "v2.5); training here is DDPM-style, which such a model was not trained with")


def _check_learning_rate(cfg: TrainConfig, model: Path, report: Report) -> None:
    """A diffusers LoRA recipe pasted without --lora (its scripts have none) would fully fine-tune a real
    model at a LoRA's rate. Real models only: the toy world's small UNet trains well at such rates."""
    if not cfg.lora and cfg.learning_rate >= 10 * FULL_LEARNING_RATE and _weights_bytes(model, ("unet",)) > GIB:
        report.warnings.append(f"--learning_rate {cfg.learning_rate:g} for a full fine-tune of every UNet weight "
                               f"is a LoRA's rate: add --lora to train adapters, or use about {FULL_LEARNING_RATE:g}")


def _check_runtime(cfg: TrainConfig, report: Report) -> None:
    cuda = torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and not cuda:
        report.problems.append("--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    if cfg.use_8bit_adam and not cuda:
        report.problems.append("--use_8bit_adam needs a CUDA GPU (bitsandbytes); drop it on this machine")


def _check_eval_encoder(cfg: TrainConfig, report: Report) -> None:
    """--eval_every first scores at step N: load its encoder now (the evaluator reuses it), so a wrong
    name or a missing package fails before training instead of after N steps."""
    from dreambooth.evaluation.encoders import load_encoder

    try:
        load_encoder(cfg.eval_encoder, option="--eval_encoder")
    except DreamBoothError as exc:
        report.problems.append(str(exc))


def _bytes_under(paths: list[Path]) -> int:
    """Bytes of the files under `paths`; a file another process deletes meanwhile (a batch shard pruning
    its checkpoints while this one checks) counts as gone."""
    total = 0
    for path in paths:
        for folder, _, files in os.walk(path):  # a folder deleted meanwhile is skipped
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(folder, name)).st_size
    return total


def disk_needs(cfg: TrainConfig, model: Path, num_user_class: int) -> list[DiskNeed]:
    """Class images (~1 byte/pixel as PNG) and checkpoints must fit. A checkpoint holds the trained
    models whole (LoRA: the adapters only) plus Adam's two moments of what trains; checkpoints a
    resumed run already wrote are counted as written."""
    trained = ("unet", "text_encoder", "text_encoder_2") if cfg.train_text_encoder else ("unet",)
    weights = _weights_bytes(model, trained)
    adapters = weights // 50  # LoRA adapters are a few percent of the weights at most
    per_checkpoint = 3 * (adapters if cfg.lora else weights)
    # one every checkpointing_steps before the last step (the final model is no checkpoint); one more at a
    # time, as a new one is written whole before the oldest is deleted, and as Ctrl-C saves one
    periodic = (cfg.max_train_steps - 1) // cfg.checkpointing_steps
    at_once = 1 + min(cfg.checkpoints_total_limit or periodic, periodic)
    written = _bytes_under(checkpoints.complete_checkpoints(Path(cfg.output_dir).expanduser()))
    to_checkpoint = max(0, per_checkpoint * at_once - written)
    final = adapters if cfg.lora else _weights_bytes(model, ("unet", "text_encoder", "text_encoder_2", "vae"))
    final *= 2 if cfg.keep_best else 1  # --keep_best keeps a second model, the best step's, in OUT/best
    if cfg.keep_checkpoints:
        needs = [DiskNeed("output", cfg.output_dir, lasting=final + to_checkpoint)]
    else:
        needs = [DiskNeed("output", cfg.output_dir, lasting=final, passing=to_checkpoint)]
    if cfg.class_images_needed:
        resolution = native_resolution(model)  # class images are drawn at the model's own size, as in diffusers
        prompt = fill_prompt(cfg.class_prompt, cfg.identifier, cfg.class_noun)
        cache = Path(cfg.class_cache_dir).expanduser()
        spec = ClassImageSpec.for_model(model, prompt, resolution, cfg.class_inference_steps,
                                        cfg.class_guidance_scale, cfg.seed, drawing_precision(cfg.prior_generation_precision))
        to_draw = max(0, cfg.num_class_images - num_user_class)
        images = (to_draw - cached_count(spec, cache, to_draw)) * resolution * resolution * 3 // 2
        # runs that share these images count them once: the same cache, model folder and cache key (its
        # settings; the model's content is named by its folder here, not fingerprinted again)
        same_images = (str(cache.resolve()), str(model.resolve()), cache_key(spec, fingerprint=""))
        needs.append(DiskNeed("class-image cache", cfg.class_cache_dir, lasting=images, shared=same_images))
    return needs


def _existing(folder: str) -> Path:
    path = Path(folder).expanduser()
    while not path.exists():
        path = path.parent
    return path


def _size(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.1f} GiB" if num_bytes >= GIB / 10 else f"{num_bytes / 2**20:.1f} MiB"


def disk_problems(needs: list[DiskNeed]) -> list[str]:
    """One problem per disk whose free space is less than what the needs on it add up to."""
    by_disk: dict[int, list[DiskNeed]] = {}
    for need in needs:
        by_disk.setdefault(_existing(need.folder).stat().st_dev, []).append(need)
    problems = []
    for group in by_disk.values():
        smallest_first = sorted(group, key=lambda n: n.lasting)  # of needs that share a key, the largest stays
        counted = list({need.shared or id(need): need for need in smallest_first}.values())
        passing_by_share: dict[int, int] = {}
        for need in counted:
            passing_by_share[need.share] = max(passing_by_share.get(need.share, 0), need.passing)
        total = sum(n.lasting for n in counted) + sum(passing_by_share.values())
        free = shutil.disk_usage(_existing(group[0].folder)).free
        if total <= free:
            continue
        folders = ", ".join(dict.fromkeys(f"{n.folder} ({n.what})" for n in group))
        keeping = any(n.what == "output" and n.passing == 0 for n in group)
        hint = "; keep_checkpoints false (--no_keep_checkpoints) deletes checkpoints once a model is saved"
        problems.append(f"{folders}: needs ~{_size(total)} but {_size(free)} is free; "
                        f"free space or choose another folder{hint if keeping else ''}")
    return problems


def _foreign_model_in(output_dir: Path, model: Path | None, lora: bool) -> str | None:
    """Publishing replaces the model files of `output_dir`: the base model's own folder, a model this tool
    did not train, or (for a LoRA, which writes no pipeline) a full model would be lost or left half."""
    if model is not None and output_dir.resolve() == model.resolve():
        return "it is the base model's folder, which the trained model would overwrite"
    if not (output_dir / "model_index.json").is_file():
        return None
    # a crash between the final save's last two renames leaves the model without its config: the run's own
    # checkpoints say the folder is ours
    if not (output_dir / CONFIG_FILE).is_file() and checkpoints.latest(output_dir) is None:
        return "it holds a model that dreambooth did not train, which the trained model would overwrite"
    if lora:
        return "it holds a full model of an earlier run, which a LoRA's adapters would leave half replaced"
    return None


def preflight(cfg: TrainConfig, check_disk: bool = True) -> Report:
    """Check the model folder, images, prompts, options and free disk; collect everything found.
    `report.disk` lists what the run will write, for a caller that sums several runs (check_disk=False)."""
    report = Report()
    model, resolution = None, cfg.resolution
    try:
        model = check_model_folder(cfg.pretrained_model_name_or_path, cfg.allow_pickle)
        resolution = resolution or native_resolution(model)
    except DreamBoothError as exc:
        report.problems.append(str(exc))
    photos = _check_images(cfg.instance_data_dir, "instance", resolution, report)
    user_class = Path(cfg.class_data_dir).expanduser() if cfg.class_data_dir else None
    class_scan = _check_images(str(user_class), "class", resolution, report) if user_class and user_class.exists() else None
    num_user_class = len(class_scan.images) if class_scan else 0
    output_dir = Path(cfg.output_dir).expanduser()
    if not (nearest := _existing(cfg.output_dir)).is_dir():
        report.problems.append(f"--output_dir {output_dir}: {nearest} is a file; choose another folder")
    elif problem := _foreign_model_in(output_dir, model, cfg.lora):
        report.problems.append(f"--output_dir {output_dir}: {problem}; choose another folder")
    if cfg.resume_from_checkpoint:
        try:
            checkpoint = checkpoints.named(output_dir, cfg.resume_from_checkpoint)
            step, recorded, recorded_photos = checkpoints.trained_with(checkpoint)
            if step > cfg.max_train_steps:  # it would be saved as it is, labelled with fewer steps than it had
                report.problems.append(f"--max_train_steps {cfg.max_train_steps}: {checkpoint} is at step {step} "
                                       "already; pass at least as many steps to train on from it")
            # training on for more steps is what a resume is often for; a run folder moved with its checkpoints
            # (a preempted machine's disk mounted elsewhere), or photos moved, are the same run: photos are
            # compared by content below
            movable = ("output_dir", "instance_data_dir") if recorded_photos is not None else ("output_dir",)
            if changed := changed_settings(cfg, recorded, str(checkpoint), ("max_train_steps", *movable)) if recorded else []:
                report.problems.append(f"--resume_from_checkpoint: {checkpoint} was trained with other settings "
                                       f"({'; '.join(changed)}); resume with those, or start afresh in another "
                                       "--output_dir")
            now, then = set(photos.digests) if photos else set(), set(recorded_photos or ())
            if photos and recorded_photos is not None and now != then:
                added, removed = len(now - then), len(then - now)
                report.problems.append(f"--instance_data_dir: its photos changed since {checkpoint} ({added} added or "
                                       f"edited, {removed} gone); resume with the photos it trained on, or start "
                                       "afresh in another --output_dir")
        except DreamBoothError as exc:
            report.problems.append(str(exc))
    elif cfg.overwrite_output_dir:  # the run deletes the earlier one's checkpoints first
        pass
    elif (earlier := checkpoints.latest(output_dir)) is not None:
        # a fresh run would prune its own first checkpoint against the earlier ones, and 'latest' would resume those
        report.problems.append(f"--output_dir {output_dir} holds {earlier.name} of an earlier run: add "
                               "--resume_from_checkpoint latest to go on with it, --overwrite_output_dir to start "
                               "afresh there, or choose another --output_dir")
    elif (output_dir / CONFIG_FILE).is_file():  # it would be lost at the end
        report.problems.append(f"--output_dir {output_dir} holds the finished model of an earlier run, which this run "
                               "would replace; choose another --output_dir, or pass --overwrite_output_dir")
    _check_runtime(cfg, report)
    if cfg.eval_every is not None:
        _check_eval_encoder(cfg, report)
    if model is not None:
        _check_prompts(cfg, model, report)
        _check_scheduler(model, report)
        _check_learning_rate(cfg, model, report)
        if cfg.lora:
            _check_lora_targets(cfg, model, report)
            _check_a1111_attention(cfg, model, report)
        report.disk = disk_needs(cfg, model, num_user_class)
        if check_disk:
            report.problems += disk_problems(report.disk)
    return report
