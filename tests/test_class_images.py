import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from dreambooth import class_images
from dreambooth.class_images import ClassImageSpec, cache_key, ensure_class_images, model_fingerprint
from dreambooth.models import load_pipeline, load_sampling_scheduler


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return load_pipeline(tiny_sd)


def make_spec(model, **changes) -> ClassImageSpec:
    sampler = load_sampling_scheduler(model)
    fields = dict(model_path=model, prompt="a dog", resolution=32, sampler=type(sampler).__name__,
                  sampler_config=dict(sampler.config), num_inference_steps=2, guidance_scale=7.5, seed=0)
    return ClassImageSpec(**{**fields, **changes})


class Loader:
    """Counts how often the pipeline is loaded."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    def __call__(self):
        self.calls += 1
        return self.pipe


def no_load():
    raise AssertionError("the cache was warm; the model should not have been loaded")


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_generates_then_reuses_without_loading(tiny_sd, pipe, tmp_path):
    loader = Loader(pipe)
    paths = ensure_class_images(make_spec(tiny_sd), tmp_path, 5, None, loader, batch_size=2, progress=False)
    assert loader.calls == 1
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(5)]
    assert all(Image.open(p).size == (32, 32) for p in paths)
    assert paths[0].parent.name.startswith("a-dog-") and (paths[0].parent / "spec.json").is_file()
    assert not list(paths[0].parent.glob(".*"))  # no temp files left behind
    again = ensure_class_images(make_spec(tiny_sd), tmp_path, 5, None, no_load, batch_size=2, progress=False)
    assert again == paths


def test_a_copy_of_the_model_shares_the_cache(tiny_sd, pipe, tmp_path):
    paths = ensure_class_images(make_spec(tiny_sd), tmp_path / "cache", 2, None, Loader(pipe), 2, False)
    copy = shutil.copytree(tiny_sd, tmp_path / "elsewhere" / "model")
    assert ensure_class_images(make_spec(copy), tmp_path / "cache", 2, None, no_load, 2, False) == paths


def test_changed_weights_change_the_fingerprint(tiny_sd, tmp_path):
    copy = shutil.copytree(tiny_sd, tmp_path / "model")
    before = model_fingerprint(copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != before


def test_what_from_pretrained_does_not_read_leaves_the_fingerprint_alone(tiny_sd, tmp_path):
    copy = shutil.copytree(tiny_sd, tmp_path / "model")
    before = model_fingerprint(copy)
    (copy / "quality.json").write_text('{"class": 0.5}')
    (copy / "README.md").write_text("# a model card")
    (copy / "samples").mkdir()
    (copy / "samples" / "prompt.txt").write_text("a dog")  # what `generate --model` writes by default
    (copy / "checkpoint-5").mkdir()
    (copy / "checkpoint-5" / "model.safetensors").write_bytes(b"...")
    assert model_fingerprint(copy) == before
    (copy / "model_index.json").write_text((copy / "model_index.json").read_text() + "\n")
    assert model_fingerprint(copy) != before


def test_fingerprint_is_memoized(tiny_sd, tmp_path, monkeypatch):
    first = model_fingerprint(tiny_sd, tmp_path)
    assert (tmp_path / "fingerprints.json").is_file()
    monkeypatch.setattr(class_images, "_file_sha256", lambda path: pytest.fail(f"re-hashed {path}"))
    assert model_fingerprint(tiny_sd, tmp_path) == first


def test_a_shared_cache_is_readable_by_other_users(tiny_sd, pipe, tmp_path):
    """Cache files get the mode any new file gets (0644 under umask 022), not mkstemp's owner-only 0600."""
    previous = os.umask(0o022)
    try:
        paths = ensure_class_images(make_spec(tiny_sd), tmp_path, 1, None, Loader(pipe), batch_size=1, progress=False)
    finally:
        os.umask(previous)
    for path in (paths[0], paths[0].parent / "spec.json", tmp_path / "fingerprints.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_full_cache_that_cannot_be_written_is_read_as_it_is(tiny_sd, pipe, tmp_path, monkeypatch):
    """A cache another user filled (read-only here) serves its images; the fingerprint memo is a speed-up."""
    paths = ensure_class_images(make_spec(tiny_sd), tmp_path, 2, None, Loader(pipe), batch_size=2, progress=False)

    def read_only(path, write, unique=False):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(class_images, "write_atomic", read_only)
    assert ensure_class_images(make_spec(tiny_sd), tmp_path, 2, None, no_load, batch_size=2, progress=False) == paths
    (tmp_path / "fingerprints.json").unlink()  # the memo would change: its write fails, and is skipped
    assert ensure_class_images(make_spec(tiny_sd), tmp_path, 2, None, no_load, batch_size=2, progress=False) == paths


def test_temp_files_of_killed_writes_are_cleaned_up(tiny_sd, pipe, tmp_path):
    folder = class_images.cache_folder(make_spec(tiny_sd), tmp_path)
    stale, live = folder / ".000000.png.k1ll3d.tmp", folder / ".000001.png.wr1t1n.tmp"
    for leftover in (stale, live, tmp_path / ".fingerprints.json.old.tmp"):
        leftover.write_bytes(b"partial")
    for old in (stale, tmp_path / ".fingerprints.json.old.tmp"):
        os.utime(old, (0, 0))  # written long ago: its writer is gone
    ensure_class_images(make_spec(tiny_sd), tmp_path, 1, None, Loader(pipe), batch_size=1, progress=False)
    assert not stale.exists() and not (tmp_path / ".fingerprints.json.old.tmp").exists()
    assert live.exists()  # maybe another process writing right now


@pytest.mark.parametrize("change", [dict(prompt="a cat"), dict(seed=1), dict(num_inference_steps=3),
                                    dict(guidance_scale=5.0), dict(resolution=64), dict(negative_prompt="blurry"),
                                    dict(sampler="EulerDiscreteScheduler"), dict(precision="bf16")])
def test_every_setting_is_in_the_key(tiny_sd, change):
    fingerprint = model_fingerprint(tiny_sd)
    assert cache_key(make_spec(tiny_sd, **change), fingerprint) != cache_key(make_spec(tiny_sd), fingerprint)
    assert cache_key(make_spec(tiny_sd), fingerprint) != cache_key(make_spec(tiny_sd), "0" * 64)


def test_class_images_are_drawn_in_fp16_on_a_gpu_and_fp32_elsewhere_unless_chosen():
    # diffusers' rule for its --prior_generation_precision ("no" is its spelling of unset)
    assert [class_images.drawing_precision(choice, "cuda") for choice in (None, "no", "fp32", "bf16")] == [
        "fp16", "fp16", "fp32", "bf16"]
    assert [class_images.drawing_precision(choice, "cpu") for choice in (None, "no", "fp16")] == ["fp32", "fp32", "fp16"]


def test_caches_drawn_before_precision_was_recorded_keep_their_keys(tmp_path):
    # images drawn in fp32 by an earlier version are found again: their key is the one it computed
    spec = ClassImageSpec(model_path=tmp_path, prompt="a dog", resolution=512, sampler="DPMSolverMultistepScheduler",
                          sampler_config={"beta_end": 0.012, "_class_name": "x"}, num_inference_steps=25,
                          guidance_scale=7.5, seed=0)
    assert cache_key(spec, "0" * 64) == "f740b823387c9f1f1f5315b7efb329a93a9dfa5d62be2de0f9e50d92303ebb4f"


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding: batches of other sizes run other CPU kernels, so pixels may differ by 1-2."""
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_resumes_exactly_the_missing_and_broken_images(tiny_sd, pipe, tmp_path):
    paths = ensure_class_images(make_spec(tiny_sd), tmp_path, 6, None, Loader(pipe), 4, False)
    originals = [pixels(p) for p in paths]
    untouched = {p: p.stat().st_mtime_ns for i, p in enumerate(paths) if i not in (1, 3, 4)}
    paths[1].unlink()
    paths[4].unlink()
    paths[3].write_bytes(paths[3].read_bytes()[:60])  # truncated mid-file, as by a crash
    Image.new("RGB", (8, 8), "red").save(paths[5])  # whole, but not what was drawn
    loader = Loader(pipe)
    again = ensure_class_images(make_spec(tiny_sd), tmp_path, 6, None, loader, 4, False)
    assert again == paths and loader.calls == 1
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items() if p != paths[5])
    for i in (1, 3, 4, 5):
        assert_same_image(pixels(paths[i]), originals[i])


def test_batch_size_does_not_change_the_images(tiny_sd, pipe, tmp_path):
    one = ensure_class_images(make_spec(tiny_sd), tmp_path / "a", 3, None, Loader(pipe), 1, False)
    three = ensure_class_images(make_spec(tiny_sd), tmp_path / "b", 3, None, Loader(pipe), 3, False)
    for a, b in zip(one, three):
        assert_same_image(pixels(a), pixels(b))
    assert len({pixels(p).tobytes() for p in one}) == 3  # each index has its own noise


def test_user_images_count_first(tiny_sd, pipe, tmp_path, subject_dir):
    user = shutil.copytree(subject_dir, tmp_path / "mine")
    (user / "broken.png").write_bytes(b"not an image")
    (user / "notes.txt").write_text("hello")
    mine = sorted(user.glob("photo_*.png"))
    assert ensure_class_images(make_spec(tiny_sd), tmp_path / "cache", 3, user, no_load, 2, False) == mine[:3]
    loader = Loader(pipe)
    paths = ensure_class_images(make_spec(tiny_sd), tmp_path / "cache", 6, user, loader, 2, False)
    assert paths[:4] == mine and [p.name for p in paths[4:]] == ["000000.png", "000001.png"]


def test_missing_user_folder_counts_as_empty(tiny_sd, pipe, tmp_path):
    """diffusers recipes name a --class_data_dir that does not exist yet: all images are generated."""
    paths = ensure_class_images(make_spec(tiny_sd), tmp_path, 2, tmp_path / "nope", Loader(pipe), 2, False)
    assert len(paths) == 2 and all(p.parent.parent == tmp_path for p in paths)


def test_a_damaged_memo_only_costs_rehashing(tiny_sd, tmp_path):
    (tmp_path / "fingerprints.json").write_text("{garbage")
    assert model_fingerprint(tiny_sd, tmp_path) == model_fingerprint(tiny_sd)
