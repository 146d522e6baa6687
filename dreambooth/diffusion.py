"""Diffusion math for fine-tuning: noise, regression targets, SNR weights, the DreamBooth loss.

Pure functions on tensors. Notation follows the DreamBooth paper (Ruiz et al., CVPR 2023, Eq. 1-2):
a noisy latent is z_t = alpha_t x + sigma_t eps, and the denoiser is trained to predict the
scheduler's target (eps, or v = alpha_t eps - sigma_t x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def sample_noise(latents: Tensor, noise_offset: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise like `latents`, plus optional per-channel offset noise.

    Offset noise (Guttenberg, 2023, "Diffusion with offset noise") lets the model change an image's
    mean brightness, which zero-mean noise at the last timestep never teaches it.
    """
    noise = torch.randn(latents.shape, generator=generator)  # drawn on the generator's device (CPU)
    if noise_offset > 0:
        b, c = latents.shape[:2]
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), generator=generator)
    return noise.to(latents.device, latents.dtype)


def alphas_sigmas(alphas_cumprod: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
    """alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) for each timestep, shaped (B,)."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return abar.sqrt(), (1 - abar).sqrt()


def training_target(prediction_type: str, latents: Tensor, noise: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """What the denoiser regresses: eps for "epsilon", v = alpha_t eps - sigma_t x for "v_prediction"."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha, sigma = alphas_sigmas(alphas_cumprod, timesteps)
        shape = (-1,) + (1,) * (latents.ndim - 1)  # (B, 1, 1, 1)
        return alpha.view(shape).to(latents.dtype) * noise - sigma.view(shape).to(latents.dtype) * latents
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")


def snr(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha_t^2 / sigma_t^2, shaped (B,)."""
    alpha, sigma = alphas_sigmas(alphas_cumprod, timesteps)
    return (alpha / sigma) ** 2


def min_snr_weights(snr_t: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-example loss weights of Min-SNR-gamma (Hang et al., ICCV 2023, Eq. 9).

    The paper's weight min(SNR, gamma) is for predicting x0; for an eps target it becomes
    min(SNR, gamma) / SNR (1 at SNR 0, its limit: a zero-terminal-SNR schedule's last step) and for a
    v target min(SNR, gamma) / (SNR + 1).
    """
    clipped = torch.clamp(snr_t, max=gamma)
    if prediction_type == "epsilon":
        return torch.where(snr_t > 0, clipped / snr_t, torch.ones_like(snr_t))
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def loss_weights(snr_gamma: float | None, alphas_cumprod: Tensor, timesteps: Tensor, prediction_type: str) -> Tensor | None:
    """Per-example weights of the denoising loss: min-SNR-gamma, or None (unweighted) without a gamma."""
    if snr_gamma is None:
        return None
    return min_snr_weights(snr(alphas_cumprod, timesteps), snr_gamma, prediction_type)


@dataclass(frozen=True)
class LossParts:
    total: Tensor
    instance: Tensor
    prior: Tensor | None


def dreambooth_loss(
    prediction: Tensor,
    target: Tensor,
    num_instance: int,
    prior_loss_weight: float,
    weights: Tensor | None = None,
) -> LossParts:
    """The DreamBooth objective (paper, Eq. 2) on one concatenated batch.

    Rows [0, num_instance) are subject examples with prompt "a [V] class"; the remaining rows are
    class-prior examples with prompt "a class". Each term is the mean squared error of its rows
    (optionally weighted per row, e.g. by min-SNR), and

        total = instance + lambda * prior.
    """
    per_row = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    if weights is not None:
        per_row = per_row * weights.float()
    instance = per_row[:num_instance].mean()
    if num_instance == per_row.shape[0]:
        return LossParts(total=instance, instance=instance, prior=None)
    prior = per_row[num_instance:].mean()
    return LossParts(total=instance + prior_loss_weight * prior, instance=instance, prior=prior)
