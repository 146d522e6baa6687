"""Subject fidelity (paper Sec. 4.1): mean pairwise cosine between generated and real image embeddings.

With a DINO-type encoder this is the paper's DINO metric, with a CLIP image encoder its CLIP-I.
"""

from __future__ import annotations

import torch
from PIL import Image

from dreambooth.evaluation.encoders import ImageEncoder

LABELS = {"dino": "DINO", "clip": "CLIP-I"}


def label(encoder: ImageEncoder) -> str:
    """The paper's name for fidelity under this encoder; other encoders get the neutral "fidelity"."""
    return LABELS.get(encoder.family, "fidelity")


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of cos(a_i, b_j) over all (i, j); rows of a (N, D) and b (M, D) are unit vectors."""
    return float((a @ b.T).mean())


def self_similarity(e: torch.Tensor) -> float:
    """Mean cosine over ordered pairs of *different* rows: the real-vs-real reference (paper: 0.774 DINO)."""
    n = e.shape[0]
    if n < 2:
        raise ValueError("self-similarity needs at least 2 embeddings")
    sims = e @ e.T  # (n, n), diagonal is 1
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def subject_fidelity(encoder: ImageEncoder, generated: list[Image.Image], real: list[Image.Image]) -> float:
    """DINO / CLIP-I of `generated` against the subject's `real` photos (higher = more faithful)."""
    return mean_pairwise_cosine(encoder.embed(generated), encoder.embed(real))
