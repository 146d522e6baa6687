"""Loading a base Stable Diffusion model from a local diffusers folder, and its fingerprint."""

from __future__ import annotations

from pathlib import Path

CLIP_TOKENIZER_DIR = str(Path(__file__).parent / "assets" / "clip-tokenizer")
