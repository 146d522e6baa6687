"""Pretrain the toy world's base model: a real diffusers StableDiffusionPipeline, from scratch.

    python -m dreambooth.toyworld.pretrain --out dreambooth/assets/base-model --threads 2

Stages, each resumable from the newest checkpoint in --work: render the data set (Fashion-MNIST
*train* items only) -> train the VAE -> encode every scene once -> train the text encoder and
UNet jointly on captioned latents (DDPM epsilon objective, optionally min-SNR weighted; captions
dropped for CFG) -> fine-tune the VAE decoder on one- and two-toned objects, encoder frozen -> save.
The stages train on --device (the GPU if there is one); random draws stay on the CPU, one stream
on any device. A GPU takes a larger --unet_batch (docs/toyworld.md, "More training on a GPU").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from dreambooth.atomic import fsync_tree, replace_durably, save_file_atomic, write_text_atomic
from dreambooth.cli import quiet_libraries
from dreambooth.diffusion import loss_weights, sample_noise, training_target
from dreambooth.errors import DataError, finite_float, positive_int, run_command, torch_device, writable_folder
from dreambooth.models import CLIP_TOKENIZER_DIR, clip_text_config, default_device
from dreambooth.toyworld import captions, fashion_mnist, world
from dreambooth.toyworld.model_card import CONFIG_FILE, QUALITY_FILE, write_model_card


VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"  # in a pipeline folder (--vae_from)
WORK_CONFIG = "recipe.json"  # in --work: the recipe its data and checkpoints belong to


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    num_scenes: int = 60_000
    context_length: int = 24  # toy captions are <= 12 tokens; short context = fast cross-attention
    vae_steps: int = 1_200
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_cycles: tuple[int, ...] = (6_000, 9_000)  # the step each learning-rate cycle ends at (see unet_rate)
    unet_decay_steps: int = 2_000  # each cycle's linear decay to zero: sharper samples for the same steps
    unet_batch: int = 32
    unet_lr: float = 3e-4
    snr_gamma: float | None = None  # min-SNR-gamma loss weights (Hang et al. 2023); None: plain eps loss
    object_weight: float = 0.0  # extra UNet loss weight on the latent pixels at and around the object
    pooled_text: bool = False  # also add attention-pooled text to the UNet's time embedding
    vae_from: str | None = None  # a pipeline folder whose VAE is taken as is: no VAE or decoder stage
    decoder_steps: int = 3_000
    decoder_batch: int = 16
    decoder_lr: float = 3e-4
    two_tone_fraction: float = 0.5
    text_hidden: int = 40  # the 49,408-row token table dominates the 40 MB budget
    checkpoint_every: int = 250


def build_models(cfg: PretrainConfig) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=16, sample_size=world.SIZE)
    text_encoder = CLIPTextModel(clip_text_config(hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
                                                  num_hidden_layers=3, num_attention_heads=4))
    unet = UNet2DConditionModel(
        sample_size=world.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8, norm_num_groups=32,
        addition_embed_type="text" if cfg.pooled_text else None, addition_embed_type_num_heads=4)
    return vae, text_encoder, unet


def noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                         clip_sample=False, steps_offset=1, prediction_type="epsilon")


def render_dataset(cfg: PretrainConfig, path: Path) -> dict[str, np.ndarray]:
    """num_scenes renders of train items with random color/context, plus their attributes and how
    much of each latent pixel (4x4 image pixels) the object covers."""
    if path.is_file():
        return dict(np.load(path))
    items, labels = fashion_mnist.load("train")
    rng = np.random.default_rng(cfg.seed)
    index = rng.integers(0, len(items), cfg.num_scenes)
    images, colors, contexts, cover = [], [], [], []
    for i in index:
        scene = world.sample_scene(rng, items[i], fashion_mnist.CLASS_NOUNS[labels[i]])
        images.append(world.render(scene))
        cover.append(world.object_mask(scene).reshape(world.SIZE // 4, 4, world.SIZE // 4, 4).mean((1, 3)))
        colors.append(list(world.COLORS).index(scene.color))
        contexts.append(world.CONTEXTS.index(scene.context))
    data = {"images": np.stack(images), "labels": labels[index], "colors": np.array(colors), "contexts": np.array(contexts),
            "object_cover": np.stack(cover).astype(np.float16)}
    np.savez(path.with_suffix(".tmp.npz"), **data)
    replace_durably(path.with_suffix(".tmp.npz"), path)
    return data


class Checkpointer:
    """Weights (safetensors) and optimizer state of one stage, written atomically, resumed by step."""

    def __init__(self, folder: Path, stage: str) -> None:
        self.folder, self.stage = folder, stage

    def save(self, step: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> None:
        """tmp -> fsync -> (final -> old) -> (tmp -> final) -> drop old: a crash at any point leaves
        `final` or `old` complete, and `load` takes whichever exists."""
        tmp, final, old = (self.folder / n for n in (f".{self.stage}.tmp", self.stage, f".{self.stage}.old"))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, module in modules.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None) -> int:
        final = self.folder / self.stage
        if not (final / "step.json").is_file():
            final = self.folder / f".{self.stage}.old"  # a crash came between the two renames
        if not (final / "step.json").is_file():
            return 0
        for name, module in modules.items():
            module.load_state_dict(load_file(final / f"{name}.safetensors"))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(final / "optimizer.pt", map_location="cpu", weights_only=True))
        return json.loads((final / "step.json").read_text())["step"]


def _to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, 64, 64) in [-1, 1]


def update(loss: torch.Tensor, opt: torch.optim.Optimizer, stage: str, step: int, total: int, every: int,
           modules: dict[str, torch.nn.Module], ckpt: Checkpointer, log) -> None:
    """The end of one step of a VAE stage: backward, update, log, checkpoint every `every` steps and at the end."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    log(stage, step + 1, loss.item())
    if (step + 1) % every == 0 or step + 1 == total:
        ckpt.save(step + 1, modules, opt)


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2 in pixels: the L1 term keeps edges sharper than L2 alone would."""
    return (recon - x).abs().mean() + (recon - x).pow(2).mean()


def train_vae(cfg: PretrainConfig, vae: AutoencoderKL, images: np.ndarray, ckpt: Checkpointer, log,
              device: str = "cpu") -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    start = ckpt.load({"vae": vae}, opt)
    for step in range(start, cfg.vae_steps):
        rng = np.random.default_rng([cfg.seed, 1, step])
        x = _to_pixels(images[rng.integers(0, len(images), cfg.vae_batch)]).to(device)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=torch.Generator().manual_seed(step))).sample
        loss = reconstruction_loss(recon, x) + cfg.kl_weight * dist.kl().mean()
        update(loss, opt, "vae", step, cfg.vae_steps, cfg.checkpoint_every, {"vae": vae}, ckpt, log)


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: np.ndarray, path: Path, device: str = "cpu") -> torch.Tensor:
    """Latent means and stds of every scene, (N, 8, 16, 16) fp16, so UNet steps skip the VAE."""
    if path.is_file():
        return load_file(path)["moments"]
    moments = []
    for start in range(0, len(images), 256):
        dist = vae.encode(_to_pixels(images[start:start + 256]).to(device)).latent_dist
        moments.append(torch.cat([dist.mean, dist.std], 1).half().cpu())
    moments = torch.cat(moments).contiguous()
    save_file_atomic({"moments": moments}, path)
    return moments


def unet_rate(cfg: PretrainConfig, step: int) -> float:
    """Warm restarts: each cycle warms up over 200 steps, stays flat, then decays linearly to zero over
    its last `unet_decay_steps`. Every cycle so ends at a finished model, and another cycle extends
    pretraining (resuming from `--work`) without redoing the ones before."""
    begin = max([0, *(end for end in cfg.unet_cycles if end <= step)])
    end = min(end for end in cfg.unet_cycles if end > step)
    return cfg.unet_lr * min(1.0, (step - begin + 1) / 200, (end - step) / cfg.unet_decay_steps)


def denoising_loss(cfg: PretrainConfig, pred: torch.Tensor, target: torch.Tensor, snr_weights: torch.Tensor | None,
                   object_cover: torch.Tensor | None) -> torch.Tensor:
    """Squared error averaged over latent pixels, then per example weighted by min-SNR. With an
    object_weight, the pixels at and around the object (one latent pixel beyond it) weigh 1 +
    object_weight against the context's 1, normalized to mean 1 per example: meant to turn capacity
    to the object's shape, which tells the classes apart (at 3 it cost context; docs/toyworld.md)."""
    error = (pred - target).pow(2)
    if cfg.object_weight:
        near = torch.nn.functional.max_pool2d(object_cover[:, None].float(), 3, stride=1, padding=1) > 0
        spatial = 1 + cfg.object_weight * near.float()
        error = error * spatial / spatial.mean((2, 3), keepdim=True)
    per_row = error.mean((1, 2, 3))
    return (per_row if snr_weights is None else per_row * snr_weights).mean()


