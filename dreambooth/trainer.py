"""The DreamBooth training run: setup -> loop -> save, through accelerate.

    from dreambooth import TrainConfig, train
    train(TrainConfig(pretrained_model_name_or_path="base", instance_data_dir="photos", class_noun="dog"))

Every micro-step's images (see data/dataset.py), noise and timesteps are a function of (seed, step),
so a run resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from dreambooth import checkpoints, export, runlog
from dreambooth.class_images import PRECISIONS, ClassImageSpec, drawing_precision, ensure_class_images
from dreambooth.config import TrainConfig, fill_prompt, literal_identifier
from dreambooth.data.dataset import DreamBoothData, LatentImages
from dreambooth.data.images import scan_images
from dreambooth.diffusion import LossParts, dreambooth_loss, loss_weights, sample_noise, training_target
from dreambooth.errors import ConfigError, DreamBoothError
from dreambooth.finetune import cast_frozen_weights, strategy_for, trainable
from dreambooth.generate import decoding_in_vae_precision, sample_grid
from dreambooth.identifier import find_identifiers
from dreambooth.models import (Components, TextConditioning, check_model_folder, encode_text, is_sdxl_folder,
                               load_components, load_pipeline, load_tokenizers, native_resolution, reload_frozen,
                               tokenize)
from dreambooth.outputs import CONFIG_FILE
from dreambooth.preflight import preflight
from dreambooth.run_guard import Interrupted, only_run_in, signals_noted

log = logging.getLogger("dreambooth")


class Trainer:
    """One DreamBooth run. `setup()` builds everything in dependency order; `train()` runs the loop."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir).expanduser()
        self.step = 0
        self.stop_signal: int | None = None  # set by a SIGINT/SIGTERM handler; the loop saves and stops
        self.evaluator = None  # built at the first --eval_every step
        self.best_score = float("-inf")
        AcceleratorState._reset_state()  # a second run in one process may use another mixed precision
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        # SDXL reads its first text encoder's penultimate layer, so that encoder's last layer gets no
        # gradient: DDP must look for such parameters, or its second step fails (as in diffusers' SDXL scripts)
        sdxl = is_sdxl_folder(Path(cfg.pretrained_model_name_or_path).expanduser())
        unused = [DistributedDataParallelKwargs(find_unused_parameters=True)] if sdxl and cfg.train_text_encoder else []
        self.accelerator = Accelerator(
            kwargs_handlers=unused,
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / cfg.logging_dir)),
        )
        # unset, accelerate takes its launcher's or config's precision, as diffusers' scripts let it
        self.cfg = cfg = dataclasses.replace(
            cfg, mixed_precision=self.accelerator.mixed_precision,
            prior_generation_precision=drawing_precision(cfg.prior_generation_precision, self.accelerator.device.type))
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.accelerator.num_processes == 1:  # each would train alone, all into one folder
            raise ConfigError(f"{launched} processes were launched, but accelerate found no process group to join "
                              "them (on a CPU: `accelerate launch --cpu`, or set ACCELERATE_USE_CPU=true)")

    def setup(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        report = preflight(cfg)  # every input problem at once, before anything heavy
        for line in report.warnings:  # photos skipped among them
            log.warning("warning: %s", line)
        for note in report.notes:  # how many photos (and class images of the user's) the run uses, and the
            lines = note.splitlines()  # files skipped as no photos, the first few
            more = [f"  and {len(lines) - 4} more (`train --check` lists them all)"] if len(lines) > 4 else []
            log.info("\n".join(lines[:4] + more))
        report.raise_if_problems()
        set_seed(cfg.seed)
        # The model's tokenizers and size first: the identifier, prompts and resolution all depend on them.
        self.model_folder = check_model_folder(cfg.pretrained_model_name_or_path, cfg.allow_pickle)
        self.native_resolution = native_resolution(self.model_folder)  # class images are drawn at it
        identifier = cfg.identifier
        if identifier is None:  # a template gets the tokenizer's best; a literal prompt names its own, or none
            templated = "{identifier}" in cfg.instance_prompt
            identifier = (find_identifiers(load_tokenizers(self.model_folder), top_k=1)[0].text if templated
                          else literal_identifier(cfg))
        self.cfg = cfg = dataclasses.replace(cfg, identifier=identifier,
                                             resolution=cfg.resolution or self.native_resolution)
        self.instance_prompt = fill_prompt(cfg.instance_prompt, identifier, cfg.class_noun)
        self.class_prompt = fill_prompt(cfg.class_prompt, identifier, cfg.class_noun)
        if acc.is_main_process:  # the identifier to prompt the trained model with
            prior = ("prior preservation on (--no_prior_preservation turns it off), class prompt: "
                     f"{self.class_prompt!r}" if cfg.with_prior_preservation else "no prior preservation")
            log.info("instance prompt: %r; %s", self.instance_prompt, prior)
        # Class images come from the base model as it is, loaded for them alone and freed before the parts that
        # train are loaded: both at once would take twice the memory (an SDXL in fp32 and in fp16: 15 GB).
        class_paths = self._class_images()
        self.parts: Components = load_components(self.model_folder, cfg.allow_pickle)
        self._freeze_and_place()
        self.data = self._build_data(class_paths)
        # Text: both prompts are encoded together; with a frozen encoder, once for the whole run.
        self.prompt_ids = [ids.to(acc.device) for ids in tokenize(self.parts.tokenizers,
                                                                   [self.instance_prompt, self.class_prompt])]
        # the base model's (LoRA adapters start as the identity and no step has run), under the
        # autocast that training will run the encoders in
        with torch.no_grad(), acc.autocast():
            self.base_embeddings = encode_text(self.parts.text_encoders, self.prompt_ids).float()
        # Optimizer after the models (it holds their parameters), schedule after the resumed step.
        self.optimizer = self._build_optimizer()
        base_rates = [group["lr"] for group in self.optimizer.param_groups]
        # frozen text encoders are not prepared, so checkpoints don't carry copies of them
        trained_encoders = self.parts.text_encoders if cfg.train_text_encoder else []
        self.unet, *prepared = acc.prepare(self.parts.unet, *trained_encoders, self.optimizer)
        *trained_encoders, self.optimizer = prepared
        self.text_encoders = trained_encoders or self.parts.text_encoders
        self.finetune.register_checkpoint_hooks(acc)
        self.start_step = checkpoints.resume(acc, self.output_dir, cfg.resume_from_checkpoint)
        # The rate is a function of the updates applied alone (as in diffusers, not those fp16's loss scaler
        # skipped on an overflow): built at the resumed count, which Adam's state keeps, not checkpointed
        # (accelerate's prepared scheduler counts a tick per process, so a resume on another number of
        # processes would land elsewhere in the schedule).
        for group, rate in zip(self.optimizer.param_groups, base_rates):
            group["initial_lr"] = rate
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_train_steps,
                                          num_cycles=cfg.lr_num_cycles, power=cfg.lr_power,
                                          last_epoch=checkpoints.updates_applied(self.optimizer) - 1)
        if acc.is_main_process:
            runlog.restart_at(self.output_dir, self.start_step)
            if not self.start_step:  # a fresh run (over an earlier one only with --overwrite_output_dir): the
                checkpoints.delete_all(self.output_dir)  # earlier run's checkpoints, best and grids are not its steps
                if (self.output_dir / "best" / "best.json").is_file():
                    shutil.rmtree(self.output_dir / "best")
                for grid in (self.output_dir / "validation").glob("step-*.png"):
                    grid.unlink()
        self.best_score = self._best_so_far()
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers("dreambooth", config=export.scalar_config(cfg))

    def _best_so_far(self) -> float:
        """The score a resumed --keep_best run must beat: its best so far, if that was published whole (its
        config goes out last, for full pipelines and LoRA adapters alike) and scored by the same meters."""
        best = self.output_dir / "best" / "best.json"
        if not (self.start_step and best.is_file() and (best.parent / CONFIG_FILE).is_file()):
            return float("-inf")
        record = json.loads(best.read_text())
        if any(record.get(name, value) != value for name, value in self._meters().items()):
            log.warning("warning: %s was scored with another --eval_encoder or --eval_prompt_scorer; the next "
                        "evaluation replaces it", best.parent)
            return float("-inf")
        return record["eval/score"]

    def _meters(self) -> dict[str, str | None]:
        return {"eval_encoder": self.cfg.eval_encoder, "eval_prompt_scorer": self.cfg.eval_prompt_scorer}

    def _freeze_and_place(self) -> None:
        """Choose what trains (all weights or LoRA adapters); frozen parts go to the device in low precision."""
        cfg, parts, device = self.cfg, self.parts, self.accelerator.device
        self.finetune = strategy_for(cfg)
        self.finetune.configure(parts, cfg)
        low_precision = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
        for encoder in parts.text_encoders:
            encoder.to(device)
        parts.vae.requires_grad_(False).to(device)
        if low_precision is not None:  # frozen weights only: LoRA's base, frozen encoders, the VAE
            # a VAE whose config says force_upcast (diffusers' default; SDXL's overflows in fp16) stays fp32
            vae_upcast = low_precision is torch.float16 and parts.vae.config.get("force_upcast", False)
            for module in [parts.unet, *parts.text_encoders, *([] if vae_upcast else [parts.vae])]:
                cast_frozen_weights(module, low_precision)
        parts.unet.train()
        for encoder in parts.text_encoders:
            encoder.train(cfg.train_text_encoder)
            if cfg.gradient_checkpointing and cfg.train_text_encoder:
                encoder.gradient_checkpointing_enable()
        if cfg.gradient_checkpointing:
            parts.unet.enable_gradient_checkpointing()
        if cfg.attention == "default":
            from diffusers.models.attention_processor import AttnProcessor
            parts.unet.set_attn_processor(AttnProcessor())

    def _class_images(self) -> list[Path] | None:
        """Generated (or reused from the cache) by the base model; None without image-based prior."""
        cfg, acc = self.cfg, self.accelerator
        if not cfg.class_images_needed:
            return None
        base_pipeline = functools.cache(functools.partial(  # loaded at most once, and only if an image is missing
            load_pipeline, self.model_folder, PRECISIONS[cfg.prior_generation_precision], cfg.allow_pickle,
            device=acc.device))
        ensure = functools.partial(
            ensure_class_images, self._class_image_spec(), Path(cfg.class_cache_dir).expanduser(), cfg.num_class_images,
            Path(cfg.class_data_dir).expanduser() if cfg.class_data_dir else None,
            load_pipeline=base_pipeline, batch_size=cfg.sample_batch_size, progress=acc.is_local_main_process)
        if acc.num_processes > 1:  # every process draws its share (as diffusers' scripts do)
            ensure(share=(acc.process_index, acc.num_processes))
            acc.wait_for_everyone()
            # where each node's cache is its own, the other nodes' shares are missing there: the node's
            # processes draw them in shares again (a shared cache is complete, and this draws nothing)
            local_index = torch.tensor([acc.local_process_index], device=acc.device)
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or int(acc.gather(local_index).max()) + 1
            ensure(share=(acc.local_process_index, per_node))
            acc.wait_for_everyone()
        return ensure()

    def _build_data(self, class_paths: list[Path] | None) -> DreamBoothData:
        cfg = self.cfg
        instance_scan = scan_images(Path(cfg.instance_data_dir).expanduser(), role="instance", min_side=cfg.resolution)
        photos = list(zip(instance_scan.digests, instance_scan.images))  # by name
        if cfg.resume_from_checkpoint is not None:  # in the order they were drawn from, whatever their names now
            order = checkpoints.photo_order(checkpoints.named(self.output_dir, cfg.resume_from_checkpoint))
            photos = sorted(photos, key=lambda photo: order.index(photo[0])) if order is not None else photos
        self.photos = [digest for digest, _ in photos]  # checkpoints record them: a resume on others is refused
        views = dict(vae=self.parts.vae, resolution=cfg.resolution, center_crop=cfg.center_crop,
                     random_flip=cfg.random_flip, cache=cfg.cache_latents, latents_mean_std=self.parts.is_sdxl)
        prior = LatentImages(class_paths, **views) if class_paths is not None else None
        return DreamBoothData(LatentImages([path for _, path in photos], **views), prior,
                              batch_size=cfg.train_batch_size, seed=cfg.seed)

    def _class_image_spec(self) -> ClassImageSpec:
        cfg = self.cfg
        # drawn at the model's own size, as diffusers does, and resized like the photos: a model samples
        # worst off its native resolution, and those samples would teach the prior their flaws
        return ClassImageSpec.for_model(self.model_folder, self.class_prompt, self.native_resolution,
                                        cfg.class_inference_steps, cfg.class_guidance_scale, cfg.seed,
                                        cfg.prior_generation_precision)

    @property
    def text_encoder_training(self) -> bool:
        stop = self.cfg.text_encoder_stop_step
        return self.cfg.train_text_encoder and (stop is None or self.step < stop)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        # --scale_lr: the rates were tuned for one example per update (diffusers' rule)
        scale = cfg.train_batch_size * cfg.gradient_accumulation_steps * self.accelerator.num_processes
        scale = scale if cfg.scale_lr else 1
        groups = [{"params": trainable(self.parts.unet), "lr": cfg.learning_rate * scale}]
        if cfg.train_text_encoder:
            groups.append({"params": [p for e in self.parts.text_encoders for p in trainable(e)],
                           "lr": cfg.text_encoder_learning_rate * scale})
        optimizer_class = torch.optim.AdamW
        if cfg.use_8bit_adam:
            try:
                import bitsandbytes
            except ImportError:
                raise DreamBoothError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
            optimizer_class = bitsandbytes.optim.AdamW8bit
        # the default lr too: diffusers' polynomial schedule decays from it, not from each group's
        return optimizer_class(groups, lr=groups[0]["lr"], betas=(cfg.adam_beta1, cfg.adam_beta2),
                               weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)

    def train(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        self.step = self.start_step
        if self.start_step:  # a stop saves before it looks at its step: look now, unless that was done
            self.look(last=self.step == cfg.max_train_steps, unless_done=True)
        # a context, so that an error message starts its own line, not the end of the bar
        with tqdm(total=cfg.max_train_steps, initial=self.step, desc="training", unit="step",
                  disable=not acc.is_local_main_process) as bar:
            while self.step < cfg.max_train_steps:
                loss, nonfinite = self.update()
                self.step += 1
                # every process must agree to stop (signal) or fail (NaN), or the others hang in a collective
                stopping = torch.tensor(float(self.stop_signal is not None), device=acc.device)
                flags = acc.reduce(torch.stack([stopping, nonfinite]), "max")
                if flags[1]:
                    self._fail_on_nan()
                logs = {"loss": loss.total.item(), "loss/instance": loss.instance.item(),
                        "lr": self.lr_scheduler.get_last_lr()[0]}
                if loss.prior is not None:
                    logs["loss/prior"] = loss.prior.item()
                acc.log(logs, step=self.step)
                if acc.is_main_process:
                    runlog.append(self.output_dir, {"step": self.step, **logs})
                bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                bar.update(1)
                if flags[0]:
                    self._save_and_stop()
                if self.step % cfg.checkpointing_steps == 0 and self.step < cfg.max_train_steps:
                    self._save_checkpoint()
                self.look(last=self.step == cfg.max_train_steps)
        return self.save()

    def look(self, last: bool, unless_done: bool = False) -> None:
        """Validation grids and scores of this step, if due (`unless_done`: and not written yet); the last
        step's model (the one saved) is always looked at, and may be the best."""
        cfg = self.cfg
        if cfg.validation_prompts and (self.step % cfg.validation_steps == 0 or last):
            if not (unless_done and self._grid_file().is_file()):
                self.validate()
        if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
            if not (unless_done and any(row["step"] == self.step and "eval/score" in row
                                        for row in runlog.read(self.output_dir))):
                self.evaluate()

    def _grid_file(self) -> Path:
        return self.output_dir / "validation" / f"step-{self.step:06d}.png"

    def update(self) -> tuple[LossParts, torch.Tensor]:
        """One optimizer step: gradient_accumulation_steps training steps. Returns the last one's loss and
        whether any one's loss was not finite (each adds to the same update)."""
        cfg, acc = self.cfg, self.accelerator
        nonfinite = torch.zeros((), device=acc.device)
        for micro in range(cfg.gradient_accumulation_steps):
            with acc.accumulate(self.unet, *self.text_encoders):
                # each process draws its own examples: draws are numbered across processes, 0, 1, 2, ...
                micro_step = self.step * cfg.gradient_accumulation_steps + micro
                loss = self.training_step(micro_step * acc.num_processes + acc.process_index)
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss.total.detach())).float())
        return loss, nonfinite

    def _save_checkpoint(self) -> Path:
        return checkpoints.save(self.accelerator, self.output_dir, self.step, self.cfg.checkpoints_total_limit,
                                self.cfg.with_absolute_paths().to_dict(), list(self.photos))

    def _save_and_stop(self) -> None:
        path = self._save_checkpoint()
        number = self.stop_signal or signal.SIGTERM  # another process may have been the one signalled
        raise Interrupted(f"stopped by {signal.Signals(number).name} at step {self.step}; saved {path}", number)

    def training_step(self, draw: int) -> LossParts:
        """One forward/backward pass on a concatenated [instance; prior] batch (paper, Eq. 2), its examples,
        noise and timesteps drawn by `draw` (the run's count of batches over all processes); the optimizer
        and schedule step at the last of an accumulation (accelerate skips the optimizer's before)."""
        cfg, sched, device = self.cfg, self.parts.noise_scheduler, self.accelerator.device
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + draw)
        batch = self.data.batch(draw, generator)
        latents = batch.latents.to(device)  # (n+m, 4, h, w)
        noise = sample_noise(latents, cfg.noise_offset, generator)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        timesteps = timesteps.to(device)
        noisy = sched.add_noise(latents, noise, timesteps)
        target = training_target(self.parts.prediction_type, latents, noise, sched.alphas_cumprod, timesteps)
        rows, sizes = batch.prompt_rows.to(device), batch.sizes.to(device)
        if cfg.with_prior_preservation and cfg.prior_mode == "prediction":
            noisy, timesteps, target, rows, sizes = self._append_frozen_prior(noisy, timesteps, target, rows, sizes)
        conditioning = self.prompt_embeddings().rows(rows)
        prediction = self.denoise(self.unet, noisy, timesteps, conditioning, sizes)
        weights = loss_weights(cfg.snr_gamma, sched.alphas_cumprod, timesteps, self.parts.prediction_type)
        loss = dreambooth_loss(prediction, target, batch.num_instance, cfg.prior_loss_weight, weights)
        self.accelerator.backward(loss.total)
        if self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.trainable_parameters(), cfg.max_grad_norm)
        self.optimizer.step()  # accelerate skips it (and zero_grad) while gradients accumulate
        if self.accelerator.sync_gradients and not self.optimizer.step_was_skipped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    @torch.no_grad()
    def _append_frozen_prior(self, noisy, timesteps, target, rows, sizes):
        """Prior rows whose target is the base model's own prediction for the class prompt on the same
        noisy latents (adapters disabled), instead of the paper's denoising of generated class images."""
        unet = self.accelerator.unwrap_model(self.unet)
        class_rows = torch.ones_like(rows)
        class_conditioning = self.base_embeddings.rows(class_rows)
        unet.disable_adapters()
        try:
            prior_target = self.denoise(unet, noisy, timesteps, class_conditioning, sizes)
        finally:
            unet.enable_adapters()
        return (torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]), torch.cat([target, prior_target]),
                torch.cat([rows, class_rows]), torch.cat([sizes, sizes]))

    def denoise(self, unet, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning,
                sizes: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction; SDXL also takes pooled text and each row's size/crop conditioning (`sizes`,
        (B, 6): original size, crop corner, target size)."""
        added = None
        if text.pooled is not None:
            added = {"text_embeds": text.pooled, "time_ids": sizes}
        return unet(noisy, timesteps, text.hidden, added_cond_kwargs=added).sample

    def prompt_embeddings(self) -> TextConditioning:
        """Two rows: the instance prompt's conditioning, then the class prompt's."""
        if not self.cfg.train_text_encoder:
            return self.base_embeddings
        if not self.text_encoder_training:  # past --text_encoder_stop_step: frozen, so no (LoRA) dropout either
            for encoder in self.text_encoders:
                encoder.eval()
        with torch.set_grad_enabled(self.text_encoder_training):
            return encode_text(self.text_encoders, self.prompt_ids)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        modules = [self.unet] + (self.text_encoders if self.text_encoder_training else [])
        return [p for m in modules for p in trainable(m)]

    def _fail_on_nan(self) -> None:
        # a resume keeps the options a run started with, so the fix is a new run, not the last checkpoint
        precision = " or use --mixed_precision no" if self.cfg.mixed_precision != "no" else ""
        raise DreamBoothError(f"step {self.step}: the loss is not finite; lower --learning_rate "
                              f"(now {self.cfg.learning_rate:g}){precision} and train again, into another "
                              f"--output_dir or after deleting {self.output_dir}")

    def pipeline(self, for_saving: bool = False):
        """The current model as a sampling pipeline. For saving a full fine-tune, parts that were cast
        to low precision for speed are reloaded from the base folder, so the output keeps their
        full-precision weights (a LoRA run saves only its adapters, which stay float32)."""
        acc, cfg = self.accelerator, self.cfg
        vae, text_encoders = None, [acc.unwrap_model(e) for e in self.text_encoders]
        if for_saving and cfg.mixed_precision != "no" and not cfg.lora:
            vae, reloaded = reload_frozen(self.parts, with_text_encoders=not cfg.train_text_encoder)
            text_encoders = reloaded or text_encoders
        return export.pipeline_from(self.parts, acc.unwrap_model(self.unet), text_encoders, vae=vae)

    @contextlib.contextmanager
    def sampling(self):
        """Eval mode (no LoRA dropout) and autocast (frozen parts may be in low precision) while sampling;
        the VAE decodes in its own precision."""
        modules = [self.unet, *self.text_encoders]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            with self.accelerator.autocast(), decoding_in_vae_precision(self.parts.vae):
                yield
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    def validate(self) -> None:
        """Sample the validation prompts with fixed seeds and save (and log) one grid."""
        if not self.accelerator.is_main_process:
            return
        cfg = self.cfg
        prompts = [fill_prompt(p, cfg.identifier, cfg.class_noun) for p in cfg.validation_prompts]
        with self.sampling():
            grid = sample_grid(self.pipeline(), prompts, cfg.num_validation_images, cfg.inference_steps,
                               cfg.guidance_scale, cfg.seed, cfg.resolution)
        self._grid_file().parent.mkdir(parents=True, exist_ok=True)
        grid.save(self._grid_file())
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", np.asarray(grid), self.step, dataformats="HWC")

    def evaluate(self) -> None:
        """--eval_every: score the current model; with --keep_best, save it when it beats the best so far."""
        if not self.accelerator.is_main_process:
            return
        if self.evaluator is None:
            from dreambooth.evaluation.during_training import TrainingEvaluator
            from dreambooth.evaluation.metrics.prompt_fidelity import load_prompt_scorer

            scorer = load_prompt_scorer(self.cfg.eval_prompt_scorer, option="--eval_prompt_scorer")
            self.evaluator = TrainingEvaluator(list(self.data.instance_paths), self.cfg.identifier,
                                               self.cfg.class_noun, self.cfg.eval_encoder, seed=self.cfg.seed,
                                               resolution=self.cfg.resolution, prompt_scorer=scorer)
        with self.sampling():
            scores = self.evaluator(self.pipeline())
        self.accelerator.log(scores, step=self.step)
        runlog.append(self.output_dir, {"step": self.step, **scores})
        log.info("step %d: %s", self.step, ", ".join(f"{k[5:]} {v:.3f}" for k, v in scores.items()))
        if self.cfg.keep_best and scores["eval/score"] > self.best_score:
            self.best_score = scores["eval/score"]
            self.write_model(self.output_dir / "best", best={"step": self.step, **scores, **self._meters()})

    def write_model(self, folder: Path, best: dict | None = None) -> None:
        """Weights (or adapters), the run's config and a model card, staged and then published into `folder`
        so that a crash never leaves a folder that looks complete; with `best` (its step, scores and meters,
        written as best.json), the card is of the best-scoring step's model."""
        with export.staged(folder) as staging:  # on a full disk, the checkpoints still hold the run
            self.finetune.save(self.pipeline(for_saving=True), staging, self.cfg)
            export.write_card_and_config(staging, self.cfg, self.instance_prompt, self.class_prompt,
                                         best["step"] if best else None)
            if best:
                (staging / "best.json").write_text(json.dumps(best))

    def save(self) -> Path:
        """Write the diffusers pipeline folder, model card and resolved config; return the folder."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.write_model(self.output_dir)
            if not self.cfg.keep_checkpoints:  # only now: until the model is published, they are the run
                checkpoints.delete_all(self.output_dir)
        return self.output_dir

    def close(self) -> None:
        """End the trackers and the process group, after freeing the models as prepared for it: a DDP
        wrapper freed later holds the group's last reference, and gloo's teardown from its destructor
        waits on threads that need the GIL that destructor holds (a hang, now and then, in torch 2.13)."""
        self.unet = self.text_encoders = None
        self.accelerator.free_memory()
        self.accelerator.end_training()


def train(cfg: TrainConfig) -> Path:
    """Personalize `cfg.pretrained_model_name_or_path` on `cfg.instance_data_dir`; return the output folder.

    SIGINT/SIGTERM during the loop finish the current step, save a checkpoint and raise `Interrupted`;
    during the final save, they let it finish and then raise `Interrupted`, so no signal goes unheard.
    """
    with only_run_in(Path(cfg.output_dir).expanduser()):
        trainer = Trainer(cfg)
        try:
            trainer.setup()
            with signals_noted(functools.partial(setattr, trainer, "stop_signal")):
                out = trainer.train()
        finally:
            trainer.close()
    if trainer.stop_signal is not None:
        raise Interrupted(f"stopped by {signal.Signals(trainer.stop_signal).name} after saving {out}",
                          trainer.stop_signal, "nothing is left to resume")
    return out
