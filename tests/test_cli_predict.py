"""`velora predict` from the command line: output shapes and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from velora.cli import cli


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red card.png"
    Image.new("RGB", (90, 60), (220, 20, 20)).save(path)
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["predict", *args])


def test_human_output(tiny_model_dir, image_path):
    result = run("--model_path", str(tiny_model_dir), "--image", str(image_path), "--premise", "a red card",
                 "--hypothesis", "the card is red")
    assert result.exit_code == 0, result.output
    assert "Hypothesis: the card is red" in result.output
    assert "Result: " in result.output and "(confidence: 0." in result.output
    assert "entailment 0." in result.output and "neutral 0." in result.output


def test_json_with_compare_base(tiny_adapter_dir, image_path):
    result = run("--model_path", str(tiny_adapter_dir), "--image", str(image_path), "--hypothesis", "it is red",
                 "--compare_base", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["probabilities"]) == {"entailment", "contradiction", "neutral"}
    assert abs(sum(data["probabilities"].values()) - 1) < 1e-5
    assert data["label"] == max(data["probabilities"], key=data["probabilities"].get)
    assert data["base"]["probabilities"] != data["probabilities"]
    assert data["premise"] is None


def test_compare_base_needs_an_adapter(tiny_model_dir, image_path):
    result = run("--model_path", str(tiny_model_dir), "--image", str(image_path), "--hypothesis", "x",
                 "--compare_base")
    assert result.exit_code == 2 and "needs a LoRA adapter" in result.output


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.jpg", "--hypothesis", "x"], "missing.jpg: image file not found"),
    (["--image", "{image}", "--hypothesis", "   "], "--hypothesis is empty"),
    (["--image", "{text}", "--hypothesis", "x"], "not an image"),
    (["--image", "{image}", "--hypothesis", "x", "--model_path", "{empty_dir}"], "not a model directory"),
    (["--image", "{image}", "--hypothesis", "x", "--model_path", "nowhere/at-all/x"], "no such model directory"),
])
def test_errors_are_one_line_with_exit_code_2(args, message, image_path, tiny_model_dir, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(image=image_path, text=text, empty_dir=empty) for a in args]
    if "--model_path" not in args:
        args += ["--model_path", str(tiny_model_dir)]
    result = run(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("velora, version ")
    help_text = runner.invoke(cli, ["predict", "-h"]).output
    assert "Examples:" in help_text and "--compare_base" in help_text


@pytest.mark.parametrize("guide_name, command", [("convert_to_hf.py", "convert"), ("finetune_lora", "train"),
                                                 ("test_finetuned.py", "predict"), ("eval_finetuned", "eval"),
                                                 ("collect_hard_examples", "mine"), ("merge_lora.py", "merge")])
def test_the_guides_script_names_are_commands(guide_name, command):
    runner = CliRunner()
    guide, velora = (runner.invoke(cli, [name, "--help"]).output.splitlines() for name in (guide_name, command))
    assert guide[1:] == velora[1:] and len(velora) > 3
