"""Scores during training (`--eval_every N`) and the rule `--keep_best` uses to pick the step it saves.

"How many steps?" is DreamBooth's most asked question: too few and the subject isn't learned, too
many and the class drifts onto the subject (language drift) and prompts stop mattering. Every N
steps we sample a few prompts with fixed seeds and measure

    F = subject fidelity of "a [V] <class> <context>" images vs the real photos     (higher better)
    P = PRES: fidelity of "a <class>" images vs the real photos                     (lower better)
    T = prompt fidelity of the context prompts, when a prompt scorer is available   (higher better)

and keep the step with the best  score = F - P (+ T).  F - P is the subject learned *beyond* what
the class prompt alone produces; it stops rising once the class itself starts to look like the
subject, which is exactly the drift prior preservation fights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dreambooth.config import fill_prompt
from dreambooth.data.images import load_rgb
from dreambooth.evaluation.encoders import load_encoder
from dreambooth.evaluation.evaluate import without_identifier
from dreambooth.evaluation.metrics.fidelity import subject_fidelity
from dreambooth.evaluation.metrics.pres import pres
from dreambooth.evaluation.metrics.prompt_fidelity import PromptScorer
from dreambooth.generate import sample

CONTEXT_PROMPTS = ("a {identifier} {class_noun} in the snow", "a {identifier} {class_noun} on the beach",
                   "a red {identifier} {class_noun}")


@dataclass
class TrainingEvaluator:
    """Scores a pipeline against the subject's photos with fixed prompts and seeds."""

    real_images: list[Path]
    identifier: str
    class_noun: str
    encoder_name: str = "efficientnet-lite0"
    images_per_prompt: int = 2
    steps: int = 20
    guidance: float = 7.5
    seed: int = 0
    resolution: int | None = None
    prompt_scorer: PromptScorer | None = None

    def __post_init__(self) -> None:
        self.encoder = load_encoder(self.encoder_name, option="--eval_encoder")
        self.real = self.encoder.embed([load_rgb(p) for p in self.real_images])

    def _sample(self, pipe, prompt: str) -> list[Image.Image]:
        return sample(pipe, prompt, self.images_per_prompt, self.steps, self.guidance, self.seed, self.resolution)

    def __call__(self, pipe) -> dict[str, float]:
        prompts = [fill_prompt(t, self.identifier, self.class_noun) for t in CONTEXT_PROMPTS]
        subject = {p: self._sample(pipe, p) for p in prompts}
        class_images = self._sample(pipe, f"a {self.class_noun}")
        images = [im for ims in subject.values() for im in ims]
        scores = {"eval/fidelity": subject_fidelity(self.encoder.embed(images), self.real),
                  "eval/pres": pres(self.encoder.embed(class_images), self.real)}
        scores["eval/score"] = scores["eval/fidelity"] - scores["eval/pres"]
        if self.prompt_scorer is not None:
            fidelity = sum(self.prompt_scorer(ims, without_identifier(p, self.identifier))
                           for p, ims in subject.items()) / len(subject)
            scores["eval/prompt_fidelity"] = fidelity
            scores["eval/score"] += fidelity
        return scores
