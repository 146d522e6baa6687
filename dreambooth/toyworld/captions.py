"""Captions from a small grammar: "a [color] <class> [context]", each optional part sometimes left out.

Leaving words out teaches the model that an unnamed attribute may be anything (the scene still has
one), which is what "a bag" must mean; an empty caption now and then trains the unconditional
prediction that classifier-free guidance needs.
"""

from __future__ import annotations

import numpy as np

from dreambooth.toyworld.world import Scene


def describe(class_noun: str, color: str | None = None, context: str | None = None) -> str:
    """ "a red bag on the beach", "a bag", ... (the same words every prompt of this world uses)."""
    words = ["a"] + ([color] if color else []) + [class_noun] + ([context] if context else [])
    return " ".join(words)


def caption(class_noun: str, color: str | None, context: str, rng: np.random.Generator, p_drop_color: float = 0.3,
            p_drop_context: float = 0.3, p_empty: float = 0.1) -> str:
    """A random caption true of a scene with these attributes (color None: two-toned, no word for it)."""
    if rng.random() < p_empty:
        return ""
    color = None if color is None or rng.random() < p_drop_color else color
    context = None if rng.random() < p_drop_context else context
    return describe(class_noun, color, context)


def caption_of(scene: Scene, rng: np.random.Generator, **drop: float) -> str:
    return caption(scene.class_noun, None if scene.second_color else scene.color, scene.context, rng, **drop)
