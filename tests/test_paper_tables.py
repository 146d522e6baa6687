"""scripts/paper_tables.py reuses a finished run only when it was made on the same base model and recipe, and
scores it again from its images when a metric was added since."""

import importlib.util
import json
from pathlib import Path

import pytest

from dreambooth.demo import DemoSettings
from dreambooth.errors import DataError
from tests.evaluation.fakes import PixelEncoder, RecordingScorer, noise_image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_tables.py"


def load_script():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def counting_runs(tmp_path, monkeypatch) -> tuple:
    """The script with training and scoring replaced by a counter, a base model folder, and the calls made."""
    paper_tables = load_script()
    calls = []

    def fake_run(*args) -> dict:  # counts the runs actually made
        calls.append(args)
        return {"scores": len(calls), "summary": [{"encoder": name} for name in paper_tables.ENCODER_NAMES]}

    monkeypatch.setattr(paper_tables, "base_run", fake_run)
    monkeypatch.setattr(paper_tables, "dreambooth_run", fake_run)
    base = tmp_path / "base"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    return paper_tables, base, calls


def test_a_finished_run_is_reused_on_its_base_model_and_redone_on_another(tmp_path, monkeypatch):
    paper_tables, base, calls = counting_runs(tmp_path, monkeypatch)
    args = (tmp_path / "results", tmp_path / "work", base, "striped-bag", 0, "base", DemoSettings())

    first = paper_tables.run(*args)
    assert paper_tables.run(*args) == first and len(calls) == 1  # same base model: reused
    (base / "model_index.json").write_text('{"changed": true}')
    assert paper_tables.run(*args)["scores"] == 2  # another base model: done again
    saved = json.loads((tmp_path / "results" / "striped-bag-base-seed0.json").read_text())
    assert saved["scores"] == 2 and saved["base_model"] != first["base_model"]


def test_a_finished_run_is_redone_when_the_recipe_changed_and_the_base_model_only_for_its_sampling(tmp_path, monkeypatch):
    paper_tables, base, _ = counting_runs(tmp_path, monkeypatch)
    where = (tmp_path / "results", tmp_path / "work", base, "striped-bag", 0)

    paper_tables.run(*where, "dreambooth", DemoSettings())
    saved = tmp_path / "results" / "striped-bag-dreambooth-seed0.json"
    older = json.loads(saved.read_text())
    older["recipe"]["train_text_encoder"] = not DemoSettings.train_text_encoder  # as if made before a recipe change
    saved.write_text(json.dumps(older))
    assert paper_tables.run(*where, "dreambooth", DemoSettings())["scores"] == 2  # done again
    assert paper_tables.run(*where, "dreambooth", DemoSettings())["scores"] == 2  # then reused

    paper_tables.run(*where, "base", DemoSettings())
    assert paper_tables.run(*where, "base", DemoSettings(steps=1200))["scores"] == 3  # training steps: reused


def test_a_finished_run_scored_before_an_encoder_was_added_is_scored_again_from_its_images(tmp_path, monkeypatch):
    paper_tables, base, calls = counting_runs(tmp_path, monkeypatch)
    args = (tmp_path / "results", tmp_path / "work", base, "striped-bag", 0, "base", DemoSettings())
    paper_tables.run(*args)
    saved = tmp_path / "results" / "striped-bag-base-seed0.json"
    older = json.loads(saved.read_text())
    older["summary"] = older["summary"][:2]  # the whole-image encoders only
    saved.write_text(json.dumps(older))
    monkeypatch.setattr(paper_tables, "JudgeScorer", lambda: "judge")
    monkeypatch.setattr(paper_tables, "rescore", lambda result_file, scorer: {"rescored": (result_file, scorer)})
    assert paper_tables.run(*args) == {"rescored": (saved, "judge")} and len(calls) == 1  # not trained again


