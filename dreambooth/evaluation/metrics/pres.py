"""PRES, prior preservation (paper Sec. 4.3): subject fidelity of images generated for "a [class noun]"
after fine-tuning against the real subject photos. Lower is better: a high value means the class prompt
now renders the subject (language drift / prior collapse)."""

from __future__ import annotations

import torch

from dreambooth.evaluation.metrics.fidelity import subject_fidelity


def pres(class_generated: torch.Tensor, real: torch.Tensor) -> float:
    """Fidelity of the fine-tuned model's plain class images (N, D) to the real photos (M, D), unit
    embeddings from one encoder (lower = prior kept)."""
    return subject_fidelity(class_generated, real)
