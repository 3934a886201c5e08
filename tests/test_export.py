"""`velora export onnx`: onnxruntime == torch on other batch sizes and lengths, the sidecar is enough to run it,
int8 quantization with the accuracy change on an eval file, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from eval_helpers import write_labelled_csv
from velora.cli import cli
from velora.data import load_examples, score_examples
from velora.errors import VeloraError
from velora.evaluate import predicted_labels
from velora.export import TOLERANCE, OnnxPredictor, export_onnx
from velora.labels import LABELS
from velora.predictor import Predictor

IMAGES = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (50, 70, 3), dtype=np.uint8)) for s in range(5)]
PREMISES = ["a dog runs on grass", None, "", "two children build a large sand castle near the water on a sunny day",
            "a kitchen"]
HYPOTHESES = ["an animal is outside.", "it is night.", "a person.", "kids are at the beach.", "someone cooks."]


@pytest.fixture(scope="module")
def exported(tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = export_onnx(tiny_adapter_dir, out)
    return out, result


def test_onnx_matches_torch_on_new_batch_sizes_and_lengths(exported, tiny_adapter_dir):
    path, result = exported
    assert result.max_diff <= TOLERANCE
    onnx_predictor = OnnxPredictor.from_file(path)  # uses only model.json and the tokenizer files beside it
    torch_predictor = Predictor.from_pretrained(tiny_adapter_dir)
    for batch_size in (1, 5):
        got = onnx_predictor.probabilities(IMAGES, PREMISES, HYPOTHESES, batch_size=batch_size)
        torch.testing.assert_close(got, torch_predictor.probabilities(IMAGES, PREMISES, HYPOTHESES),
                                   atol=1e-5, rtol=0)


def test_graph_interface_and_sidecar(exported):
    path, _ = exported
    graph = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in graph.graph.input] == ["patch_images", "input_ids", "decoder_input_ids",
                                                   "answer_positions"]
    batch_dims = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in graph.graph.input}
    assert set(batch_dims.values()) == {"batch"}
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["labels"] == list(LABELS) and info["answer_ids"] == [4420, 117, 2085]
    assert info["preprocess"]["image_size"] == 64 and info["quantization"] is None
    assert (path.parent / "vocab.json").exists() and (path.parent / "merges.txt").exists()


def test_int8_with_accuracy_change_on_eval_file(tiny_model_dir, tmp_path):
    csv_path = write_labelled_csv(tmp_path / "data", rows=9, images=3)
    out = tmp_path / "model_int8.onnx"
    result = export_onnx(tiny_model_dir, out, quantize="int8", eval_file=csv_path, batch_size=4)
    fp32 = tmp_path / "model_int8.fp32.onnx"
    assert result.fp32_path == fp32 and fp32.exists()
    assert out.stat().st_size < fp32.stat().st_size
    assert json.loads(out.with_suffix(".json").read_text())["quantization"].startswith("int8")
    assert result.int8_max_diff is not None and result.int8_max_diff < 0.2

    examples = load_examples(csv_path)
    torch_labels = predicted_labels(score_examples(Predictor.from_pretrained(tiny_model_dir), examples))
    truth = examples.labels
    assert result.eval["examples"] == 9
    assert result.eval["fp32_accuracy"] == sum(p == t for p, t in zip(torch_labels, truth)) / 9
    int8_labels = predicted_labels(score_examples(OnnxPredictor.from_file(out), examples))
    assert result.eval["int8_accuracy"] == sum(p == t for p, t in zip(int8_labels, truth)) / 9
    assert "int8" in result.summary() and "change" in result.summary()


def test_refusals(tiny_model_dir, exported, tmp_path):
    path, _ = exported
    with pytest.raises(VeloraError, match="ending in .onnx"):
        export_onnx(tiny_model_dir, tmp_path / "model.bin")
    with pytest.raises(VeloraError, match="--overwrite"):
        export_onnx(tiny_model_dir, path)
    with pytest.raises(VeloraError, match="only int8"):
        export_onnx(tiny_model_dir, tmp_path / "m.onnx", quantize="int4")


def test_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", "onnx", "--model_path", str(tiny_model_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "max |probability difference|" in result.stdout and out.exists()
    missing = CliRunner().invoke(cli, ["export", "onnx", "--model_path", str(tmp_path / "nope"),
                                       "--output", str(tmp_path / "x.onnx")])
    assert missing.exit_code == 2 and "no such model directory" in missing.output
