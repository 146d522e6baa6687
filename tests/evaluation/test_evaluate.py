import importlib
import json

import numpy as np
import pytest
from PIL import Image

from dreambooth.cli import main
from dreambooth.errors import ConfigError, DataError
from dreambooth.evaluation.evaluate import (PromptImages, evaluate, load_image_folder, open_images, scored_images,
                                            without_identifier)
from tests.evaluation.fakes import PixelEncoder, PixelMaps, RecordingScorer, noise_image
from tests.evaluation.test_encoders import tiny_clip, tiny_vit  # noqa: F401 (fixtures)

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
    assert result["real_vs_real"] == [{"metric": "DINO", "encoder": "fake-pixels", "value": pytest.approx(1.0),
                                       "prompts": 0, "images": len(REAL)}]
    counts = {r["metric"]: (r["prompts"], r["images"]) for r in result["summary"]}
    assert counts == {"DINO": (2, 4), "prompt fidelity": (2, 4), "DIV": (2, 4), "PRES": (1, 2)}
    assert result["generation"] is None
    assert result["class_images"] == {"prompt": "a dog", "num_images": 2,  # the images PRES was scored on
                                      "images": [str(image_folder / "02-class" / f"00000{i}.png") for i in (0, 1)]}


def test_the_summary_weighs_prompts_equally_and_says_how_many_images_it_read():
    sets = [PromptImages("a zwx dog", [noise_image(0)]), PromptImages("a zwx dog in the snow", [noise_image(1)] * 3)]
    result = evaluate(sets, REAL, encoders=[PixelEncoder()], div_features=PixelMaps())
    by_prompt = [p["metrics"][0]["value"] for p in result["prompts"]]
    dino, div = result["summary"]
    assert (dino["value"], dino["prompts"], dino["images"]) == (pytest.approx(sum(by_prompt) / 2), 2, 4)
    assert (div["prompts"], div["images"]) == (1, 3)  # one image cannot be compared with another


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
        evaluate(tmp_path, REAL, class_noun="dog", encoders=[PixelEncoder()])
    with pytest.raises(DataError, match="real subject photos"):
        evaluate([PromptImages("a", [noise_image(0)])], [noise_image(0)], encoders=[PixelEncoder()])
    with pytest.raises(DataError, match="not a folder"):
        evaluate(tmp_path / "missing", REAL, encoders=[PixelEncoder()])


def test_an_image_folder_without_its_class_noun_is_refused_not_scored_as_the_subject(image_folder):
    with pytest.raises(ConfigError, match="scoring a folder of images needs --class_noun"):
        evaluate(image_folder, REAL, encoders=[PixelEncoder()], div_features=None)


def test_without_identifier():
    assert without_identifier("a zwx dog in the zwxy snow", "zwx") == "a dog in the zwxy snow"
    assert without_identifier("a dog", None) == "a dog"


