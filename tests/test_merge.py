"""`velora merge`: merged == adapter within tolerance, plain hub layout with the base's keys, fp16 copy, and clear
refusals (mismatched base, quantized base, not an adapter, occupied output)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import write_tiny_adapter, write_tiny_model
from velora.cli import cli
from velora.errors import VeloraError
from velora.merge import merge_lora
from velora.predictor import BASE, Predictor

IMAGES = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (40, 56, 3), dtype=np.uint8)) for s in (7, 8, 9)]
PREMISES = ["a cat on a sofa", None, "three people walk along a long sandy beach at sunset"]
HYPOTHESES = ["an animal is indoors.", "it is raining.", "nobody is outside."]


def _probs(predictor: Predictor, adapter=None) -> torch.Tensor:
    return predictor.probabilities(IMAGES, PREMISES, HYPOTHESES, adapter=adapter)


def _keys(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.fixture(scope="module")
def merged_dir(tiny_adapter_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("merge") / "merged_model"
    result = merge_lora(tiny_adapter_dir, out, base_model=tiny_model_dir)
    assert result.max_diff_merged <= 1e-4 and result.size_bytes == sum(
        f.stat().st_size for f in out.iterdir())
    return out


def test_merged_model_equals_adapter(merged_dir, tiny_adapter_dir):
    adapter = Predictor.from_pretrained(tiny_adapter_dir)
    merged = Predictor.from_pretrained(merged_dir)
    assert merged.peft_model is None
    torch.testing.assert_close(_probs(merged), _probs(adapter), atol=1e-5, rtol=0)
    assert (_probs(adapter) - _probs(adapter, adapter=BASE)).abs().max() > 1e-2  # the adapter matters


def test_merged_dir_is_a_plain_hub_model(merged_dir, tiny_model_dir):
    assert {p.name for p in merged_dir.iterdir()} == {"config.json", "model.safetensors", "vocab.json",
                                                       "merges.txt", "configuration.json"}
    merged, base = _keys(merged_dir / "model.safetensors"), _keys(tiny_model_dir / "model.safetensors")
    assert merged == base  # same names and dtypes: no lora_*, no base_layer
    assert json.loads((merged_dir / "config.json").read_text()) == json.loads(
        (tiny_model_dir / "config.json").read_text())
    assert json.loads((merged_dir / "configuration.json").read_text())["model"]["patch_image_size"] == 64


def test_float16_copy(tiny_adapter_dir, merged_dir, tmp_path):
    result = merge_lora(tiny_adapter_dir, tmp_path / "fp16", dtype="float16")
    dtypes = set(_keys(tmp_path / "fp16" / "model.safetensors").values())
    assert "F16" in dtypes and "F32" not in dtypes
    half, full = (d / "model.safetensors" for d in (tmp_path / "fp16", merged_dir))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert 0 < result.max_diff_saved <= 2e-2
    assert "saved float16 copy" in result.summary()


@pytest.mark.parametrize("other_base, message", [
    (dict(d_model=48), r"does not fit .*q_proj.lora_A.weight has shape \[4, 32\] but .* is 48 -> 48"),
    (dict(encoder_layers=3), r"does not fit .*: no weights for .*encoder.layers.2.self_attn"),  # PEFT only warns
])
def test_adapter_for_another_base_is_a_clear_error(tiny_adapter_dir, tmp_path, other_base, message):
    other = write_tiny_model(tmp_path / "other", **other_base)
    with pytest.raises(VeloraError, match=message):
        merge_lora(tiny_adapter_dir, tmp_path / "out", base_model=other)
    assert not (tmp_path / "out").exists()


def test_refuses_quantized_base(tiny_model_dir, tiny_adapter_dir, tmp_path):
    flagged = shutil.copytree(tiny_model_dir, tmp_path / "q1")
    config = json.loads((flagged / "config.json").read_text())
    (flagged / "config.json").write_text(json.dumps({**config, "quantization_config": {"load_in_8bit": True}}))
    with pytest.raises(VeloraError, match="quantized"):
        merge_lora(tiny_adapter_dir, tmp_path / "out", base_model=flagged)

    int8 = shutil.copytree(tiny_model_dir, tmp_path / "q2")
    state = load_file(str(int8 / "model.safetensors"))
    state["encoder.layers.0.fc1.weight"] = state["encoder.layers.0.fc1.weight"].mul(100).to(torch.int8)
    save_file(state, str(int8 / "model.safetensors"))
    with pytest.raises(VeloraError, match=r"quantized weights \(encoder.layers.0.fc1.weight"):
        merge_lora(tiny_adapter_dir, tmp_path / "out", base_model=int8)


def test_input_and_output_refusals(tiny_model_dir, tiny_adapter_dir, merged_dir, tmp_path):
    with pytest.raises(VeloraError, match="no adapter_config.json"):
        merge_lora(tiny_model_dir, tmp_path / "out")
    with pytest.raises(VeloraError, match="is a LoRA adapter, not a base model"):
        merge_lora(tiny_adapter_dir, tmp_path / "out", base_model=tiny_adapter_dir)
    before = (merged_dir / "model.safetensors").read_bytes()
    with pytest.raises(VeloraError, match="--overwrite"):
        merge_lora(tiny_adapter_dir, merged_dir)
    assert (merged_dir / "model.safetensors").read_bytes() == before


def test_cli_guide_command_then_predict(tiny_model_dir, tmp_path):
    adapter = write_tiny_adapter(tiny_model_dir, tmp_path / "lora_finetuned", seed=3)
    IMAGES[0].save(tmp_path / "img.png")
    merged = tmp_path / "merged_model"
    result = CliRunner().invoke(cli, ["merge", "--base_model", str(tiny_model_dir), "--lora_path", str(adapter),
                                      "--output_dir", str(merged)])
    assert result.exit_code == 0, result.output
    assert "fp32 merge:" in result.stdout and "MB on disk" in result.stdout
    predicted = CliRunner().invoke(cli, ["predict", "--model_path", str(merged), "--image", str(tmp_path / "img.png"),
                                         "--hypothesis", "an animal is indoors.", "--json"])
    assert predicted.exit_code == 0, predicted.output
    expected = Predictor.from_pretrained(adapter).predict(IMAGES[0], None, "an animal is indoors.")
    assert json.loads(predicted.stdout)["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)


def test_cli_mismatch_is_one_line(tiny_adapter_dir, tmp_path):
    other = write_tiny_model(tmp_path / "other", d_model=48)
    result = CliRunner().invoke(cli, ["merge", "--base_model", str(other), "--lora_path", str(tiny_adapter_dir),
                                      "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1
