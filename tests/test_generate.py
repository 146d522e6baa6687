"""Sampling: the images depend on the seed, not on how many are drawn at once."""

import numpy as np

from dreambooth.generate import sample
from dreambooth.models import load_pipeline


def test_images_do_not_depend_on_the_batch_size(tiny_sd):
    pipe = load_pipeline(tiny_sd)
    whole, chunked = ([np.asarray(im, dtype=np.int16) for im in sample(pipe, "a dog", 3, 2, 7.5, seed=5, batch_size=b)]
                      for b in (3, 2))
    assert len(chunked) == 3
    assert max(np.abs(a - b).max() for a, b in zip(whole, chunked)) <= 1
    assert np.abs(whole[0] - whole[1]).max() > 1  # and the seeds do differ


def test_generate_shows_its_progress_in_images(tiny_sd, tmp_path, capsys):
    from dreambooth.cli import main

    assert main(["generate", "--model", str(tiny_sd), "--prompt", "a dog", "-n", "3", "--batch_size", "2",
                 "--steps", "2", "--output", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "sampling: 100%" in err and "3/3" in err


def test_generate_into_a_used_folder_keeps_only_this_prompts_images(tiny_sd, tmp_path):
    """An earlier call's images would be scored as this prompt's by `evaluate --images`."""
    from dreambooth.cli import main

    common = ["generate", "--model", str(tiny_sd), "--steps", "2", "--output", str(tmp_path)]
    assert main([*common, "--prompt", "a dog", "-n", "3"]) == 0
    assert main([*common, "--prompt", "a cat", "-n", "2", "--seed", "7"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000007.png", "000008.png", "grid.png"]
    assert (tmp_path / "prompt.txt").read_text() == "a cat\n"


def test_an_unknown_placeholder_is_refused_before_sampling(tiny_sd, tmp_path, capsys):
    from dreambooth.cli import main

    assert main(["generate", "--model", str(tiny_sd), "--prompt", "a {identifer} dog", "--output", str(tmp_path)]) == 2
    assert "--prompt: unknown placeholder {identifer}; use {identifier} or {class_noun}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
