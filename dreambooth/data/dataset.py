"""Training examples: subject and class images as VAE latents, drawn into explicit batches.

Which images a micro-step gets is a function of (seed, micro-step): it takes the next places in an
endless sequence of epochs, each a permutation seeded by (seed, epoch), so a batch larger than the
folder repeats photos rather than coming up short; each crop, flip and latent sample comes from a
generator seeded by (seed, micro-step). So a run resumed at step s sees exactly the data it would
have seen.

Latent caching: the VAE is frozen in DreamBooth, so each image's latent *distribution* (mean, std)
is computed once and a fresh latent is sampled from it every step, as uncached training would.
Augmentations stay exact: with `random_flip` both orientations are cached. Random crops of
non-square photos cannot be enumerated, so with `center_crop=False` such images are encoded every
step (square images crop the same either way and are cached).
"""

from __future__ import annotations

import random
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from dreambooth.data.images import crop_corner, fit_shorter_side, load_rgb, prepare, to_tensor


@dataclass(frozen=True)
class Batch:
    """One micro-batch: subject latents first, then class-prior latents (the layout the loss assumes),
    each row with its image's size and crop (SDXL's micro-conditioning)."""

    instance: Tensor  # (n, 4, h, w), scaled by the VAE's scaling_factor
    prior: Tensor | None  # (m, 4, h, w) or None without prior preservation
    instance_sizes: Tensor  # (n, 6): original height, width, crop top, left, target height, width
    prior_sizes: Tensor | None = None  # (m, 6)

    @property
    def num_instance(self) -> int:
        return self.instance.shape[0]

    @property
    def latents(self) -> Tensor:
        return self.instance if self.prior is None else torch.cat([self.instance, self.prior])  # (n+m, 4, h, w)

    @property
    def prompt_rows(self) -> Tensor:
        """Which prompt each row is conditioned on: 0, the instance prompt; 1, the class prompt."""
        m = 0 if self.prior is None else self.prior.shape[0]
        return torch.tensor([0] * self.num_instance + [1] * m)  # (n+m,)

    @property
    def sizes(self) -> Tensor:
        return self.instance_sizes if self.prior is None else torch.cat([self.instance_sizes, self.prior_sizes])


class LatentImages:
    """A fixed list of images that yields (augmented) latents through a frozen VAE."""

    def __init__(self, paths: list[Path], vae: AutoencoderKL, resolution: int, center_crop: bool,
                 random_flip: bool, cache: bool, latents_mean_std: bool = False) -> None:
        # kept at training size: 20 phone photos at full size would hold over a GB for nothing
        self.paths = list(paths)
        originals = [load_rgb(p) for p in paths]
        self.original_sizes = [(image.height, image.width) for image in originals]
        self.images = [fit_shorter_side(image, resolution) for image in originals]
        del originals
        self.vae, self.resolution, self.center_crop, self.random_flip = vae, resolution, center_crop, random_flip
        self.scaling_factor = float(vae.config.scaling_factor)
        # SDXL's pipeline decodes latents * std / scaling_factor + mean when the VAE's config has them
        # (none of SD 1.x/2.x/SDXL's own do; Playground-style VAEs do), so training latents must match
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        self.mean_std = ((torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1))
                         if latents_mean_std and mean is not None and std is not None else None)
        self.cached: list[dict[bool, tuple[Tensor, Tensor]]] = [{} for _ in self.images]
        if cache:
            flips = (False, True) if random_flip else (False,)
            for i, image in enumerate(self.images):
                if center_crop or image.width == image.height:
                    for flip in flips:
                        self.cached[i][flip] = self._encode(prepare(image, resolution, True, None), flip)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def _encode(self, image, flip: bool) -> tuple[Tensor, Tensor]:
        pixels = to_tensor(image).unsqueeze(0)  # (1, 3, H, W) in [-1, 1]
        if flip:
            pixels = pixels.flip(-1)
        dist = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mean[0].float().cpu(), dist.std[0].float().cpu()

    def latents(self, indices: list[int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sampled, scaled latents for `indices`, shaped (len(indices), 4, h, w), and each one's size row:
        the photo's original size, the crop's top-left corner (in the flipped image when flipped, as the
        model sees it) and the target size, as SDXL was trained with and diffusers' SDXL script passes."""
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
        out, sizes = [], []
        for i in indices:
            image, res = self.images[i], self.resolution
            flip = self.random_flip and rng.random() < 0.5
            if flip in self.cached[i]:
                mean, std = self.cached[i][flip]
                top, left = crop_corner(image, res, True, None)
            else:
                top, left = crop_corner(image, res, self.center_crop, rng)
                mean, std = self._encode(image.crop((left, top, left + res, top + res)), flip)
            if flip:
                left = image.width - res - left
            out.append(mean + std * torch.randn(mean.shape, generator=generator))
            sizes.append([*self.original_sizes[i], top, left, res, res])
        latents, sizes = torch.stack(out), torch.tensor(sizes, dtype=torch.float32)
        if self.mean_std is not None:
            return (latents - self.mean_std[0]) * self.scaling_factor / self.mean_std[1], sizes
        return latents * self.scaling_factor, sizes


@lru_cache(maxsize=8)
def epoch_order(num_items: int, seed: int, epoch: int) -> tuple[int, ...]:
    """A seeded shuffle of range(num_items) for one pass over the data (cached: `take` asks per item)."""
    return tuple(torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def take(num_items: int, seed: int, start: int, count: int) -> list[int]:
    """Items start..start+count of the endless sequence of seeded epochs (exact under resume)."""
    return [epoch_order(num_items, seed, k // num_items)[k % num_items] for k in range(start, start + count)]


class DreamBoothData:
    """Subject images and (optionally) class images, paired one-to-one in every batch."""

    def __init__(self, instance: LatentImages, prior: LatentImages | None, batch_size: int, seed: int) -> None:
        self.instance, self.prior, self.batch_size, self.seed = instance, prior, batch_size, seed

    @property
    def instance_paths(self) -> list[Path]:
        return self.instance.paths

    def batch(self, micro_step: int, generator: torch.Generator) -> Batch:
        n = self.batch_size
        inst, inst_sizes = self.instance.latents(take(len(self.instance), self.seed, micro_step * n, n), generator)
        if self.prior is None:
            return Batch(instance=inst, prior=None, instance_sizes=inst_sizes)
        prior, prior_sizes = self.prior.latents(take(len(self.prior), self.seed + 1, micro_step * n, n), generator)
        return Batch(instance=inst, prior=prior, instance_sizes=inst_sizes, prior_sizes=prior_sizes)
