"""PRES, prior preservation (paper Sec. 4.3): subject fidelity of images generated for "a [class noun]"
after fine-tuning against the real subject photos. Lower is better: a high value means the class prompt
now renders the subject (language drift / prior collapse)."""

from __future__ import annotations

from PIL import Image

from dreambooth.evaluation.encoders import ImageEncoder
from dreambooth.evaluation.metrics.fidelity import subject_fidelity


def pres(encoder: ImageEncoder, class_images: list[Image.Image], real: list[Image.Image]) -> float:
    """Fidelity of the fine-tuned model's plain class images to the subject (lower = prior kept)."""
    return subject_fidelity(encoder, class_images, real)
