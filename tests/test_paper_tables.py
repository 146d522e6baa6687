"""scripts/paper_tables.py reuses a finished run only when it was made on the same base model and recipe."""

import importlib.util
import json
from pathlib import Path

from dreambooth.demo import DemoSettings

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
        return {"scores": len(calls)}

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


def test_runs_of_other_recipes_are_kept_apart_by_name():
    name = load_script().run_name
    frozen = DemoSettings(train_text_encoder=False)
    assert name("striped-bag", "dreambooth", 0, DemoSettings()) == "striped-bag-dreambooth-seed0"
    assert name("striped-bag", "dreambooth", 0, DemoSettings(steps=1200)) == "striped-bag-dreambooth-seed0-steps1200"
    assert name("striped-bag", "no-prior", 1, frozen) == "striped-bag-no-prior-seed1-frozen-text-encoder"
    assert name("striped-bag", "base", 0, frozen) == "striped-bag-base-seed0"  # untrained: one run for every recipe
    assert name("striped-bag", "dreambooth", 0, DemoSettings.fast()) == "striped-bag-dreambooth-seed0-fast"
