"""int8 plans: chosen by measurement, respected when applied (torch and ONNX), saved and found beside a model, and
keeping the probabilities within the tolerance they were chosen for, on a tiny random model."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from velora.cli import cli
from velora.errors import VeloraError
from velora.export import export_onnx, linear_nodes
from velora.int8_calibration import calibrate, choose_plan, compare, prepare_calibration, score_quantized
from velora.labels import LABELS
from velora.predictor import Predictor
from velora.quantize import (DEFAULT_PLAN, PLAN_FILE, RESNET, Int8ResNet, QuantizationPlan, linear_groups,
                             quantize_model, resnet_scales)

from eval_helpers import write_labelled_csv

TOLERANCE = 0.01


def picture(i: int) -> Image.Image:
    image = Image.new("RGB", (64, 64), (40 * i % 256, 200 - 25 * i, 30 + 20 * i))
    image.paste((250, 250, 250), (8 * i % 40, 10, 8 * i % 40 + 20, 40))
    return image


def examples(n_images: int, offset: int = 0):
    images = [picture(offset + i) for i in range(n_images)]
    texts = [("a red card", "the card is red"), (None, "there is a dog"), ("two shapes", "the shapes are blue")]
    rows = [(image, p, h) for image in images for p, h in texts]
    return [list(x) for x in zip(*rows)]


@pytest.fixture(scope="module")
def fp32(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir, device="cpu", fuse_resnet=False)


@pytest.fixture(scope="module")
def chosen(fp32):
    calibration = prepare_calibration(fp32, *examples(3))
    return calibration, choose_plan(fp32.model, calibration, tolerance=TOLERANCE)


def quantized_names(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if type(m) is torch.ao.nn.quantized.dynamic.Linear}


def test_quantize_model_touches_exactly_the_plans_groups(tiny_model_dir):
    model = Predictor.from_pretrained(tiny_model_dir, device="cpu", fuse_resnet=False).model
    groups = linear_groups(model)
    plan = QuantizationPlan(["encoder.ffn", "image_proj"])
    quantize_model(model, plan)
    assert quantized_names(model) == set(groups["encoder.ffn"]) | set(groups["image_proj"])
    plain = {name for name, m in model.named_modules() if type(m) is nn.Linear}
    assert set(groups["decoder"]) <= plain and set(groups["encoder.attention"]) <= plain
    assert {"encoder.pos_q_linear", "decoder.output_projection"} <= plain  # never quantized


def test_the_chosen_plan_is_within_its_tolerance_on_held_out_examples_too(fp32, chosen):
    calibration, plan = chosen
    assert plan.calibration["within_tolerance"] and plan.calibration["steps"][-1]["max_abs_dp"] <= TOLERANCE
    assert set(plan.int8_groups) | set(plan.fp32_groups) == set(calibration.macs)
    assert plan.int8_groups, "a plan that quantizes nothing would not be worth choosing"
    held_out = prepare_calibration(fp32, *examples(2, offset=5))
    result = compare(held_out.reference, score_quantized(fp32.model, held_out, plan))
    assert result["max_abs_dp"] <= 2 * TOLERANCE and result["changed_labels"] <= 1 / 3


def test_greedy_order_puts_back_the_most_harm_per_multiply_add_first(chosen):
    _, plan = chosen
    alone, macs = plan.calibration["alone"], plan.calibration["macs"]
    harm = [alone[g]["max_abs_dp"] / macs[g] for g in plan.fp32_groups]
    assert harm == sorted(harm, reverse=True)
    assert all(alone[g]["max_abs_dp"] / macs[g] <= min(harm, default=float("inf")) for g in plan.int8_groups)


def test_plan_round_trip_and_the_predictor_uses_the_plan_beside_the_model(tiny_model_dir, chosen, tmp_path):
    _, plan = chosen
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    plan.save(model_dir / PLAN_FILE)
    assert QuantizationPlan.load(model_dir / PLAN_FILE) == plan
    int8 = Predictor.from_pretrained(model_dir, device="cpu", quantize="int8")
    assert plan.describe() in int8.description
    groups = linear_groups(Predictor.from_pretrained(model_dir, device="cpu").model)
    assert quantized_names(int8.model) == {n for g in plan.int8_groups if g != RESNET for n in groups[g]}
    assert isinstance(int8.model.encoder.embed_images, Int8ResNet) == (RESNET in plan.int8_groups)
    images, premises, hypotheses = examples(3)
    fp32 = Predictor.from_pretrained(model_dir, device="cpu")
    diff = (int8.probabilities(images, premises, hypotheses) - fp32.probabilities(images, premises, hypotheses)).abs()
    assert diff.max() <= TOLERANCE + 1e-3  # the calibration examples, scored through the Predictor's batching


def test_without_a_plan_file_the_default_plan_applies(tiny_model_dir):
    int8 = Predictor.from_pretrained(tiny_model_dir, device="cpu", quantize="int8")
    assert DEFAULT_PLAN.describe() in int8.description and RESNET not in DEFAULT_PLAN.int8_groups


def test_int8_resnet_is_rebuilt_identically_from_the_stored_scales(fp32):
    pixels = [fp32.processor.image_tensor(picture(i))[None] for i in range(3)]
    scales = resnet_scales(fp32.model, pixels)
    plan = QuantizationPlan([RESNET], resnet_activations=json.loads(json.dumps(scales)))  # as stored in a plan file
    first = quantize_model(fp32.model, plan, inplace=False)
    second = quantize_model(fp32.model, plan, inplace=False)
    with torch.inference_mode():
        a, b = first.image_features(pixels[0]), second.image_features(pixels[0])
        reference = fp32.model.image_features(pixels[0])
    assert torch.equal(a, b)
    assert (a - reference).norm() / reference.norm() < 0.2


def test_plan_errors_name_the_problem(tiny_model_dir, tmp_path):
    with pytest.raises(VeloraError, match="unknown layer group.*encoder.nothing"):
        QuantizationPlan(["encoder.nothing"])
    with pytest.raises(VeloraError, match="without its activation scales"):
        QuantizationPlan([RESNET])
    bad = tmp_path / PLAN_FILE
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(VeloraError, match=f"{PLAN_FILE}: not a velora int8 plan"):
        QuantizationPlan.load(bad)
    with pytest.raises(VeloraError, match="only 'int8'"):
        Predictor.from_pretrained(tiny_model_dir, device="cpu", quantize="int4")


def test_calibrate_writes_the_plan_where_quantize_finds_it(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    csv_path = write_labelled_csv(tmp_path / "data", rows=6, images=2)
    plan = calibrate(model_dir, csv_path, tolerance=TOLERANCE, progress=False)
    assert QuantizationPlan.load(model_dir / PLAN_FILE) == plan and plan.calibration["examples"] == 6
    with pytest.raises(VeloraError, match="already exists"):
        calibrate(model_dir, csv_path, progress=False)


def test_cli_quantize_flag(tiny_model_dir, tmp_path):
    image = tmp_path / "red.png"
    picture(1).save(image)
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--image", str(image),
                                      "--hypothesis", "it is red", "--device", "cpu", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "int8: " in result.stdout and "Result: " in result.stdout
    refused = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--image", str(image),
                                       "--hypothesis", "it is red", "--quantize", "int4"])
    assert refused.exit_code == 2 and "int4" in refused.output


def test_onnx_int8_quantizes_exactly_the_plans_linear_groups(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    QuantizationPlan(["encoder.ffn", "encoder.attention"]).save(model_dir / PLAN_FILE)
    out = tmp_path / "onnx" / "model.onnx"
    result = export_onnx(model_dir, out, quantize="int8")
    groups = linear_nodes(result.fp32_path)
    assert set(groups) == {"image_proj", "encoder.attention", "encoder.ffn", "decoder.cross_kv", "decoder"}
    float_matmuls = {n.name for n in onnx.load(str(out), load_external_data=False).graph.node
                     if n.op_type in ("MatMul", "Gemm")}
    assert not float_matmuls & set(groups["encoder.ffn"] + groups["encoder.attention"])
    assert set(groups["decoder"] + groups["decoder.cross_kv"] + groups["image_proj"]) <= float_matmuls
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert "per channel" in sidecar["quantization"] and "fp32: image_proj" in sidecar["quantization"]
    assert result.int8_max_diff < 0.05


def test_bulk_predict_with_quantize_scores_as_the_int8_predictor(tiny_model_dir, tmp_path):
    csv_path = write_labelled_csv(tmp_path / "data", rows=4, images=2)
    out = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--input_file", str(csv_path),
                                      "--output_file", str(out), "--device", "cpu", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    int8 = Predictor.from_pretrained(tiny_model_dir, device="cpu", quantize="int8")
    inputs = ([csv_path.parent / r["image_path"] for r in rows], [r["premise"] or None for r in rows],
              [r["hypothesis"] for r in rows])
    got = torch.tensor([[r[f"prob_{label}"] for label in LABELS] for r in rows])
    assert torch.allclose(got, int8.probabilities(*inputs), atol=1e-6)
    fp32 = Predictor.from_pretrained(tiny_model_dir, device="cpu").probabilities(*inputs)
    assert not torch.allclose(got, fp32, atol=1e-6)  # so the int8 model did the scoring
