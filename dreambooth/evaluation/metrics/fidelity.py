"""Subject fidelity (paper Sec. 4.1): mean pairwise cosine between generated and real image embeddings.

With a DINO-type encoder this is the paper's DINO metric, with a CLIP image encoder its CLIP-I.
"""

from __future__ import annotations

import torch

from dreambooth.evaluation.encoders import ImageEncoder

LABELS = {"dino": "DINO", "clip": "CLIP-I"}


def label(encoder: ImageEncoder) -> str:
    """The paper's name for fidelity under this encoder; other encoders get the neutral "fidelity"."""
    return LABELS.get(encoder.family, "fidelity")


def subject_fidelity(generated: torch.Tensor, real: torch.Tensor) -> float:
    """DINO / CLIP-I: mean cos(g_i, r_j) over all pairs; rows of generated (N, D) and real (M, D) are unit
    embeddings from one encoder. Higher = more faithful to the subject."""
    return float((generated @ real.T).mean())


def self_similarity(e: torch.Tensor) -> float:
    """Mean cosine over ordered pairs of *different* rows: the real-vs-real reference (paper: 0.774 DINO)."""
    n = e.shape[0]
    if n < 2:
        raise ValueError("self-similarity needs at least 2 embeddings")
    sims = e @ e.T  # (n, n), diagonal is 1
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))

