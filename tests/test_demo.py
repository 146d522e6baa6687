"""The demo end to end in its fast mode: same trainer, sheet and report written."""

import shutil

import pytest

from dreambooth.demo import DemoSettings, find_subject, run_demo
from dreambooth.errors import DataError


def test_demo_fast_on_a_tiny_model(tiny_sd, subject_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the class-image cache goes under ~/.cache
    leftover = tmp_path / "demo" / "model" / "checkpoint-2"  # what an interrupted demo leaves: it starts over
    leftover.mkdir(parents=True)
    (leftover / "dreambooth_state.json").write_text('{"step": 2}')
    sheet = run_demo(tmp_path / "demo", model=tiny_sd, instance_dir=subject_dir, class_noun="dog",
                     settings=DemoSettings.fast())
    html = (tmp_path / "demo" / "index.html").read_text()
    assert sheet.is_file() and "a dog" in html and "in the snow" in html and "a red " in html
    # rows: photos, before, 6 contexts, 2 properties, after
    assert html.count("<tr>") == 11
    assert not leftover.exists()


def test_demo_fast_on_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run_demo(tmp_path / "demo", settings=DemoSettings.fast()).is_file()


def test_unknown_subject_lists_the_shipped_ones():
    with pytest.raises(DataError, match="striped-bag"):
        find_subject("no-such-subject")


def test_a_subject_folder_outside_examples(subject_dir, tmp_path):
    subject = shutil.copytree(subject_dir, tmp_path / "subject")  # not the photos other tests share
    (subject / "subject.json").write_text('{"class_noun": "dog"}')
    assert find_subject(str(subject)) == (subject, "dog")
