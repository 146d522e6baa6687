import pytest

from dreambooth.errors import ConfigError, DataError
from dreambooth.evaluation.evaluate import PromptImages, evaluate, load_image_folder, scored_images, without_identifier
from tests.evaluation.fakes import PixelEncoder, PixelMaps, RecordingScorer, noise_image

REAL = [noise_image(0), noise_image(0)]


def write_prompt_folder(root, name, prompt, seeds):
    folder = root / name
    folder.mkdir(parents=True)
    for i, s in enumerate(seeds):
        noise_image(s).save(folder / f"{i:06d}.png")
    noise_image(99).save(folder / "grid.png")  # a preview, not a sample
    (folder / "prompt.txt").write_text(prompt + "\n")


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    write_prompt_folder(root, "00-beach", "a zwx dog on the beach", [0, 0])  # looks exactly like the subject
    write_prompt_folder(root, "01-snow", "a zwx dog in the snow", [1, 2])
    write_prompt_folder(root, "02-class", "a dog", [3, 4])
    return root


def test_image_folder_layout_is_read_without_grids(image_folder):
    sets = load_image_folder(image_folder)
    assert [s.prompt for s in sets] == ["a zwx dog on the beach", "a zwx dog in the snow", "a dog"]
    assert all(len(s.images) == 2 and all(p.name != "grid.png" for p in s.paths) for s in sets)


def test_evaluate_image_folder(image_folder):
    scorer = RecordingScorer()
    result = evaluate(image_folder, REAL, class_noun="dog", identifier="zwx", encoders=[PixelEncoder()],
                      prompt_scorer=scorer, div_features=PixelMaps())
    assert scorer.prompts == ["a dog on the beach", "a dog in the snow"]  # identifier removed, class prompt not scored
    beach, snow = result["prompts"]
    dino = {p["prompt"]: next(r["value"] for r in p["metrics"] if r["metric"] == "DINO") for p in result["prompts"]}
    assert dino["a zwx dog on the beach"] == pytest.approx(1.0) and dino["a zwx dog in the snow"] < 0.5
    summary = {(r["metric"], r["encoder"]): r["value"] for r in result["summary"]}
    assert summary[("DINO", "fake-pixels")] == pytest.approx(sum(dino.values()) / 2)
    assert summary[("prompt fidelity", "fake-judge")] == 0.5
    assert ("PRES", "fake-pixels") in summary and ("DIV", "lpips-style[fake-maps]") in summary
    assert result["real_vs_real"] == [{"metric": "DINO", "encoder": "fake-pixels", "value": pytest.approx(1.0)}]
    assert result["generation"] is None


def test_a_scored_prompt_whose_images_are_gone_names_the_file(image_folder):
    result = evaluate(image_folder, REAL, class_noun="dog", identifier="zwx", encoders=[PixelEncoder()],
                      prompt_scorer=RecordingScorer(), div_features=None)
    assert len(scored_images(result["prompts"][1])) == 2
    (image_folder / "01-snow" / "000001.png").unlink()
    with pytest.raises(DataError, match="01-snow/000001.png"):
        scored_images(result["prompts"][1])


def test_evaluate_in_memory_without_class_prompt_has_no_pres():
    sets = [PromptImages("a zwx dog", [noise_image(0), noise_image(1)])]
    result = evaluate(sets, REAL, encoders=[PixelEncoder()], div_features=None)
    assert [r["metric"] for r in result["summary"]] == ["DINO"]


def test_evaluate_model_folder_generates_then_scores(tiny_sd, tmp_path):
    result = evaluate(tiny_sd, REAL, class_noun="dog", identifier="zwx", prompts=["a {identifier} {class_noun}"],
                      encoders=[PixelEncoder()], div_features=PixelMaps(), n_per_prompt=2, steps=2, out=tmp_path)
    assert [p["prompt"] for p in result["prompts"]] == ["a zwx dog"]
    assert len(result["prompts"][0]["images"]) == 2 and (tmp_path / "images" / "01-a-dog" / "prompt.txt").is_file()
    assert any(r["metric"] == "PRES" for r in result["summary"])
    assert result["generation"]["n_per_prompt"] == 2


def test_model_without_class_noun_or_output_dir_is_a_config_error(tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match="class noun"):
        evaluate(tiny_sd, REAL, encoders=[PixelEncoder()], out=tmp_path)
    with pytest.raises(ConfigError, match="--output_dir"):
        evaluate(tiny_sd, REAL, class_noun="dog", encoders=[PixelEncoder()])


def test_bad_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="prompt.txt"):
        evaluate(tmp_path, REAL, encoders=[PixelEncoder()])
    with pytest.raises(DataError, match="real subject photos"):
        evaluate([PromptImages("a", [noise_image(0)])], [noise_image(0)], encoders=[PixelEncoder()])
    with pytest.raises(DataError, match="not a folder"):
        evaluate(tmp_path / "missing", REAL, encoders=[PixelEncoder()])


def test_without_identifier():
    assert without_identifier("a zwx dog in the zwxy snow", "zwx") == "a dog in the zwxy snow"
    assert without_identifier("a dog", None) == "a dog"