def test_rescoring_reads_the_run_again_from_its_images_and_keeps_what_scoring_does_not_give(tmp_path, monkeypatch):
    paper_tables = load_script()
    images = tmp_path / "work" / "striped-bag-dreambooth-seed0" / "images"
    for index, prompt in enumerate(["a zwx bag in the snow", "a bag"]):
        folder = images / f"{index:02d}"
        folder.mkdir(parents=True)
        for seed in (0, 1):
            noise_image(seed).save(folder / f"{seed:06d}.png")
        (folder / "prompt.txt").write_text(prompt)
    result_file = tmp_path / "striped-bag-dreambooth-seed0.json"
    listed = [str(images / "00" / f"{seed:06d}.png") for seed in (0, 1)]
    stale = {"metric": "DINO", "encoder": "an encoder since replaced", "value": 0.1}
    old = {"class_noun": "bag", "identifier": "zwx", "summary": [stale], "prompts": [{"images": listed}],
           "train_seconds": 12.5, "base_model": "abc"}
    result_file.write_text(json.dumps(old))
    monkeypatch.setattr(paper_tables, "encoders", lambda: [PixelEncoder()])
    result = paper_tables.rescore(result_file, RecordingScorer())
    assert json.loads(result_file.read_text()) == result
    assert (result["train_seconds"], result["base_model"]) == (12.5, "abc")
    assert {(r["metric"], r["encoder"]) for r in result["summary"]} == {
        ("DINO", "fake-pixels"), ("prompt fidelity", "fake-judge"), ("DIV", "lpips-style[efficientnet-lite0]"),
        ("PRES", "fake-pixels")}
    assert [p["prompt"] for p in result["prompts"]] == ["a zwx bag in the snow"]  # "a bag" is PRES
    noise_image(2).save(images / "00" / "000002.png")  # the folder no longer holds what was scored
    with pytest.raises(DataError, match="no longer the ones it was scored on"):
        paper_tables.rescore(result_file, RecordingScorer())


def test_rescoring_a_run_whose_images_are_gone_says_what_to_do(tmp_path):
    result_file = tmp_path / "striped-bag-base-seed0.json"
    result_file.write_text(json.dumps({"prompts": [{"images": [str(tmp_path / "gone" / "00" / "000000.png")]}]}))
    with pytest.raises(DataError, match="striped-bag-base-seed0.json: its images in .*gone are gone; delete the file"):
        load_script().rescore(result_file, None)


def test_rescoring_a_run_that_lists_another_runs_images_refuses(tmp_path):
    """A result renamed by hand (as the frozen-text-encoder runs once were) must not be scored on the
    images a later run wrote into its old folder."""
    images = tmp_path / "striped-bag-dreambooth-seed0" / "images" / "00"
    images.mkdir(parents=True)
    result_file = tmp_path / "striped-bag-dreambooth-seed0-frozen-text-encoder.json"
    result_file.write_text(json.dumps({"prompts": [{"images": [str(images / "000000.png")]}]}))
    with pytest.raises(DataError, match="frozen-text-encoder.json: it lists another run's images"):
        load_script().rescore(result_file, None)


def test_runs_of_other_recipes_are_kept_apart_by_name():
    name = load_script().run_name
    frozen = DemoSettings(train_text_encoder=False)
    assert name("striped-bag", "dreambooth", 0, DemoSettings()) == "striped-bag-dreambooth-seed0"
    assert name("striped-bag", "dreambooth", 0, DemoSettings(steps=1200)) == "striped-bag-dreambooth-seed0-steps1200"
    assert name("striped-bag", "no-prior", 1, frozen) == "striped-bag-no-prior-seed1-frozen-text-encoder"
    assert name("striped-bag", "base", 0, frozen) == "striped-bag-base-seed0"  # untrained: one run for every recipe
    assert name("striped-bag", "dreambooth", 0, DemoSettings.fast()) == "striped-bag-dreambooth-seed0-fast"
