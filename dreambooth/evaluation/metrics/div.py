"""DIV, diversity (paper Sec. 4.3): mean pairwise perceptual distance between images of one prompt.

The paper uses LPIPS (Zhang et al., CVPR 2018), whose learned layer weights we cannot download. This is
an LPIPS-*style* distance on any multi-layer feature extractor (by default the offline EfficientNet-Lite0):
per layer l, unit-normalise each spatial position's channel vector, take the squared difference summed
over channels and averaged over space; then average over layers (LPIPS Eq. 1 sums its layers, with
learned channel weights; here all are 1 and the layers are averaged). The encoder sees its own input (for
EfficientNet-Lite0, the central 224 px after resizing to 256). Not comparable with the paper's LPIPS numbers.
"""

from __future__ import annotations

from itertools import combinations
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image


class FeatureMaps(Protocol):
    name: str

    def feature_maps(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """One (N, C_l, H_l, W_l) tensor per layer."""


def metric_name(features: FeatureMaps) -> str:
    """What a DIV number records as its encoder, so it is never mistaken for LPIPS."""
    return f"lpips-style[{features.name}]"


def lpips_style_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Distance between matching rows of two feature-map lists: (N,) values in [0, 4]."""
    per_layer = []
    for fa, fb in zip(a, b):
        diff = F.normalize(fa, dim=1, eps=1e-10) - F.normalize(fb, dim=1, eps=1e-10)  # (N, C, H, W)
        per_layer.append(diff.pow(2).sum(dim=1).mean(dim=(1, 2)))  # (N,)
    return torch.stack(per_layer).mean(dim=0)


def div(features: FeatureMaps, images: list[Image.Image]) -> float:
    """Mean distance over unordered pairs of `images` (higher = more diverse)."""
    if len(images) < 2:
        raise ValueError("DIV needs at least 2 images per prompt")
    maps = features.feature_maps(images)
    pairs = list(combinations(range(len(images)), 2))
    i, j = (torch.tensor(idx) for idx in zip(*pairs))
    return float(lpips_style_distance([m[i] for m in maps], [m[j] for m in maps]).mean())
