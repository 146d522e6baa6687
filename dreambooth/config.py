"""The one typed training config: every option, its default and its check live here.

Field names are those of diffusers' `examples/dreambooth/train_dreambooth.py` wherever that script
has the option, so its recipes (CLI flags or config keys) carry over unchanged. The CLI builds its
flags from these fields; a YAML/TOML file uses the same keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from dreambooth.errors import ConfigError

MixedPrecision = Literal["no", "fp16", "bf16"]
GenerationPrecision = Literal["no", "fp32", "fp16", "bf16"]  # diffusers' choices; "no" is its default
LRScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
FULL_LEARNING_RATE, LORA_LEARNING_RATE = 5e-6, 1e-4  # diffusers' full-fine-tune default; its SDXL LoRA script's
PATH_OPTIONS = ("pretrained_model_name_or_path", "instance_data_dir", "output_dir", "class_data_dir", "class_cache_dir")


def option(default: Any, help: str, *aliases: str) -> Any:
    """A config field with its CLI help text and extra flag spellings."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, "aliases": aliases})
    return field(default=default, metadata={"help": help, "aliases": aliases})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a DreamBooth run depends on (the resolved copy is saved beside the output)."""

    # --- what to personalize -------------------------------------------------------------------
    pretrained_model_name_or_path: str = option("", "base model: a local diffusers pipeline folder", "--model")
    instance_data_dir: str = option("", "folder with the 3-5 subject photos", "--instance-dir")
    output_dir: str = option("dreambooth-model", "where the personalized pipeline is written", "--output")
    class_noun: str | None = option(None, "the subject's class, e.g. 'dog'", "--class")
    identifier: str | None = option(None, "the rare-token identifier [V]; default: the tokenizer's best")
    instance_prompt: str = option("a {identifier} {class_noun}", "instance prompt template")
    class_prompt: str = option("a {class_noun}", "class prompt template")

    # --- class-specific prior preservation (paper, Sec. 4.2) ------------------------------------
    with_prior_preservation: bool = option(True, "add lambda x the denoising loss on class images")
    prior_loss_weight: float = option(1.0, "lambda, the prior loss weight")
    num_class_images: int = option(100, "class images to use (the paper used ~1000)")
    class_data_dir: str | None = option(None, "your own class images, counted before generated ones")
    class_cache_dir: str = option("~/.cache/dreambooth/class-images", "shared cache of generated class images")
    sample_batch_size: int = option(4, "batch size when generating class images")
    class_inference_steps: int = option(25, "sampler steps per generated class image")
    class_guidance_scale: float = option(7.5, "classifier-free guidance for class images")
    prior_generation_precision: GenerationPrecision | None = option(
        None, "precision class images are drawn in: fp32, fp16 or bf16 (unset or no: fp16 on a GPU, else fp32, as "
              "in diffusers)")

    # --- optimisation ----------------------------------------------------------------------------
    max_train_steps: int = option(400, "optimizer steps")
    learning_rate: float | None = option(None, "UNet learning rate; unset: 5e-6, or 1e-4 with --lora (whose "
                                         "adapters start at zero and need a larger step)")
    train_batch_size: int = option(1, "instance images per step (as many class images join them)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    lr_scheduler: LRScheduler = option("constant", "learning-rate schedule")
    lr_warmup_steps: int = option(0, "warm-up steps of the schedule")
    lr_num_cycles: int = option(1, "hard restarts of the cosine_with_restarts schedule")
    lr_power: float = option(1.0, "power of the polynomial schedule")
    scale_lr: bool = option(False, "multiply the learning rates by train_batch_size x gradient_accumulation_steps "
                                   "x the number of processes")
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_weight_decay: float = option(1e-2, "AdamW weight decay")
    adam_epsilon: float = option(1e-8, "Adam epsilon")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    use_8bit_adam: bool = option(False, "bitsandbytes 8-bit AdamW (CUDA only)")
    snr_gamma: float | None = option(None, "min-SNR weighting gamma (Hang et al. 2023); 5.0 is typical")
    noise_offset: float = option(0.0, "offset noise scale (0.05-0.1 helps very dark/bright images)")

    # --- text encoder ----------------------------------------------------------------------------
    train_text_encoder: bool = option(False, "fine-tune the text encoder as well")
    text_encoder_lr: float | None = option(None, "text-encoder learning rate (default: --learning_rate)")
    text_encoder_stop_step: int | None = option(None, "freeze the text encoder after this step")

    # --- LoRA (low-rank adapters via peft; the light variant) --------------------------------------
    lora: bool = option(False, "train LoRA adapters instead of all UNet weights")
    lora_rank: int = option(4, "LoRA rank r", "--rank")
    lora_alpha: float | None = option(None, "LoRA alpha (default: the rank, i.e. scale 1)")
    lora_dropout: float = option(0.0, "dropout on the LoRA branch")
    lora_target_modules: tuple[str, ...] = option(("to_q", "to_k", "to_v", "to_out.0"), "UNet modules given adapters")
    lora_text_encoder_modules: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "out_proj"),
                                                        "text-encoder modules given adapters (with --train_text_encoder)")
    lora_format: Literal["diffusers", "kohya"] = option("diffusers", "LoRA file layout: diffusers, or kohya (what AUTOMATIC1111 and ComfyUI load)")
    prior_mode: Literal["images", "prediction"] = option(
        "images", "prior target: class images (paper) or the frozen model's own prediction (LoRA only)")

    # --- data ------------------------------------------------------------------------------------
    resolution: int | None = option(None, "training resolution (default: the model's native size)")
    center_crop: bool = option(False, "center crop instead of random crop")
    random_flip: bool = option(False, "random horizontal flips")
    cache_latents: bool = option(True, "encode images with the frozen VAE once, not every step")

    # --- runtime ---------------------------------------------------------------------------------
    allow_tf32: bool = option(False, "TF32 matmuls on Ampere+ GPUs: faster, slightly less precise")
    allow_pickle: bool = option(False, "load pickled .bin weights (only from a source you trust)")
    seed: int = option(0, "seed for noise, timesteps, data order and class images")
    mixed_precision: MixedPrecision | None = option(
        None, "autocast precision: no, fp16 or bf16 (unset: `accelerate launch --mixed_precision` or "
              "`accelerate config`, else no)")
    gradient_checkpointing: bool = option(False, "trade compute for memory in the UNet")
    attention: Literal["sdpa", "default"] = option("sdpa", "attention kernel: PyTorch SDPA or diffusers' default")
    validation_prompts: tuple[str, ...] = option((), "prompts sampled every --validation_steps", "--validation_prompt")
    validation_steps: int = option(100, "sample validation prompts every N steps and at the last")
    num_validation_images: int = option(4, "images per validation prompt")
    inference_steps: int = option(25, "sampler steps for validation images")
    guidance_scale: float = option(7.5, "classifier-free guidance for validation images")
    eval_every: int | None = option(None, "score subject fidelity, PRES (and prompt fidelity) every N steps and the last")
    eval_encoder: str = option("efficientnet-lite0", "image encoder for --eval_every (see `dreambooth evaluate`)")
    eval_prompt_scorer: Literal["none", "toy-judge"] = option("none", "prompt-fidelity scorer for --eval_every")
    keep_best: bool = option(False, "with --eval_every: also save the best-scoring step to OUTPUT/best")
    checkpointing_steps: int = option(500, "save a resumable checkpoint every N steps")
    checkpoints_total_limit: int | None = option(2, "keep only the newest K checkpoints")
    keep_checkpoints: bool = option(True, "keep the checkpoints after the final model is saved; "
                                    "--no_keep_checkpoints deletes them, freeing their disk")
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoint folder", "--resume")
    overwrite_output_dir: bool = option(False, "let a fresh run replace the finished model of an earlier run in "
                                        "--output_dir (refused otherwise)")
    logging_dir: str = option("logs", "TensorBoard folder, inside output_dir")
    report_to: Literal["tensorboard", "none"] = option("tensorboard", "where metrics are logged")

    def __post_init__(self) -> None:
        if self.learning_rate is None:  # resolved here, so records and resume checks hold the rate used
            object.__setattr__(self, "learning_rate", LORA_LEARNING_RATE if self.lora else FULL_LEARNING_RATE)
        for name in ("lora_target_modules", "lora_text_encoder_modules"):  # "to_q,to_k" as diffusers' newer scripts
            names = tuple(m.strip() for spelled in getattr(self, name) for m in str(spelled).split(",") if m.strip())
            object.__setattr__(self, name, names)
        validate(self)

    @property
    def resolved_lora_alpha(self) -> float:
        """LoRA alpha; the default equals the rank, i.e. the adapters' output is scaled by 1."""
        return self.lora_rank if self.lora_alpha is None else self.lora_alpha

    @property
    def class_images_needed(self) -> bool:
        """Prior preservation as the paper does it, on generated class images (not on the frozen model's
        own prediction, --prior_mode prediction)."""
        return self.with_prior_preservation and self.prior_mode == "images"

    @property
    def text_encoder_learning_rate(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    def with_absolute_paths(self) -> "TrainConfig":
        """Local paths made absolute: a saved record (a LoRA's base above all) is then found from any folder."""
        return dataclasses.replace(self, **{name: str(Path(getattr(self, name)).expanduser().resolve())
                                            for name in PATH_OPTIONS if getattr(self, name)})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def fill_prompt(template: str, identifier: str | None, class_noun: str | None) -> str:
    """Substitute `{identifier}` and `{class_noun}`; other braces are left alone."""
    return template.replace("{identifier}", identifier or "").replace("{class_noun}", class_noun or "").strip()


def placeholder_problem(template: str, option: str) -> str | None:
    """What is wrong with a prompt template's `{word}`s besides {identifier} and {class_noun}: a typo would be
    trained on, or sampled, as text."""
    unknown = [m for m in re.findall(r"\{\w+\}", template) if m not in ("{identifier}", "{class_noun}")]
    return f"{option}: unknown placeholder {', '.join(unknown)}; use {{identifier}} or {{class_noun}}" if unknown else None


def identifier_in_prompts(instance_prompt: str, class_prompt: str) -> str | None:
    """The identifier of a literal prompt pair ("a photo of sks dog" / "a photo of dog" -> "sks"):
    the one word the instance prompt adds; None when that is not a single word."""
    extra = [w for w in instance_prompt.split() if w not in class_prompt.split()]
    return extra[0] if len(extra) == 1 else None


def literal_identifier(cfg: TrainConfig) -> str | None:
    """The identifier a literal (diffusers-style) --instance_prompt names, told by the class prompt;
    None for a template, or when no one word tells it."""
    if "{identifier}" in cfg.instance_prompt:
        return None
    return identifier_in_prompts(cfg.instance_prompt, fill_prompt(cfg.class_prompt, None, cfg.class_noun))


def validate(cfg: TrainConfig) -> None:
    """Check every field once; all problems are reported together."""
    problems: list[str] = []

    def need(ok: bool, name: str, message: str) -> None:
        if not ok:
            problems.append(f"--{name}: {message}")

    need(bool(cfg.pretrained_model_name_or_path), "pretrained_model_name_or_path", "required (a diffusers pipeline folder)")
    need(bool(cfg.instance_data_dir), "instance_data_dir", "required (a folder of subject photos)")
    used_prompts = ("instance_prompt", "class_prompt") if cfg.with_prior_preservation else ("instance_prompt",)
    for name in used_prompts:
        if "{class_noun}" in getattr(cfg, name) and not cfg.class_noun:
            no_prior = (" (or --no_prior_preservation to train without class images, as diffusers' scripts do "
                        "without --with_prior_preservation)") if name == "class_prompt" else ""
            need(False, "class_noun", f"required because --{name} uses {{class_noun}}; e.g. --class_noun dog{no_prior}")
            break
    for option, template in [("--instance_prompt", cfg.instance_prompt), ("--class_prompt", cfg.class_prompt),
                             *(("--validation_prompt", p) for p in cfg.validation_prompts)]:
        if problem := placeholder_problem(template, option):
            problems.append(problem)
    if not cfg.class_noun and any("{class_noun}" in prompt for prompt in cfg.validation_prompts):
        need(False, "class_noun", "required because a --validation_prompt uses {class_noun}; e.g. --class_noun dog")
    if cfg.identifier is not None:
        need(cfg.identifier.strip() == cfg.identifier and cfg.identifier != "", "identifier", "must be a non-empty word")
    for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "sample_batch_size",
                 "class_inference_steps", "validation_steps", "num_validation_images", "inference_steps",
                 "checkpointing_steps"):
        need(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}")
    need(cfg.num_class_images >= 0, "num_class_images", f"must be >= 0, got {cfg.num_class_images}")
    need(cfg.learning_rate > 0, "learning_rate", f"must be > 0, got {cfg.learning_rate}")
    need(cfg.text_encoder_lr is None or cfg.text_encoder_lr > 0, "text_encoder_lr", "must be > 0")
    need(cfg.prior_loss_weight >= 0, "prior_loss_weight", f"must be >= 0, got {cfg.prior_loss_weight}")
    need(cfg.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0")
    need(cfg.lr_num_cycles >= 1, "lr_num_cycles", f"must be >= 1, got {cfg.lr_num_cycles}")
    need(cfg.lr_power > 0, "lr_power", f"must be > 0, got {cfg.lr_power}")
    need(cfg.lr_scheduler != "polynomial" or cfg.learning_rate > 1e-7, "learning_rate",
         "the polynomial schedule decays to 1e-7, so the rate must be above it")
    need(cfg.max_grad_norm > 0, "max_grad_norm", "must be > 0")
    for name in ("adam_beta1", "adam_beta2"):
        need(0 <= getattr(cfg, name) < 1, name, f"must be in [0, 1), got {getattr(cfg, name)}")
    need(cfg.adam_epsilon >= 0, "adam_epsilon", f"must be >= 0, got {cfg.adam_epsilon}")
    need(cfg.adam_weight_decay >= 0, "adam_weight_decay", f"must be >= 0, got {cfg.adam_weight_decay}")
    need(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    need(cfg.snr_gamma is None or cfg.snr_gamma > 0, "snr_gamma", f"must be > 0, got {cfg.snr_gamma}")
    need(cfg.noise_offset >= 0, "noise_offset", "must be >= 0")
    need(cfg.resolution is None or (cfg.resolution >= 8 and cfg.resolution % 8 == 0), "resolution",
         f"must be a multiple of 8, got {cfg.resolution}")
    need(cfg.checkpoints_total_limit is None or cfg.checkpoints_total_limit >= 1, "checkpoints_total_limit", "must be >= 1")
    need(cfg.text_encoder_stop_step is None or cfg.train_text_encoder, "text_encoder_stop_step",
         "only meaningful with --train_text_encoder")
    need(cfg.text_encoder_stop_step is None or cfg.text_encoder_stop_step >= 1, "text_encoder_stop_step",
         f"must be >= 1 (a step number), got {cfg.text_encoder_stop_step}")
    need(not (cfg.with_prior_preservation and cfg.num_class_images == 0), "num_class_images",
         "prior preservation needs class images; set >= 1 or pass --no_prior_preservation")
    need(cfg.eval_every is None or cfg.eval_every >= 1, "eval_every", "must be >= 1")
    need(cfg.eval_every is None or bool(cfg.class_noun), "eval_every",
         "needs --class_noun: its prompts are \"a [V] <class noun> ...\"; e.g. --class_noun dog")
    need(not cfg.keep_best or cfg.eval_every is not None, "keep_best", "needs --eval_every N to score steps")
    if cfg.identifier is None and "{identifier}" not in cfg.instance_prompt and literal_identifier(cfg) is None:
        users = [name for name, uses in (("--eval_every", cfg.eval_every is not None),
                                         ("--validation_prompt", any("{identifier}" in p for p in cfg.validation_prompts)))
                 if uses]
        need(not users, "identifier", f"{' and '.join(users)} use the identifier, and no one word of --instance_prompt "
             f"'{cfg.instance_prompt}' tells it; pass the word that names your subject, e.g. --identifier lun "
             "(`dreambooth identifier --model MODEL` lists rare ones)")
    need(cfg.lora_rank >= 1, "lora_rank", f"must be >= 1, got {cfg.lora_rank}")
    need(cfg.lora_alpha is None or cfg.lora_alpha > 0, "lora_alpha", f"must be > 0, got {cfg.lora_alpha}")
    need(0 <= cfg.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {cfg.lora_dropout}")
    need(cfg.prior_mode == "images" or cfg.lora, "prior_mode",
         "'prediction' needs --lora (the frozen model is the base with adapters disabled)")
    for name in LORA_OPTIONS:  # diffusers' LoRA scripts take --rank alone: here it would full fine-tune
        aliases = [a for a in TrainConfig.__dataclass_fields__[name].metadata["aliases"] if a.startswith("--")]
        spelled = f"{name} (also spelled {', '.join(aliases)})" if aliases else name  # --rank, as diffusers spells it
        need(cfg.lora or getattr(cfg, name) == default_of(name), spelled, "only takes effect with --lora; add --lora")
    if len(problems) == 1:
        raise ConfigError(f"invalid config: {problems[0]}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_text_encoder_modules",
                "lora_format")


def without_none(hint: Any) -> Any:
    """X of an Optional[X] (X | None) field's type; any other type as it is."""
    if type(None) not in get_args(hint):
        return hint
    (inner,) = [a for a in get_args(hint) if a is not type(None)]
    return inner


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Turn a YAML/TOML/CLI value into the field's type, or raise naming the field."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"--{name}: a value is required")
    if type(None) in args:  # Optional[X]
        hint = without_none(hint)
        if hint is not str and isinstance(value, str) and value.lower() == "none":  # --checkpoints_total_limit none
            return None
        origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"--{name}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or any(isinstance(v, (list, dict)) for v in items):
            raise ConfigError(f"--{name}: expected text or a list of texts, got {value!r}")
        return tuple(str(v) for v in items)
    if isinstance(value, (list, tuple, dict)) or (isinstance(value, bool) and hint is not bool):
        # str() would make "['dress']" a class noun, and int() a step count of True
        raise ConfigError(f"--{name}: expected one {hint.__name__}, got {value!r}")
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")  # YAML 1.1's words, which files read as text
        if not isinstance(value, bool):
            raise ConfigError(f"--{name}: expected true or false, got {value!r}")
        return value
    try:
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name}: expected {hint.__name__}, got {value!r}") from None
    if hint is float and not math.isfinite(converted):
        raise ConfigError(f"--{name}: expected a finite number, got {value!r}")
    return converted


def config_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def flag_spellings(name: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """A flag's spellings: diffusers' (--snake_case), the dashed one, then any aliases."""
    return list(dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}", *aliases]))


def key_names() -> dict[str, str]:
    """Every key a config file may spell a field with: its flags' spellings without the dashes
    (`learning_rate`, `validation_prompt`, `rank`, `instance-dir`) -> the field's name."""
    return {spelling.lstrip("-"): f.name for f in dataclasses.fields(TrainConfig)
            for spelling in flag_spellings(f.name, f.metadata["aliases"])}


def field_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` with each key spelled as its field (before merging two sources, so one overrides the other)."""
    names = key_names()
    spelled: dict[str, list[str]] = {}
    for key in values:
        spelled.setdefault(names.get(key, key), []).append(key)
    if twice := [" and ".join(keys) for keys in spelled.values() if len(keys) > 1]:
        raise ConfigError(f"{source}: {'; '.join(twice)} name the same option; give it once")
    return {names.get(key, key): value for key, value in values.items()}


def typed_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Each known option of `source` (a file) in its field's type, so a bad value is an error naming the
    file, not only the option (unknown keys are left to `from_dict`)."""
    hints = config_types()
    try:
        return {k: _coerce(k, hints[k], v) if k in hints else v for k, v in values.items()}
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a validated config from keys spelled as fields or flags; unknown keys are an error naming the
    source and the key."""
    hints = config_types()
    values = field_keys(values, source)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        # a file sets a switch's value: --no_prior_preservation is `with_prior_preservation: false` there
        negated = {key: field for key in unknown if key.startswith(("no_", "no-"))
                   for field in (key[3:].replace("-", "_"), "with_" + key[3:].replace("-", "_"))
                   if hints.get(field) is bool}
        advice = [f"write {field}: false for {key}" for key, field in negated.items()]
        advice += [f"{key}: did you mean {match[0]}?" for key in unknown
                   if key not in negated and (match := difflib.get_close_matches(key, hints, n=1, cutoff=0.8))]
        hint = f" ({'; '.join(advice)})" if advice else ""
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}{hint}; see `dreambooth train --help`")
    return TrainConfig(**{k: _coerce(k, hints[k], v) for k, v in values.items()})


# the values that ask the trainer to choose (records hold its choice): a resume that asks again is no change
RESOLVED_AT_SETUP = {"identifier": (None,), "resolution": (None,), "mixed_precision": (None,),
                     "prior_generation_precision": (None, "no")}
# options that change how a run is watched, logged, checkpointed or computed, or where its class images are
# cached (the cache is keyed by their content), not the model it trains
NOT_THE_MODEL = ("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "logging_dir",
                 "report_to", "sample_batch_size", "validation_prompts", "validation_steps", "num_validation_images",
                 "inference_steps", "guidance_scale", "eval_every", "eval_encoder", "eval_prompt_scorer", "keep_best",
                 "allow_pickle", "keep_checkpoints", "overwrite_output_dir", "class_cache_dir", "gradient_checkpointing",
                 "attention", "lora_format", "allow_tf32")


def changed_settings(asked: TrainConfig, recorded: dict[str, Any], source: str,
                     may_change: tuple[str, ...] = ()) -> list[str]:
    """Options that shape the model and that `asked` sets otherwise than a run's `recorded` config (its
    saved config or a checkpoint's): resuming would mix two trainings. A ConfigError if the record is invalid."""
    fields_ = set(TrainConfig.__dataclass_fields__)
    had = from_dict({k: v for k, v in recorded.items() if k in fields_}, source=source)
    changed = []
    for name in sorted(set(recorded) & fields_ - set(NOT_THE_MODEL) - set(may_change)):
        now, was = getattr(asked, name), getattr(had, name)
        if name in RESOLVED_AT_SETUP and now in RESOLVED_AT_SETUP[name]:
            continue
        if name in PATH_OPTIONS and now and was:
            now, was = (str(Path(v).expanduser().resolve()) for v in (now, was))
        if now != was:
            changed.append(f"{name}: trained with {was!r}, now {now!r}")
    return changed


def _mapping_without_repeats(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A mapping in which a key given twice is an error (YAML and JSON parsers keep the last one silently)."""
    keys = [key for key, _ in pairs]
    if twice := sorted({str(key) for key in keys if keys.count(key) > 1}):
        raise ValueError(f"{', '.join(twice)} given twice; give each once")
    return dict(pairs)


class ConfigLoader(yaml.SafeLoader):
    """YAML read as a config file means it: only true/false are booleans (YAML 1.1's yes/no/on/off stay
    text, so `mixed_precision: no` is "no"), integers are plain decimals (0123 and 1:20 stay text, not
    octal 83 or sexagesimal 80), and a key given twice is an error."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)  # `<<: *defaults` merges, as SafeLoader does
        pairs = [(self.construct_object(k, deep=deep), self.construct_object(v, deep=deep)) for k, v in node.value]
        try:
            return _mapping_without_repeats(pairs)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, str(exc), node.start_mark) from None


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                   list("-+0123456789"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON file of config keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_mapping_without_repeats)
        else:
            data = yaml.load(text, Loader=ConfigLoader)
    except Exception as exc:  # every parser has its own error type
        mark = getattr(exc, "problem_mark", None)  # YAML's says where; JSON's and TOML's messages do
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: cannot parse ({where}{exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data


def default_of(name: str) -> Any:
    """The default of one field (for commands that expose a single option of the config)."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
