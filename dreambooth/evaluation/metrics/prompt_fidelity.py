"""Prompt fidelity (paper Sec. 4.1): how well images follow their prompt.

The paper's CLIP-T is the cosine between the CLIP text embedding of the prompt and each image's CLIP image
embedding, averaged; the prompt is read without the identifier, the usual convention (the paper does not
say). Any `PromptScorer` can stand in, e.g. the toy world's judge, which knows what each prompt asks for.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image

from dreambooth.errors import ConfigError
from dreambooth.evaluation.encoders import HFEncoder, load_encoder


@runtime_checkable
class PromptScorer(Protocol):
    name: str

    def __call__(self, images: list[Image.Image], prompt: str) -> float:
        """Mean agreement of `images` with `prompt` (higher = better)."""


class ClipT:
    """CLIP-T with a local CLIP model (an `hf:` encoder of family "clip")."""

    def __init__(self, clip: HFEncoder) -> None:
        clip.embed_text([""])  # fails now, with the fix, if this is not a CLIP model with a tokenizer
        self.clip = clip
        self.name = f"CLIP-T[{clip.name}]"

    def __call__(self, images: list[Image.Image], prompt: str) -> float:
        text = self.clip.embed_text([prompt])  # (1, D)
        return float((self.clip.embed(images) @ text.T).mean())


def load_prompt_scorer(name: str, option: str) -> PromptScorer | None:
    """By name: none, the toy world's judge, or CLIP-T with a local CLIP model (`hf:<folder>`)."""
    if name == "none":
        return None
    if name == "toy-judge":
        from dreambooth.toyworld.judge import JudgeScorer

        return JudgeScorer()
    if name.startswith("hf:"):
        try:
            return ClipT(load_encoder(name, option=option))
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None
    raise ConfigError(f"{option} {name!r}: unknown; use none, toy-judge or hf:<CLIP model folder>")