def train_denoiser(cfg: PretrainConfig, data: dict, moments: torch.Tensor, scaling: float, text_encoder, unet,
                   tokenizer, ckpt: Checkpointer, log, device: str = "cpu") -> None:
    if cfg.object_weight and "object_cover" not in data:
        raise DataError("--object_weight: scenes.npz in --work was rendered without the objects' masks; "
                        "delete it to render them again")
    sched = noise_scheduler()
    opt = torch.optim.AdamW(list(unet.parameters()) + list(text_encoder.parameters()), lr=cfg.unet_lr, weight_decay=1e-2)
    start = ckpt.load({"unet": unet, "text_encoder": text_encoder}, opt)
    colors, nouns = list(world.COLORS), fashion_mnist.CLASS_NOUNS
    steps = cfg.unet_cycles[-1]
    for step in range(start, steps):
        rng = np.random.default_rng([cfg.seed, 2, step])
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        index = rng.integers(0, len(moments), cfg.unet_batch)
        mean, std = moments[index].float().chunk(2, dim=1)
        latents = ((mean + std * torch.randn(mean.shape, generator=gen)) * scaling).to(device)
        prompts = [captions.caption(nouns[data["labels"][i]], colors[data["colors"][i]],
                                    world.CONTEXTS[data["contexts"][i]], rng) for i in index]
        ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=cfg.context_length,
                        return_tensors="pt").input_ids.to(device)
        noise = sample_noise(latents, 0.0, gen)  # drawn on the CPU, as are t and the latents: one stream on any device
        t = torch.randint(0, 1000, (len(index),), generator=gen).to(device)
        for group in opt.param_groups:
            group["lr"] = unet_rate(cfg, step)
        pred = unet(sched.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        target = training_target(sched.config.prediction_type, latents, noise, sched.alphas_cumprod, t)
        weights = loss_weights(cfg.snr_gamma, sched.alphas_cumprod, t, sched.config.prediction_type)
        cover = torch.from_numpy(data["object_cover"][index]).to(device) if cfg.object_weight else None
        loss = denoising_loss(cfg, pred, target, weights, cover)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log("unet", step + 1, loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            ckpt.save(step + 1, {"unet": unet, "text_encoder": text_encoder}, opt)


def decoder_batch(cfg: PretrainConfig, items: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Renders of train items, a `two_tone_fraction` of them two-toned in a random pattern and color pair."""
    images = []
    for i in rng.integers(0, len(items), cfg.decoder_batch):
        scene = world.sample_scene(rng, items[i], fashion_mnist.CLASS_NOUNS[labels[i]])
        if rng.random() < cfg.two_tone_fraction:
            scene = world.two_toned(scene, rng)
        images.append(world.render(scene))
    return _to_pixels(np.stack(images))


def train_decoder(cfg: PretrainConfig, vae: AutoencoderKL, ckpt: Checkpointer, log, device: str = "cpu") -> None:
    """Fine-tune the VAE decoder alone, on one- and two-toned objects.

    The first stage's short run blurs an object's own look (thin stripes average into one color), so
    no fine-tuning could bring a subject's pattern back out of the latents. The encoder stays
    frozen, which keeps the latent space the UNet was trained in (as Stable Diffusion's ft-MSE VAE
    did). Two-toned objects are not in the captions: the UNet never learns them from pretraining,
    but the decoder can draw them once DreamBooth puts them in the latents."""
    vae.requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=cfg.decoder_lr)
    start = ckpt.load({"vae": vae}, opt)
    items, labels = fashion_mnist.load("train")
    for step in range(start, cfg.decoder_steps):
        rng = np.random.default_rng([cfg.seed, 3, step])
        x = decoder_batch(cfg, items, labels, rng).to(device)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(step))
        recon = vae.decode(latents).sample
        loss = reconstruction_loss(recon, x)
        for group in opt.param_groups:  # linear decay to zero over the second half
            group["lr"] = cfg.decoder_lr * min(1.0, 2 * (cfg.decoder_steps - step) / cfg.decoder_steps)
        update(loss, opt, "decoder", step, cfg.decoder_steps, cfg.checkpoint_every, {"vae": vae}, ckpt, log)
    vae.requires_grad_(False)


def save_pipeline(cfg: PretrainConfig, vae, text_encoder, unet, out: Path) -> None:
    """Written in a staging folder and published into `out`, so a crash never leaves old and new files mixed;
    the old quality record goes first, since it measured the weights being replaced. A fresh
    tokenizer is saved: one that has encoded writes its padding and truncation into tokenizer.json."""
    # imported here, after main() quieted the libraries: the pipeline classes import image processors that warn
    from diffusers import StableDiffusionPipeline

    from dreambooth.export import staged

    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, model_max_length=cfg.context_length)
    scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler().config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with staged(out) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
        write_model_card(staging)
        (out / QUALITY_FILE).unlink(missing_ok=True)


class LossLog:
    """losses.csv: stage, step, loss, seconds since this invocation began. A resumed stage redoes the steps
    after its checkpoint; when it logs the first of them, the interrupted run's rows from there on go, so
    each step keeps one row."""

    def __init__(self, file: Path) -> None:
        self.file, self.started, self.stages_begun = file, time.time(), set()

    def __call__(self, stage: str, step: int, loss: float) -> None:
        if stage not in self.stages_begun:
            self.stages_begun.add(stage)
            if self.file.is_file():
                rows = self.file.read_text().splitlines(keepends=True)
                write_text_atomic(self.file, "".join(row for row in rows if not self._redone(row, stage, step)))
        with open(self.file, "a") as f:
            f.write(f"{stage},{step},{loss:.6f},{time.time() - self.started:.1f}\n")

    @staticmethod
    def _redone(row: str, stage: str, first_step: int) -> bool:
        """Whether `row` is the stage's at or after `first_step`, or a line a crash cut short."""
        fields = row.rstrip("\n").split(",")
        cut = not row.endswith("\n") or len(fields) != 4 or not fields[1].isdigit()
        return cut or (fields[0] == stage and int(fields[1]) >= first_step)


def check_work(cfg: PretrainConfig, work: Path) -> None:
    """A --work folder holds one recipe's scenes, latents and checkpoints: its recipe is recorded, and
    another's is refused (its checkpoints and latents would be resumed as this one's). Only more UNet
    cycles may be added, which is how a finished run is extended."""
    record, now = work / WORK_CONFIG, json.loads(json.dumps(asdict(cfg)))
    if record.is_file():
        was = json.loads(record.read_text())
        changed = [f"{k}: {was.get(k)!r} then, {now[k]!r} now" for k in now
                   if k != "unet_cycles" and was.get(k) != now[k]]
        if now["unet_cycles"][: len(was["unet_cycles"])] != was["unet_cycles"]:
            changed.append(f"unet_cycles: {was['unet_cycles']} then, {now['unet_cycles']} now (only more may be added)")
        if changed:
            raise DataError(f"--work {work} holds a run of other settings ({'; '.join(changed)}); give another "
                            "--work, or delete it to start over")
    write_text_atomic(record, json.dumps(now, indent=2))


def pretrain(cfg: PretrainConfig, out: Path, work: Path, device: str = "cpu") -> None:
    """Every stage in order; each resumes from its checkpoint in `work`, or is skipped when done.
    `cfg.vae_from` (a pipeline folder, recorded in the model's config) supplies the VAE as is, so only
    the UNet and text encoder train: a recipe tried on the latents the shipped model was trained on,
    without the VAE stages' 40 minutes."""
    work.mkdir(parents=True, exist_ok=True)
    check_work(cfg, work)
    log = LossLog(work / "losses.csv")
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, model_max_length=cfg.context_length)
    vae, text_encoder, unet = (model.to(device) for model in build_models(cfg))
    data = render_dataset(cfg, work / "scenes.npz")
    if cfg.vae_from is None:
        train_vae(cfg, vae, data["images"], Checkpointer(work, "vae"), log, device)
    else:
        vae.load_state_dict(load_file(Path(cfg.vae_from) / VAE_WEIGHTS))
    vae.eval()
    moments = encode_dataset(vae, data["images"], work / "moments.safetensors", device)
    vae.register_to_config(scaling_factor=float(1 / moments[:, :4].float().std()))
    train_denoiser(cfg, data, moments, vae.config.scaling_factor, text_encoder, unet, tokenizer,
                   Checkpointer(work, "denoiser"), log, device)
    if cfg.vae_from is None:
        train_decoder(cfg, vae, Checkpointer(work, "decoder"), log, device)
    save_pipeline(cfg, vae.cpu(), text_encoder.cpu(), unet.cpu(), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the pipeline folder is written")
    parser.add_argument("--work", type=Path, default=Path("~/.cache/dreambooth/pretrain"), help="data and checkpoints")
    parser.add_argument("--unet_cycles", "--unet-cycles", type=int, nargs="+", default=PretrainConfig.unet_cycles,
                        help="the steps the UNet's learning-rate cycles end at; add one to extend a finished run")
    parser.add_argument("--snr_gamma", "--snr-gamma", type=float, default=None,
                        help="weight the UNet's loss by min-SNR-gamma (e.g. 5); default: unweighted")
    parser.add_argument("--object_weight", "--object-weight", type=float, default=PretrainConfig.object_weight,
                        help="extra UNet loss weight on the latent pixels at and around the object")
    parser.add_argument("--pooled_text", "--pooled-text", action="store_true",
                        help="also add attention-pooled text to the UNet's time embedding (addition_embed_type 'text')")
    parser.add_argument("--vae_from", "--vae-from", type=Path, default=None,
                        help="a pipeline folder whose VAE is used as is; only the UNet and text encoder train")
    parser.add_argument("--unet_batch", "--unet-batch", type=positive_int, default=PretrainConfig.unet_batch,
                        help="scenes per UNet step (a GPU takes far more than the 2-core default's)")
    parser.add_argument("--unet_lr", "--unet-lr", type=finite_float, default=PretrainConfig.unet_lr,
                        help="the UNet's and text encoder's peak learning rate")
    parser.add_argument("--unet_decay_steps", "--unet-decay-steps", type=positive_int,
                        default=PretrainConfig.unet_decay_steps, help="each cycle's linear decay to zero, in steps")
    parser.add_argument("--device", type=torch_device, default=default_device(),
                        help="where the parts train (default: the GPU if there is one)")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    cycles = tuple(args.unet_cycles)
    if list(cycles) != sorted(set(cycles)) or cycles[0] <= args.unet_decay_steps:
        parser.error(f"--unet_cycles {' '.join(map(str, cycles))}: give increasing step counts, "
                     f"the first above --unet_decay_steps {args.unet_decay_steps}")
    if args.unet_lr <= 0:
        parser.error(f"--unet_lr {args.unet_lr}: give a rate above 0 (3e-4 is the default)")
    if args.snr_gamma is not None and not 0 < args.snr_gamma < math.inf:  # nan too
        parser.error(f"--snr_gamma {args.snr_gamma}: give a value above 0 (5 is typical), or leave it out")
    if not 0 <= args.object_weight < math.inf:
        parser.error(f"--object_weight {args.object_weight}: give 0 (no extra weight) or more")
    torch.set_num_threads(args.threads)
    vae_from = str(args.vae_from.expanduser().resolve()) if args.vae_from else None  # one spelling, for recipe.json
    cfg = replace(PretrainConfig(), unet_cycles=cycles, snr_gamma=args.snr_gamma, object_weight=args.object_weight,
                  pooled_text=args.pooled_text, vae_from=vae_from, unet_batch=args.unet_batch, unet_lr=args.unet_lr,
                  unet_decay_steps=args.unet_decay_steps)
    if args.vae_from is not None and not (args.vae_from / VAE_WEIGHTS).is_file():
        parser.error(f"--vae_from {args.vae_from}: no {VAE_WEIGHTS} there; give a pipeline folder such as the shipped model")
    writable_folder(args.out, "--out")  # now, not after three hours of training
    pretrain(cfg, args.out, args.work.expanduser(), args.device)
    print(f"saved {args.out}")


if __name__ == "__main__":
    sys.exit(run_command(main))
