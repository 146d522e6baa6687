"""The locator marks the object's pixels, and object crops keep just those, on gray."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dreambooth.errors import ModelError
from dreambooth.toyworld import locator, world
from tests.evaluation.fakes import PixelEncoder

DIAMOND = np.clip(14 - np.abs(np.arange(28)[:, None] - 13.5) - np.abs(np.arange(28)[None, :] - 13.5), 0, 1)
DIAMOND = (DIAMOND * 255).astype(np.uint8)  # a shape no Fashion-MNIST class has: tests don't need the package


def test_object_mask_covers_exactly_the_pixels_the_object_changes():
    scene = world.sample_scene(np.random.default_rng(0), DIAMOND, "bag", context="on top of a white rug")
    changed = np.any(world.render(scene) != np.clip(world.background(scene.context, scene.context_seed) * scene.light,
                                                    0, 255).astype(np.uint8), axis=-1)
    mask = world.object_mask(scene)
    assert mask.shape == (64, 64) and mask.max() == 1.0
    assert np.array_equal(changed, mask > 0)


def test_object_crop_is_the_square_around_the_mask_with_the_rest_gray():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[20:40, 30:40] = (200, 0, 0)  # a red object 20 tall, 10 wide
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 30:40] = 1
    crop = np.asarray(locator.object_crop(Image.fromarray(pixels), mask))
    assert crop.shape == (20, 20, 3)  # square, as tall as the object, centred on it
    assert (crop[:, 5:15] == (200, 0, 0)).all()
    assert (crop[:, :5] == locator.GROUND).all() and (crop[:, 15:] == locator.GROUND).all()


def test_object_crop_leaves_out_stray_marks_away_from_the_object():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[20:40, 30:40] = (200, 0, 0)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 30:40] = 1
    mask[55:58, 2:5] = 0.9  # a small mark far off
    mask[40, 30:40] = 0.3  # the object's soft rim
    crop = np.asarray(locator.object_crop(Image.fromarray(pixels), mask))
    assert crop.shape == (20, 20, 3) and (crop[:, 5:15] == (200, 0, 0)).all()
    assert np.array_equal(locator.main_blob(mask)[55:58, 2:5], np.zeros((3, 3)))
    assert np.array_equal(locator.main_blob(mask)[20:41], mask[20:41])  # the object and its rim kept


def test_of_two_equal_blobs_the_crop_keeps_one():
    mask = np.zeros((64, 64), np.float32)
    mask[2:14, 2:14] = mask[40:52, 40:52] = 1
    assert locator.object_crop(Image.new("RGB", (64, 64)), mask).size == (12, 12)


def test_an_object_at_the_border_is_cropped_whole():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[0:10, 54:64] = 255
    mask = (pixels[..., 0] > 0).astype(np.float32)
    crop = np.asarray(locator.object_crop(Image.fromarray(pixels), mask))
    assert crop.shape == (10, 10, 3) and (crop == 255).all()


def test_an_image_where_nothing_is_found_comes_back_whole_and_gray():
    crop = locator.object_crop(Image.new("RGB", (64, 64), (10, 200, 10)), np.zeros((64, 64), np.float32))
    assert crop.size == (64, 64) and (np.asarray(crop) == locator.GROUND).all()


class FixedLocator(torch.nn.Module):
    """Says the object is the 16x16 square at the top left, whatever the image."""

    def forward(self, pixels):
        logits = torch.full((pixels.shape[0], 64, 64), -10.0)
        logits[:, :16, :16] = 10.0
        return logits


def test_object_crops_encoder_embeds_the_crops_and_names_itself_after_its_encoder():
    encoder = locator.ObjectCrops(PixelEncoder(), FixedLocator())
    assert (encoder.name, encoder.family) == ("fake-pixels, object crops", "dino")
    images = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for s in (0, 1)]
    expected = PixelEncoder().embed([im.crop((0, 0, 16, 16)) for im in images])
    assert torch.allclose(encoder.embed(images), expected, atol=1e-2)  # the soft mask's 1e-4 leaves a trace


def test_saved_locator_loads_at_its_own_width(tmp_path, monkeypatch):
    monkeypatch.setattr(locator, "rendered_batch", lambda *a, **k: (torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64)))
    trained = locator.train(tmp_path, steps=1, batch=2, width=4)
    loaded = locator.load(tmp_path)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(trained(pixels), loaded(pixels))
    assert not list(tmp_path.glob("*.tmp"))


def test_the_train_command_trains_saves_and_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(locator, "rendered_batch", lambda *a, **k: (torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64)))
    monkeypatch.setattr(locator, "accuracy", lambda *a, **k: 0.5)
    monkeypatch.setattr(sys, "argv", ["locator", "train", "--out", str(tmp_path), "--steps", "1", "--batch", "3"])
    locator.main()
    with safe_open(tmp_path / "locator.safetensors", "pt") as weights:
        assert weights.metadata()["batch"] == "3"
    assert json.loads((tmp_path / "accuracy.json").read_text())["mean IoU on held-out renders"]["clean"] == 0.5


def test_a_folder_without_weights_is_a_one_line_model_error(tmp_path):
    with pytest.raises(ModelError, match="locator.safetensors not found; pass a folder that `train --out` wrote"):
        locator.load(tmp_path)


@pytest.mark.parametrize("context", world.CONTEXTS)
def test_the_shipped_locator_finds_an_object_it_never_saw_on_every_context(context):
    rng = np.random.default_rng(1)
    scenes = [world.sample_scene(rng, DIAMOND, "bag", context=context) for _ in range(8)]
    found = locator.object_masks(locator.load(), [Image.fromarray(world.render(s)) for s in scenes]) > 0.5
    truth = torch.from_numpy(np.stack([world.object_mask(s) for s in scenes])) > 0.5
    iou = (found & truth).sum((1, 2)) / (found | truth).sum((1, 2))
    assert iou.mean() > 0.8
