"""kill -9 at random moments of a real training process, then resume: the result equals an
uninterrupted run, and no half-written checkpoint, class image or model is ever trusted. SIGTERM saves
a checkpoint in training's loop and stops at once before it, keeping what is written whole."""

import os
import random
import signal
import subprocess
import sys
import time

from PIL import Image

from dreambooth import checkpoints, runlog
from dreambooth.trainer import train
from tests.test_trainer import config

STEPS = 8


def args(tiny_sd, subject_dir, tmp_path):
    return ["--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
            "--class_noun", "dog", "--output_dir", str(tmp_path / "out"), "--class_cache_dir", str(tmp_path / "cache"),
            "--num_class_images", "4", "--class_inference_steps", "2", "--max_train_steps", str(STEPS),
            "--checkpointing_steps", "1", "--learning_rate", "1e-3", "--report_to", "none", "--center_crop"]


def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(tiny_sd, subject_dir, tmp_path):
    reference = runlog.read(train(config(tiny_sd, subject_dir, tmp_path / "ref", max_train_steps=STEPS,
                                         checkpointing_steps=1, num_class_images=4)))
    out, rng, kills = tmp_path / "out", random.Random(0), 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for attempt in range(20):
        resume = ["--resume_from_checkpoint", "latest"] if checkpoints.latest(out) else []
        proc = subprocess.Popen([sys.executable, "-m", "dreambooth.cli", "train",
                                 *args(tiny_sd, subject_dir, tmp_path), *resume],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # later attempts live longer (start-up alone takes seconds), so the run gets through in the end
        deadline = time.monotonic() + 1.0 + 1.5 * attempt + rng.uniform(0.0, 3.0)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        output = proc.stdout.read().decode()
        assert proc.returncode == 0, output
        break
    else:
        raise AssertionError("training never completed")
    assert kills >= 2  # the test really interrupted the run
    assert [r["loss"] for r in runlog.read(out)] == [r["loss"] for r in reference]
    assert (out / "model_index.json").is_file() and not (out / ".final.tmp").exists()
    assert not list(out.glob(".checkpoint-*.tmp"))  # leftovers of killed writes were cleaned up


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_sd, subject_dir, tmp_path):
    cmd = [sys.executable, "-m", "dreambooth.cli", "train", *args(tiny_sd, subject_dir, tmp_path),
           "--max_train_steps", "100000", "--checkpointing_steps", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    while not (out / runlog.FILE).exists():  # wait until training steps are running
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "--resume_from_checkpoint latest" in err and "Traceback" not in err
    assert checkpoints.latest(out) is not None


def test_sigterm_while_class_images_are_drawn_stops_at_once_with_one_line_and_whole_images(tiny_sd, subject_dir,
                                                                                          tmp_path):
    cmd = [sys.executable, "-m", "dreambooth.cli", "train", *args(tiny_sd, subject_dir, tmp_path),
           "--num_class_images", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache = tmp_path / "cache"
    while not any(cache.rglob("*.png")):  # wait until class images are being drawn
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "interrupted at once, saving nothing more" and "Traceback" not in err
    drawn = sorted(cache.rglob("*.png"))
    assert drawn and all(Image.open(png).load() for png in drawn)  # every image written whole
    assert not [f for f in cache.rglob("*") if f.is_file() and f.suffix not in (".png", ".json")]