def test_real_photos_are_decoded_as_training_decodes_them(tmp_path):
    """A cut-out photo's transparent background is white, as in training, not its hidden (black) colour."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (200, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    pixels = np.asarray(open_images([tmp_path / "cutout.png"])[0])
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[3, 3].tolist() == [200, 0, 0]


def test_bad_inputs_are_found_before_any_image_is_generated(tiny_sd, tmp_path, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("images were generated before the inputs were checked")

    # the module, not the function the package exports under the same name
    monkeypatch.setattr(importlib.import_module("dreambooth.evaluation.evaluate"), "generate_images", no_sampling)
    common = dict(class_noun="dog", identifier="zwx", out=tmp_path / "eval")
    with pytest.raises(DataError, match="not a folder"):
        evaluate(tiny_sd, tmp_path / "typo", encoders=[PixelEncoder()], **common)
    with pytest.raises(DataError, match="at least 2 real subject photos"):
        evaluate(tiny_sd, [noise_image(0)], encoders=[PixelEncoder()], **common)
    with pytest.raises(ConfigError, match="unknown"):
        evaluate(tiny_sd, REAL, encoders=["dino-vits16"], **common)
    with pytest.raises(ConfigError, match="records no identifier"):  # the prompts name {identifier}
        evaluate(tiny_sd, REAL, class_noun="dog", encoders=[PixelEncoder()], out=tmp_path / "eval")
    (tmp_path / "eval" / "images" / "00-old").mkdir(parents=True)
    with pytest.raises(ConfigError, match="earlier evaluation's images"):
        evaluate(tiny_sd, REAL, encoders=[PixelEncoder()], div_features=None, **common)


@pytest.fixture
def real_folder(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(2):
        noise_image(0).save(folder / f"{i}.png")
    return folder


def test_cli_scores_an_image_folder_with_clip_t(image_folder, real_folder, tiny_vit, tiny_clip, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--images", str(image_folder), "--real", str(real_folder), "--class_noun", "dog",
                 "--identifier", "zwx", "--encoder", f"hf:{tiny_vit}", "--prompt_scorer", f"hf:{tiny_clip}",
                 "--output", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    metrics = {r["metric"] for r in result["summary"]}
    assert {"DINO", "PRES", "prompt fidelity", "DIV"} <= metrics and result["identifier"] == "zwx"


def test_cli_refuses_what_an_image_folder_cannot_use(image_folder, real_folder, tmp_path, capsys):
    args = ["evaluate", "--images", str(image_folder), "--real", str(real_folder), "--output", str(tmp_path / "e")]
    assert main([*args, "--class_noun", "dog", "--steps", "10", "-n", "2"]) == 2
    assert "-n, --steps: only with --model" in capsys.readouterr().err
    assert main(args) == 2
    assert "scoring a folder of images needs --class_noun" in capsys.readouterr().err
    assert main([*args, "--class_noun", "dog", "--prompt_scorer", "clip"]) == 2
    assert "--prompt_scorer 'clip': unknown" in capsys.readouterr().err


def test_cli_evaluates_a_model_with_a_prompt_file_and_identifier(tiny_sd, real_folder, tiny_vit, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dreambench-mine.txt").write_text("a {identifier} {class_noun} on the moon\n")
    assert main(["evaluate", "--model", str(tiny_sd), "--real", str(real_folder), "--class_noun", "dog",
                 "--identifier", "zwx", "--prompts", "dreambench-mine.txt", "-n", "2", "--steps", "2",
                 "--encoder", f"hf:{tiny_vit}", "--output", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [p["prompt"] for p in result["prompts"]] == ["a zwx dog on the moon"]
    assert result["generation"]["steps"] == 2 and result["generation"]["n_per_prompt"] == 2


def test_the_class_images_must_be_found_once_or_pres_would_vanish_into_fidelity(image_folder):
    (image_folder / "02-class" / "prompt.txt").write_text("A  Dog\n")  # case and spacing are no difference
    result = evaluate(image_folder, REAL, class_noun="dog", encoders=[PixelEncoder()], div_features=None)
    assert [p["prompt"] for p in result["prompts"]] == ["a zwx dog on the beach", "a zwx dog in the snow"]
    (image_folder / "02-class" / "prompt.txt").write_text("a photo of a dog\n")
    with pytest.raises(DataError, match="0 sets of images have the prompt 'a dog'"):
        evaluate(image_folder, REAL, class_noun="dog", encoders=[PixelEncoder()], div_features=None)
    write_prompt_folder(image_folder, "03-class-again", "a dog", [5, 6])
    (image_folder / "02-class" / "prompt.txt").write_text("a dog\n")
    with pytest.raises(DataError, match="2 sets of images have the prompt 'a dog'"):
        evaluate(image_folder, REAL, class_noun="dog", encoders=[PixelEncoder()], div_features=None)


@pytest.mark.parametrize("prompt, read", [("a ZWX dog", "a dog"), ("a zwx's dog", "a dog"),
                                          ("a dog, zwx, on the beach", "a dog, , on the beach"),
                                          ("a zwxy dog", "a zwxy dog")])
def test_the_identifier_is_dropped_in_any_case_and_possessive(prompt, read):
    assert without_identifier(prompt, "zwx") == read


def test_div_asked_for_but_unscorable_is_said_not_left_out():
    sets = [PromptImages("a zwx dog", [noise_image(0)]), PromptImages("a zwx dog in the snow", [noise_image(1)])]
    result = evaluate(sets, REAL, encoders=[PixelEncoder()], div_features=PixelMaps())
    assert {"metric": "DIV", "encoder": "lpips-style[fake-maps]", "value": None, "prompts": 0,
            "images": 0} in result["summary"]


def test_images_in_memory_are_read_as_files_are(tmp_path):
    """A transparent RGBA image reaches the encoders over white, as load_rgb puts a file's."""
    seen = []

    class Recording(PixelEncoder):
        def embed(self, images):
            seen.extend(images)
            return super().embed(images)

    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    evaluate([PromptImages("a zwx dog", [clear])], [clear, clear], encoders=[Recording()], div_features=None)
    assert all(image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255) for image in seen)


def test_the_class_prompt_in_the_prompt_list_is_refused_before_any_image(tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match="--prompts: 'a dog' is sampled anyway"):
        evaluate(tiny_sd, REAL, class_noun="dog", identifier="zwx", prompts=["a {identifier} dog", "a {class_noun}"],
                 encoders=[PixelEncoder()], div_features=None, n_per_prompt=1, steps=2, out=tmp_path)
    assert not (tmp_path / "images").exists()
