"""Offline, a hub id fails at once with the fix, naming the flag of the command being run, and leaves nothing behind
(no output folder made before the model was found)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from velora.cli import cli

HUB_ID = "iic/ofa_visual-entailment_snli-ve_large_en"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("VELORA_OFFLINE", "1")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("args, flag, output", [
    (["train", "--model_name_or_path", HUB_ID, "--dataset_name", "data", "--output_dir", "lora_out"],
     "--model_name_or_path DIR", "lora_out"),
    (["train", "--model_path", HUB_ID, "--dataset_name", "data", "--output_dir", "lora_out"],
     "--model_name_or_path DIR", "lora_out"),  # the alias the hint of another command prints is accepted
    (["merge", "--base_model", HUB_ID, "--lora_path", HUB_ID, "--output_dir", "merged"], "--lora_path DIR", "merged"),
    (["predict", "--model-path", HUB_ID, "--image", "x.jpg", "--hypothesis", "a dog"], "--model_path DIR", None),
    (["export", "onnx", "--model_path", HUB_ID, "--output", "out/model.onnx"], "--model_path DIR", "out"),
])
def test_offline_hub_id_names_the_commands_flag_and_writes_nothing(tmp_path, args, flag, output):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"cannot fetch model {HUB_ID!r}" in result.output and flag in result.output
    assert "Traceback" not in result.output
    if output:
        assert not (tmp_path / output).exists()
