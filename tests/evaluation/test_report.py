import html
import json

from dreambooth.evaluation.report import to_markdown, write_report


def result_with_images(tmp_path):
    image = tmp_path / "run" / "images" / "00-a" / "000000.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    return {
        "generation": None, "class_noun": "dog", "identifier": "zwx",
        "summary": [{"metric": "DINO", "encoder": "enc", "value": 0.5, "prompts": 1, "images": 1},
                    {"metric": "PRES", "encoder": "enc", "value": 0.25}],  # as written before counts were kept
        "real_vs_real": [{"metric": "DINO", "encoder": "enc", "value": 0.75}],
        "prompts": [{"prompt": "a zwx <dog>", "images": [str(image)],
                     "metrics": [{"metric": "DINO", "encoder": "enc", "value": 0.5}]}],
    }


def test_markdown_has_summary_with_reference_and_prompt_rows(tmp_path):
    md = to_markdown(result_with_images(tmp_path))
    assert "| DINO | enc | 0.500 | 0.750 | 1 | 1 |" in md
    assert "| PRES | enc | 0.250 | 0.750 |  |  |" in md
    assert "| a zwx <dog> | 0.500 |" in md


def test_write_report_writes_json_markdown_and_html_with_relative_images(tmp_path):
    result = result_with_images(tmp_path)
    result["class_images"] = {"prompt": "a dog", "images": [str(tmp_path / "run" / "images" / "01-a-dog" / "0.png")],
                              "num_images": 1}
    paths = write_report(result, tmp_path / "run")
    assert json.loads(paths["json"].read_text()) == result
    assert paths["markdown"].read_text().startswith("# DreamBooth evaluation")
    page = paths["html"].read_text()
    assert "src='images/00-a/000000.png'" in page
    assert "a zwx &lt;dog&gt;" in page  # prompts are escaped
    assert "PRES: a dog (the class images)</h2>\n<div><img src='images/01-a-dog/0.png'" in page


def test_the_reports_say_what_was_scored(tmp_path):
    result = {**result_with_images(tmp_path), "generation": {"model": "my-dog", "n_per_prompt": 4, "seed": 0,
                                                               "steps": 50, "guidance": 7.5}}
    said = ("images sampled from my-dog: 4 per prompt, seeds 0.., 50 steps, guidance 7.5; class noun 'dog', "
            "identifier 'zwx'.")
    assert said in to_markdown(result) and html.escape(said) in write_report(result, tmp_path / "run")["html"].read_text()
