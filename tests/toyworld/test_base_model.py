"""The shipped toy-world base model: plain diffusers loads it offline, and it draws what it is told."""

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from dreambooth.demo import BASE_MODEL
from dreambooth.toyworld import judge


def test_shipped_model_is_small_safetensors_only():
    files = [f for f in BASE_MODEL.rglob("*") if f.is_file()]
    weights = [f for f in files if f.suffix in {".safetensors", ".bin", ".ckpt", ".pt"}]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20


def test_plain_diffusers_loads_and_generates_the_prompted_context():
    pipe = StableDiffusionPipeline.from_pretrained(BASE_MODEL, local_files_only=True)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a bag in the snow", "a sneaker on the beach", "a dress on top of green grass",
               "a boot floating on top of water"]
    images = pipe(prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (64, 64)
    readings = judge.read(judge.load(), images)
    contexts_seen = sum(r["context"] == p.split(" ", 2)[2] for r, p in zip(readings, prompts))
    assert contexts_seen >= 3, readings  # quality.py measures the rate over the full prompt grid
