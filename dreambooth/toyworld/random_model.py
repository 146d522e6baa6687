"""Random-weight Stable Diffusion pipelines built in code: the tiny ones the tests train on, and the
published architectures the benchmarks measure."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dreambooth.models import CLIP_TOKENIZER_DIR, clip_text_config

IMAGE_SIZE = 32  # pixels; the VAE below downsamples by 2, so latents are 16x16x4


def build_random_sd(path: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Save a StableDiffusionPipeline of tiny random parts to `path` and return it."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_SIZE,
    )
    text_encoder = CLIPTextModel(clip_text_config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4))
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_random_sdxl(path: Path, seed: int = 0) -> Path:
    """Save a StableDiffusionXLPipeline of tiny random parts (two text encoders, pooled and
    size/crop conditioning) to `path` and return it. The second encoder is wider than the first, as
    in the real model (1280 vs 768): diffusers' single-file loader tells them apart by width."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    time_dim, hidden, hidden_2 = 8, 32, 48
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + hidden_2,
        cross_attention_dim=hidden + hidden_2, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_SIZE,
    )
    text_config = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    text_encoder = CLIPTextModel(clip_text_config(hidden_size=hidden, **text_config))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(hidden_size=hidden_2, projection_dim=hidden_2,
                                                                  **text_config))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_random_published(family: str, path: Path, seed: int = 0) -> Path:
    """A published architecture (`single_file_import.ARCHITECTURES`: sd1, sd2-v, sd2-base, sdxl) at
    random weights, saved as a pipeline folder: full-size runs (benchmarks, import checks) without
    the real weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoConfig, CLIPTextModelWithProjection

    from dreambooth.single_file_import import write_configs

    write_configs(family, path)
    torch.manual_seed(seed)
    for name, model_class in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        model_class.from_config(model_class.load_config(path / name)).save_pretrained(path / name)
    for name in ("text_encoder", "text_encoder_2"):
        if (path / name).is_dir():
            config = AutoConfig.from_pretrained(path / name)
            model_class = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            model_class(config).save_pretrained(path / name)
    return path
