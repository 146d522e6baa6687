import pytest
import torch

from dreambooth.evaluation.metrics.div import div, lpips_style_distance, metric_name
from dreambooth.evaluation.metrics.fidelity import label, self_similarity, subject_fidelity
from dreambooth.evaluation.metrics.pres import pres
from tests.evaluation.fakes import PixelEncoder, PixelMaps, noise_image

ENC = PixelEncoder()
REAL = ENC.embed([noise_image(0)] * 3)


def embed(seeds):
    return ENC.embed([noise_image(s) for s in seeds])


def test_fidelity_of_identical_images_is_one():
    assert subject_fidelity(embed([0, 0]), REAL) == pytest.approx(1.0, abs=1e-6)


def test_unrelated_images_score_lower():
    related = subject_fidelity(embed([0]), REAL)
    unrelated = subject_fidelity(embed([5, 6, 7]), REAL)
    assert unrelated < 0.5 < related


def test_fidelity_is_symmetric_and_order_free():
    a, b = embed([1, 2, 3]), embed([4, 5])
    value = subject_fidelity(a, b)
    assert subject_fidelity(b, a) == pytest.approx(value)
    assert subject_fidelity(a.flip(0), b.flip(0)) == pytest.approx(value)


def test_self_similarity_skips_the_diagonal():
    e = torch.eye(3)  # orthogonal unit vectors: every off-diagonal cosine is 0
    assert self_similarity(e) == 0.0
    assert self_similarity(torch.ones(4, 2) / 2 ** 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        self_similarity(torch.ones(1, 2))


def test_pres_is_higher_when_class_images_look_like_the_subject():
    drifted = pres(embed([0] * 4), REAL)  # "a dog" now renders the subject
    preserved = pres(embed(range(10, 14)), REAL)
    assert drifted > preserved


def test_fidelity_label_follows_the_encoder_family():
    assert label(ENC) == "DINO"
    ENC_CLIP = type("C", (), {"family": "clip"})()
    assert label(ENC_CLIP) == "CLIP-I"


def test_div_is_zero_for_identical_images_and_grows_with_difference():
    maps = PixelMaps()
    assert div(maps, [noise_image(0)] * 3) == pytest.approx(0.0, abs=1e-6)
    varied = [noise_image(s) for s in range(4)]
    assert div(maps, varied) > 0.1
    assert div(maps, varied[::-1]) == pytest.approx(div(maps, varied))
    with pytest.raises(ValueError, match="at least 2"):
        div(maps, [noise_image(0)])
    assert metric_name(maps) == "lpips-style[fake-maps]"


def test_lpips_style_distance_of_opposite_unit_vectors_is_four():
    a = [torch.ones(1, 2, 3, 3)]
    assert lpips_style_distance(a, [-a[0]]).item() == pytest.approx(4.0)
    assert lpips_style_distance(a, a).item() == pytest.approx(0.0)
