"""Quality-meter arithmetic with known answers: VAE round-trip PSNR, accuracy class by class."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dreambooth.toyworld import quality


class OffsetVAE:
    """Round trip = input + 0.2 everywhere (in [-1, 1] units): PSNR = 10 log10(2^2 / 0.2^2) = 20 dB."""

    def eval(self):
        return self

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z):
        return SimpleNamespace(sample=z + 0.2)


def test_reconstruction_psnr_per_subject(tmp_path, monkeypatch):
    monkeypatch.setattr(quality.AutoencoderKL, "from_pretrained", lambda *a, **k: OffsetVAE())
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "subject.json").write_text("{}")
        Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(folder / "00.png")  # mid-grey: no clamping
    psnr = quality.reconstruction_psnr(tmp_path / "model", tmp_path)
    assert set(psnr) == {"a", "b"}
    assert all(v == pytest.approx(20.0, abs=1e-3) for v in psnr.values())


def test_class_accuracy_is_per_class():
    cells = [{"class": "bag"}, {"class": "bag"}, {"class": "boot"}] + [{"class": n} for n in quality.fashion_mnist.CLASS_NOUNS]
    readings = [{"class": "bag"}, {"class": "boot"}, {"class": "boot"}] + [{"class": "bag"}] * 10
    per_class = quality.class_accuracy(readings, cells)
    assert per_class["bag"] == 2 / 3 and per_class["boot"] == 1 / 2 and per_class["trouser"] == 0
