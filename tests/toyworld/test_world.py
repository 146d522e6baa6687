"""The toy world renders deterministically, and captions say what the renders show."""

import numpy as np
import pytest

from dreambooth.toyworld import captions, world

SQUARE = np.zeros((28, 28), np.uint8)
SQUARE[4:24, 4:24] = 255  # a stand-in item: tests don't need the Fashion-MNIST package


def scene(seed, **kw):
    return world.sample_scene(np.random.default_rng(seed), SQUARE, "bag", **kw)


def test_same_seed_same_image_different_seed_different():
    assert np.array_equal(world.render(scene(1)), world.render(scene(1)))
    assert not np.array_equal(world.render(scene(1)), world.render(scene(2)))
    assert world.render(scene(3)).shape == (64, 64, 3) and world.render(scene(3)).dtype == np.uint8


@pytest.mark.parametrize("color", list(world.COLORS))
def test_object_pixels_show_the_named_color(color):
    for seed in range(5):
        s = scene(seed, color=color)
        img = world.render(s).astype(np.float32)
        inner = img[s.y + s.size // 3: s.y + 2 * s.size // 3, s.x + s.size // 3: s.x + 2 * s.size // 3]
        mean = inner.reshape(-1, 3).mean(0) / s.light
        nearest = min(world.COLORS, key=lambda c: np.linalg.norm(np.array(world.COLORS[c]) - mean))
        assert nearest == color


def test_every_context_is_recognisable_from_its_background():
    """A nearest-centroid reader of simple background statistics tells the 11 contexts apart."""
    def features(img):
        img = img.astype(np.float32)
        return np.concatenate([img[:21].mean((0, 1)), img[21:43].mean((0, 1)), img[43:].mean((0, 1)),
                               np.abs(np.diff(img, axis=0)).mean((0, 1)), np.abs(np.diff(img, axis=1)).mean((0, 1))])

    centroids = {c: np.mean([features(world.background(c, s)) for s in range(10)], 0) for c in world.CONTEXTS}
    for c in world.CONTEXTS:
        for s in range(100, 110):
            f = features(world.background(c, s))
            assert min(centroids, key=lambda k: np.linalg.norm(centroids[k] - f)) == c


def test_two_tone_subjects_have_both_colors():
    s = world.Scene(item=SQUARE, class_noun="bag", color="red", context="on the beach", x=10, y=10, size=40,
                    second_color="blue", pattern="top-bottom")
    img = world.render(s).astype(int)
    assert img[18, 30].argmax() == 0 and img[42, 30].argmax() == 2  # red on top, blue below


def test_captions_follow_the_grammar_and_the_scene():
    rng = np.random.default_rng(0)
    s = scene(0, color="purple", context="in the snow")
    seen = {captions.caption_of(s, rng) for _ in range(300)}
    assert seen == {"", "a bag", "a purple bag", "a bag in the snow", "a purple bag in the snow"}
    two_tone = world.Scene(item=SQUARE, class_noun="bag", color="red", context="in the snow", x=0, y=0, size=30,
                           second_color="blue", pattern="stripes")
    assert all("red" not in captions.caption_of(two_tone, rng) for _ in range(100))
