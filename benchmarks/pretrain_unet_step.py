"""Seconds per UNet step of toy-world pretraining, eager vs. channels_last vs. bf16 autocast vs. torch.compile.

    python benchmarks/pretrain_unet_step.py --steps 20 --rounds 3

The UNet stage is most of the 3-hour pretraining budget (docs/toyworld.md), so its step time
decides how many steps the budget holds. Each mode builds the shipped architecture afresh (same
seed) and times `--steps` steps of pretraining's shape (batch 32 of 16x16x4 latents, the text
encoder trained too; tokenizing, noising and gradient clipping left out, as they are the same in
every mode) after `--warmup` untimed ones. The modes take turns in this process for
`--rounds` rounds, and each mode's fastest round is reported (the others were slowed by something
else), so the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from dreambooth.toyworld.pretrain import PretrainConfig, build_models

MODES = ("eager", "channels_last", "bf16 autocast", "torch.compile")


def seconds_per_step(mode: str, steps: int, warmup: int) -> float:
    cfg = PretrainConfig()
    _, text_encoder, unet = build_models(cfg)
    memory_format = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    unet = unet.to(memory_format=memory_format)
    forward = torch.compile(unet) if mode == "torch.compile" else unet
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16 autocast" else contextlib.nullcontext()
    opt = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=cfg.unet_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, text_encoder.config.vocab_size, (cfg.unet_batch, cfg.context_length), generator=gen)

    def step() -> None:
        latents = torch.randn(cfg.unet_batch, 4, 16, 16, generator=gen).to(memory_format=memory_format)
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=gen)
        with autocast:
            pred = forward(latents, t, text_encoder(ids)[0]).sample
        torch.nn.functional.mse_loss(pred.float(), torch.randn(pred.shape, generator=gen)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):  # torch.compile compiles here
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = [{mode: seconds_per_step(mode, args.steps, args.warmup) for mode in MODES} for _ in range(args.rounds)]
    times = {mode: min(r[mode] for r in rounds) for mode in MODES}
    print("| mode | s per step | vs eager |\n|---|---|---|")
    for mode, seconds in times.items():
        print(f"| {mode} | {seconds:.3f} | {seconds / times['eager']:.2f}x |")


if __name__ == "__main__":
    main()
