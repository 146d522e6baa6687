import pytest

from dreambooth.errors import DataError
from dreambooth.evaluation.prompts import load_prompts, prompt_set_for


@pytest.mark.parametrize("name", ["object", "live"])
def test_paper_prompt_sets_have_25_templates(name):
    prompts = load_prompts(name)
    assert len(prompts) == 25 and len(set(prompts)) == 25
    assert all("{identifier} {class_noun}" in p for p in prompts)
    assert prompts[0] == "a {identifier} {class_noun} in the jungle"
    assert prompts[-1] == "a cube shaped {identifier} {class_noun}"


def test_live_and_object_lists_differ_in_the_middle():
    assert "a {identifier} {class_noun} wearing a santa hat" in load_prompts("live")
    assert "a {identifier} {class_noun} on top of a mirror" in load_prompts("object")
    assert load_prompts("dreambench-object") == load_prompts("object")  # as `evaluate --help` spells it


def test_user_file_skips_comments_and_blanks(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# source: me\n\na {identifier} {class_noun}\n  in the rain  \n")
    assert load_prompts(path) == ["a {identifier} {class_noun}", "in the rain"]


def test_missing_or_empty_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "nope.txt")
    (tmp_path / "e.txt").write_text("# only a comment\n")
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(tmp_path / "e.txt")


def test_prompt_set_for_class():
    assert prompt_set_for("dog") == "live" and prompt_set_for("Cat") == "live"
    assert prompt_set_for("teapot") == "object"
