"""scripts/paper_tables.py reuses a finished run only when it was made on the same base model."""

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


def test_a_finished_run_is_reused_on_its_base_model_and_redone_on_another(tmp_path, monkeypatch):
    paper_tables = load_script()
    calls = []

    def fake_base_run(base, *rest) -> dict:  # counts the runs actually made
        calls.append(base)
        return {"scores": len(calls)}

    monkeypatch.setattr(paper_tables, "base_run", fake_base_run)
    base = tmp_path / "base"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    args = (tmp_path / "results", tmp_path / "work", base, "striped-bag", 0, "base", DemoSettings())

    first = paper_tables.run(*args)
    assert paper_tables.run(*args) == first and len(calls) == 1  # same base model: reused
    (base / "model_index.json").write_text('{"changed": true}')
    assert paper_tables.run(*args)["scores"] == 2  # another base model: done again
    saved = json.loads((tmp_path / "results" / "striped-bag-base-seed0.json").read_text())
    assert saved["scores"] == 2 and saved["base_model"] != first["base_model"]
