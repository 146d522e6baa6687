"""Quality-meter arithmetic with known answers: VAE round-trip PSNR, accuracy class by class."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dreambooth.errors import run_command
from dreambooth.toyworld import model_card, quality


class OffsetVAE:
    """Round trip = input + 0.2 everywhere (in [-1, 1] units): PSNR = 10 log10(2^2 / 0.2^2) = 20 dB."""

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z):
        return SimpleNamespace(sample=z + 0.2)


def test_reconstruction_psnr_per_subject(tmp_path):
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "subject.json").write_text("{}")
        Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(folder / "00.png")  # mid-grey: no clamping
    psnr = quality.reconstruction_psnr(OffsetVAE(), tmp_path)
    assert set(psnr) == {"a", "b"}
    assert all(v == pytest.approx(20.0, abs=1e-3) for v in psnr.values())


def test_vae_round_trip_returns_what_the_decoder_gives_back():
    images = [Image.fromarray(np.full((64, 64, 3), v, np.uint8)) for v in (0, 100, 250)] * 3
    out = quality.vae_round_trip(OffsetVAE(), images, batch=4)  # batches of 4, 4, 1
    means = [np.asarray(im, np.float32).mean() for im in out]
    assert means == pytest.approx([25.5, 125.5, 255.0] * 3, abs=0.51)  # +0.2 is +25.5 of 255; clamped at the top


def test_class_accuracy_is_per_class():
    cells = [{"class": "bag"}, {"class": "bag"}, {"class": "boot"}] + [{"class": n} for n in quality.fashion_mnist.CLASS_NOUNS]
    readings = [{"class": "bag"}, {"class": "boot"}, {"class": "boot"}] + [{"class": "bag"}] * 10
    per_class = quality.class_accuracy(readings, cells)
    assert per_class["bag"] == 2 / 3 and per_class["boot"] == 1 / 2 and per_class["trouser"] == 0


def test_class_read_as_says_what_each_prompted_class_was_drawn_as():
    cells = [{"class": "boot"}] * 4 + [{"class": n} for n in quality.fashion_mnist.CLASS_NOUNS if n != "boot"]
    readings = [{"class": "sneaker"}] * 3 + [{"class": "boot"}] + [{"class": "bag"}] * 9
    read_as = quality.class_read_as(readings, cells)
    assert read_as["boot"] == {"sneaker": 0.75, "boot": 0.25}
    assert "boot" not in quality.class_read_as(readings[4:], cells[4:])  # not prompted: no score at all
    assert quality.class_accuracy(readings, cells)["boot"] == 0.25


@pytest.mark.parametrize("argv", [["--every", "0"], ["--every", "11"], ["--every", "4", "--record"],
                                  ["--every", "2", "--sheet", "x.png"]])
def test_partial_grid_is_refused_where_it_would_be_recorded_or_drawn(argv, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["quality", "--model", "m", *argv])
    with pytest.raises(SystemExit) as exit_:
        quality.main()
    assert exit_.value.code == 2 and "--every" in capsys.readouterr().err


def test_model_card_names_what_each_class_is_drawn_as_instead(tmp_path):
    (tmp_path / "pretrain_config.json").write_text("{}")
    per_class = {n: 1.0 for n in quality.fashion_mnist.CLASS_NOUNS}
    record = {model_card.GENERATED: {"class": 0.5, "context": 0.9, "color": 0.8},
              model_card.RENDERED: {"class": 0.9, "context": 1.0, "color": 1.0},
              model_card.PER_CLASS: {model_card.GENERATED: {**per_class, "boot": 0.25}, model_card.RENDERED: per_class},
              model_card.READ_AS: {**{n: {n: 1.0} for n in per_class}, "boot": {"sneaker": 0.5, "sandal": 0.25, "boot": 0.25}},
              "prompts": 880, "steps": 20, "guidance": 7.5}
    (tmp_path / "quality.json").write_text(json.dumps(record))
    model_card.write_model_card(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "| boot | 0.25 | 1.00 | sneaker (0.50) |" in card
    assert "| bag | 1.00 | 1.00 | – |" in card
    assert "| class | 0.500 | 0.900 | ≥ 0.80: **not met** |" in card
    del record[model_card.READ_AS]  # a record made before the column existed: no column, not a row of dashes
    (tmp_path / "quality.json").write_text(json.dumps(record))
    model_card.write_model_card(tmp_path)
    assert "| boot | 0.25 | 1.00 |\n" in (tmp_path / "README.md").read_text()


def test_model_card_puts_the_vae_round_trip_between_generated_and_rendered(tmp_path):
    (tmp_path / "pretrain_config.json").write_text("{}")
    per_class = {n: 1.0 for n in quality.fashion_mnist.CLASS_NOUNS}
    record = {model_card.GENERATED: {"class": 0.5, "context": 0.9, "color": 0.8},
              model_card.ROUND_TRIP: {"class": 0.7, "context": 1.0, "color": 0.95},
              model_card.RENDERED: {"class": 0.9, "context": 1.0, "color": 1.0},
              model_card.PER_CLASS: {model_card.GENERATED: {**per_class, "boot": 0.25},
                                     model_card.ROUND_TRIP: {**per_class, "boot": 0.5}, model_card.RENDERED: per_class},
              "prompts": 880, "steps": 20, "guidance": 7.5}
    (tmp_path / "quality.json").write_text(json.dumps(record))
    model_card.write_model_card(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert f"| attribute | generated | {model_card.ROUND_TRIP} | {model_card.RENDERED} | target |\n|---|---|---|---|---|" in card
    assert "| class | 0.500 | 0.700 | 0.900 | ≥ 0.80: **not met** |" in card
    assert "| boot | 0.25 | 0.50 | 1.00 |\n" in card


def test_a_missing_model_folder_is_one_line_naming_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["quality", "--model", str(tmp_path / "nowhere")])
    assert run_command(quality.main) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model:") and err.count("\n") == 1


def test_model_card_command_carries_the_min_snr_option(tmp_path):
    (tmp_path / "pretrain_config.json").write_text(json.dumps({"snr_gamma": 5.0}))
    model_card.write_model_card(tmp_path)
    assert "`python -m dreambooth.toyworld.pretrain --out <folder> --snr_gamma 5 --threads 2`" in (
        tmp_path / "README.md").read_text()
    (tmp_path / "pretrain_config.json").write_text(json.dumps({"snr_gamma": None}))
    model_card.write_model_card(tmp_path)
    assert "`python -m dreambooth.toyworld.pretrain --out <folder> --threads 2`" in (tmp_path / "README.md").read_text()
