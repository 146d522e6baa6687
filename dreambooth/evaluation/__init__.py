"""The DreamBooth paper's evaluation (Sec. 4.1, 4.3) with offline encoders; see docs/evaluation.md."""

from dreambooth.evaluation.encoders import DEFAULT_ENCODERS, ImageEncoder, load_encoder
from dreambooth.evaluation.evaluate import PromptImages, evaluate
from dreambooth.evaluation.metrics.prompt_fidelity import ClipT, PromptScorer
from dreambooth.evaluation.prompts import load_prompts
from dreambooth.evaluation.report import write_report

__all__ = ["DEFAULT_ENCODERS", "ClipT", "ImageEncoder", "PromptImages", "PromptScorer", "evaluate",
           "load_encoder", "load_prompts", "write_report"]
