"""Sampling: the images depend on the seed, not on how many are drawn at once."""

import numpy as np

from dreambooth.generate import sample
from dreambooth.models import load_pipeline
from tests.tiny_models import IMAGE_SIZE


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
    assert main([*common, "--prompt", "a dog", "-n", "3", "--seed", "999999"]) == 0  # 999999, ..., 1000001
    assert main([*common, "--prompt", "a cat", "-n", "2", "--seed", "7"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000007.png", "000008.png", "grid.png"]
    assert (tmp_path / "prompt.txt").read_text() == "a cat\n"


def test_an_unknown_placeholder_is_refused_before_sampling(tiny_sd, tmp_path, capsys):
    from dreambooth.cli import main

    assert main(["generate", "--model", str(tiny_sd), "--prompt", "a {identifer} dog", "--output", str(tmp_path)]) == 2
    assert "--prompt: unknown placeholder {identifer}; use {identifier} or {class_noun}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_failed_call_keeps_the_earlier_images_and_no_new_folder(tiny_sd, tmp_path, monkeypatch, capsys):
    """A full disk while saving leaves the earlier call's files as they were; a call that fails before any
    image leaves no folder it created."""
    import errno

    from PIL import Image

    from dreambooth.cli import main
    from tests.test_cli import exit_code

    common = ["generate", "--model", str(tiny_sd), "--steps", "2", "--output", str(tmp_path / "samples")]
    assert main([*common, "--prompt", "a dog", "-n", "2"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "samples").iterdir()}
    save = Image.Image.save

    def second_save_fails(image, path, *args, **kwargs):
        if str(path).endswith("000001.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", second_save_fails)
    assert main([*common, "--prompt", "a cat", "-n", "3", "--seed", "0"]) == 1
    assert "disk" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "samples").iterdir()} == before
    monkeypatch.undo()
    new = tmp_path / "new"
    assert main(["generate", "--model", str(tiny_sd), "--prompt", "a {identifier} dog", "--output", str(new)]) == 2
    assert not new.exists()
    assert exit_code(["generate", "--model", str(tiny_sd), "--prompt", "a dog", "--seed", str(2**32)]) == 2
    assert "give a seed below 2**32" in capsys.readouterr().err


def test_generate_samples_at_the_trained_size_or_the_one_asked(tiny_sd, tmp_path):
    """A model trained at another size than its native one samples at it, as its validation grids did;
    --height/--width ask for another (one alone gives a square); --negative_prompt changes the images."""
    import shutil

    import yaml
    from PIL import Image

    from dreambooth.cli import main

    model = shutil.copytree(tiny_sd, tmp_path / "model")
    (model / "dreambooth_config.yaml").write_text(yaml.safe_dump({"resolution": 64, "identifier": "zwx"}))
    common = ["generate", "--model", str(model), "--steps", "2", "-n", "1", "--prompt", "a {identifier} dog"]
    for extra, size in [([], (64, 64)), (["--height", "32", "--width", "48"], (48, 32)), (["--width", "48"], (48, 64))]:
        assert main([*common, *extra, "--output", str(tmp_path / "out")]) == 0
        assert Image.open(tmp_path / "out" / "000000.png").size == size
    plain = np.asarray(Image.open(tmp_path / "out" / "000000.png"), np.int16)
    assert main([*common, "--width", "48", "--negative_prompt", "a cat", "--output", str(tmp_path / "out")]) == 0
    negated = np.asarray(Image.open(tmp_path / "out" / "000000.png"), np.int16)
    assert np.abs(negated - plain).max() > 0
    # the negative prompt's placeholders are filled as the prompt's, and a typo refused the same way
    assert main([*common, "--width", "48", "--negative_prompt", "{identifier}", "--output", str(tmp_path / "o2")]) == 0
    assert main([*common, "--width", "48", "--negative_prompt", "zwx", "--output", str(tmp_path / "o3")]) == 0
    assert np.array_equal(*(np.asarray(Image.open(tmp_path / o / "000000.png")) for o in ("o2", "o3")))
    assert main([*common, "--negative_prompt", "{identifer}"]) == 2
    assert main([*common, "--lora_scale", "0.5"]) == 2  # a full pipeline has no adapters to scale
    from tests.test_cli import exit_code

    assert exit_code([*common, "--height", "30"]) == 2  # diffusers needs multiples of 8: refused before loading
    # a model with no record: the side not asked for is its native size
    assert main(["generate", "--model", str(tiny_sd), "--steps", "2", "-n", "1", "--prompt", "a dog", "--width", "48",
                 "--output", str(tmp_path / "native")]) == 0
    assert Image.open(tmp_path / "native" / "000000.png").size == (48, IMAGE_SIZE)


def test_evaluate_samples_at_the_trained_size_too(tiny_sd, tmp_path):
    import shutil

    import yaml
    from PIL import Image

    from dreambooth.evaluation.evaluate import generate_images

    model = shutil.copytree(tiny_sd, tmp_path / "model")
    (model / "dreambooth_config.yaml").write_text(yaml.safe_dump({"resolution": 64}))
    out = generate_images(model, ["a dog"], 1, seed=0, steps=2, guidance=7.5, out=tmp_path / "images")
    assert [Image.open(p).size for p in out.glob("*/*.png")] == [(64, 64)]


def test_ctrl_c_waits_for_the_swap_of_an_earlier_calls_images(tiny_sd, tmp_path, monkeypatch):
    """Cut half-way, the swap would leave some of each call's images; a thread besides the main one (tqdm's
    monitor, torch's workers) must not let the signal through either."""
    import os
    import signal
    import threading

    from dreambooth import generate
    from dreambooth.cli import main

    common = ["generate", "--model", str(tiny_sd), "--steps", "2", "--output", str(tmp_path)]
    assert main([*common, "--prompt", "a dog", "-n", "2"]) == 0
    replace, moved = os.replace, []

    def signalled_on_first_move(source, target):
        if not moved:
            os.kill(os.getpid(), signal.SIGINT)
        moved.append(target)
        replace(source, target)

    monkeypatch.setattr(generate.os, "replace", signalled_on_first_move)
    idle = threading.Event()
    threading.Thread(target=idle.wait, daemon=True).start()
    try:
        assert main([*common, "--prompt", "a cat", "-n", "3", "--seed", "5"]) == 130
    finally:
        idle.set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000005.png", "000006.png", "000007.png", "grid.png",
                                                          "prompt.txt"]
    assert (tmp_path / "prompt.txt").read_text() == "a cat\n"
