"""int8 on CPU: speed and probability change against fp32, on the OFA-base-size benchmark (bench/inference.py's
random weights written by the reference implementation: d 768, 6+6 layers, resnet101, 480 px).

    python bench/quantize.py [--calibration 8] [--eval_images 80] [--rows ROWS] [--threads 1]

Examples are varied: synthetic scenes (velora.synthetic: shapes, colours, places, counts; one hypothesis of each
label per picture, a premise on 70% of them) and photo-like pictures (gradients, shapes and noise) with everyday
texts. The plan is chosen on the calibration images (`velora.int8_calibration.choose_plan`, written to
bench/.cache/int8_plan.json) and every row is judged on other, held-out images and texts: max and mean |Δp| over the
three probabilities, and the share of examples whose label changed. Speed: CPU seconds per example end to end (image
preprocessing, prompt, model; batch 1), each row timed alternately with fp32 in the same rounds (a burst of load
elsewhere hits both), with --threads threads (1 by default: CPU time is then a fair measure on a shared machine).

Rows (each printed as measured; --rows picks a subset):
  torch-fp32          the baseline
  torch-int8-old      every Linear, per-tensor weights: what `--quantize int8` did before
  torch-int8-linear   every Linear group, per-channel weights
  torch-int8-default  velora.quantize.DEFAULT_PLAN (a model without a plan of its own)
  torch-int8-plan     the plan chosen here (may include the ResNet's convolutions)
  torch-int8-all      every group in int8, the ResNet included
  onnx-fp32           the exported graph on onnxruntime (export takes ~10 min on 2 busy cores; cached)
  onnx-int8-old       onnxruntime dynamic int8, every MatMul/Gemm per tensor (the export before)
  onnx-int8-plan      onnxruntime dynamic int8 per channel, the plan's Linear groups (`velora export --quantize`)
The onnx rows are judged on the first --onnx_examples evaluation examples (the whole graph runs per example).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, Report, add_report_arguments, machine_line, reference_checkpoint  # noqa: E402

from velora import synthetic  # noqa: E402
from velora.export import OnnxPredictor, export_onnx, quantize_onnx_int8  # noqa: E402
from velora.int8_calibration import (choose_plan, compare, prepare_calibration, probabilities,  # noqa: E402
                                     score_quantized)
from velora.predictor import Predictor  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic  # noqa: E402
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic  # noqa: E402

from velora.quantize import DEFAULT_PLAN, GROUPS, LAYER_GROUPS, QuantizationPlan, quantize_model, \
    resnet_scales  # noqa: E402

ROWS = ["torch-fp32", "torch-int8-old", "torch-int8-linear", "torch-int8-default", "torch-int8-plan",
        "torch-int8-all", "onnx-fp32", "onnx-int8-old", "onnx-int8-plan"]
COLUMNS = ["row", "what", "CPU s/example", "fp32 CPU s/example", "speed vs fp32", "max abs Δp", "mean abs Δp",
           "changed labels", "examples"]
EVERYDAY = [("a man in a red shirt rides a bike down the street.", "a person is outdoors."),
            ("two dogs play in the snow", "the animals are sleeping inside a warm house"),
            ("a woman holds an umbrella.", "it is raining."),
            ("a stainless steel coffee maker on a kitchen counter", "this appliance brews hot beverages"),
            ("kids on a beach", "people are outside"), (None, "there is a cat on the sofa"),
            ("a crowded market at night", "the market is empty"), (None, "the picture shows a sunset")]


def photo_like(rng: np.random.Generator, size: int = 480) -> Image.Image:
    """Gradients, a few shapes and sensor-like noise: pixel statistics closer to a photo than a flat scene."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([np.add.outer(ramp * rng.uniform(0.2, 1), ramp * rng.uniform(0.2, 1)) / 2] * 3, -1)
    base = base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 8))):
        x, y, w, h = (int(v) for v in rng.integers(0, size - 60, 2).tolist() + rng.integers(20, 160, 2).tolist())
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def varied_examples(n_images: int, seed: int) -> tuple[list, list, list]:
    """Three examples per picture: scenes with one hypothesis per label, photo-like pictures with everyday texts."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    images, premises, hypotheses = [], [], []
    for i in range(n_images):
        if i % 3 == 2:
            image, texts = photo_like(np_rng), rng.sample(EVERYDAY, 3)
        else:
            task = "AB"[i % 2]
            scene = synthetic.make_scene(rng)
            premise = synthetic.make_premise(scene, task, rng)
            image = synthetic.render(scene, 480)
            texts = [(premise.text if rng.random() < 0.7 else None, h.text)
                     for h in synthetic.make_hypotheses(scene, premise, task, rng, per_label=1)]
        for premise, hypothesis in texts:
            images.append(image)
            premises.append(premise)
            hypotheses.append(hypothesis)
    return images, premises, hypotheses


def old_int8(model: torch.nn.Module) -> torch.nn.Module:
    """What `--quantize int8` did before: every Linear but the output projection, per-tensor weights."""
    linears = {name: default_dynamic_qconfig for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name != "decoder.output_projection"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, linears, dtype=torch.qint8)


class Bench:
    def __init__(self, args, report: Report):
        self.args, self.report = args, report
        self.model_dir = reference_checkpoint()
        self.fp32 = Predictor.from_pretrained(self.model_dir, device="cpu", dtype="float32")
        calibration_set = varied_examples(args.calibration, seed=1)
        self.timing_set = varied_examples(1, seed=2)
        self.eval_set = varied_examples(args.eval_images, seed=3)
        start = time.process_time()
        plain = Predictor.from_pretrained(self.model_dir, device="cpu", dtype="float32", fuse_resnet=False)
        self.model = plain.model
        self.calibration = prepare_calibration(plain, *calibration_set)
        self.eval = prepare_calibration(plain, *self.eval_set)
        report.note(f"fp32 scores of {len(self.calibration.inputs)} calibration and {len(self.eval.inputs)} "
                    f"evaluation examples: {time.process_time() - start:.0f} CPU s; fp32 top probability median "
                    f"{self.eval.reference.max(-1).values.median():.3f}")
        self.plans = {"torch-int8-linear": QuantizationPlan(list(LAYER_GROUPS)), "torch-int8-default": DEFAULT_PLAN}

    def chosen_plan(self) -> QuantizationPlan:
        if "torch-int8-plan" not in self.plans:
            plan = choose_plan(self.model, self.calibration, self.args.tolerance, log=self.report.note)
            plan.save(CACHE / "int8_plan.json")
            self.report.note(f"plan within {self.args.tolerance} on the calibration set: {plan.describe()} "
                             f"(saved to {CACHE / 'int8_plan.json'})")
            self.plans["torch-int8-plan"] = plan
        return self.plans["torch-int8-plan"]

    def timed(self, run, rounds: int) -> tuple[float, float]:
        """Best CPU seconds per example of `run` and of fp32, measured alternately."""
        images, premises, hypotheses = self.timing_set
        best = {"row": float("inf"), "fp32": float("inf")}
        for _ in range(rounds):
            for key, fn in (("fp32", self.fp32.predict), ("row", run)):
                for example in zip(images, premises, hypotheses):
                    start = time.process_time()
                    fn(example[0], example[1], example[2])
                    best[key] = min(best[key], time.process_time() - start)
        return best["row"], best["fp32"]

    def add(self, name: str, what: str, run, accuracy: dict | None, examples: int) -> None:
        run(*[x[0] for x in self.timing_set])  # warm-up
        seconds, fp32_seconds = self.timed(run, self.args.rounds)
        values = {"row": name, "what": what, "CPU s/example": f"{seconds:.2f}",
                  "fp32 CPU s/example": f"{fp32_seconds:.2f}", "speed vs fp32": f"{fp32_seconds / seconds:.2f}x",
                  "examples": examples}
        if accuracy is not None:
            values.update({"max abs Δp": f"{accuracy['max_abs_dp']:.1e}", "mean abs Δp": f"{accuracy['mean_abs_dp']:.1e}",
                           "changed labels": f"{accuracy['changed_labels']:.1%}"})
        self.report.row(name, {**values, "raw": {"seconds": seconds, "fp32_seconds": fp32_seconds, **(accuracy or {})}})

    def torch_row(self, name: str) -> None:
        if name == "torch-fp32":
            return self.add(name, "torch fp32 (BatchNorm folded)", self.fp32.predict, None, len(self.eval.inputs))
        if name == "torch-int8-all":
            self.plans[name] = QuantizationPlan(list(GROUPS), engine=self.chosen_plan().engine,
                                                resnet_activations=resnet_scales(self.model, self.calibration.pixels))
        plan = self.chosen_plan() if name == "torch-int8-plan" else self.plans.get(name)
        predictor = Predictor.from_pretrained(self.model_dir, device="cpu", dtype="float32", fuse_resnet=False)
        if plan is None:  # the old behaviour
            predictor.model = old_int8(predictor.model)
            accuracy = compare(self.eval.reference, probabilities(old_int8(copy.deepcopy(self.model)),
                                                                  self.eval.inputs))
            what = "every Linear, per-tensor (before)"
        else:
            quantize_model(predictor.model, plan)
            accuracy = compare(self.eval.reference, score_quantized(self.model, self.eval, plan))
            what = plan.describe()
        predictor.model.encoder.embed_images.fuse_for_inference_()
        self.add(name, what, predictor.predict, accuracy, len(self.eval.inputs))

    def onnx_rows(self, names: list[str]) -> None:
        folder = CACHE / "onnx-base"
        fp32_path = folder / "model.onnx"
        if not fp32_path.exists():
            start = time.perf_counter()
            export_onnx(self.model_dir, fp32_path, overwrite=True)
            self.report.note(f"exported {fp32_path} in {time.perf_counter() - start:.0f} s")
        n = min(self.args.onnx_examples, len(self.eval.inputs))
        subset = [x[:n] for x in self.eval_set]
        reference = self.eval.reference[:n]
        for name in names:
            path, what = fp32_path, "onnxruntime fp32"
            if name != "onnx-fp32":
                path = folder / f"{name}.onnx"
                if name == "onnx-int8-old":
                    old_onnx_int8(fp32_path, path)
                    what = "onnxruntime int8, every MatMul per tensor"
                else:
                    what = "onnxruntime " + quantize_onnx_int8(fp32_path, path, self.chosen_plan())
                shutil.copy(fp32_path.with_suffix(".json"), path.with_suffix(".json"))
            scorer = OnnxPredictor.from_file(path, threads=self.args.threads)
            accuracy = compare(reference, scorer.probabilities(*subset, batch_size=1))

            def run(image, premise, hypothesis, scorer=scorer):
                return scorer.probabilities([image], [premise], [hypothesis], batch_size=1)

            self.add(name, what, run, accuracy, n)


def old_onnx_int8(source: Path, target: Path) -> None:
    """What `velora export --quantize int8` did before: every MatMul/Gemm, per-tensor weights."""
    logging.disable(logging.WARNING)
    try:
        ort_quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.disable(logging.NOTSET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=int, default=8, help="calibration pictures (3 examples each)")
    parser.add_argument("--eval_images", type=int, default=80, help="held-out pictures (3 examples each)")
    parser.add_argument("--onnx_examples", type=int, default=24, help="evaluation examples the onnx rows score")
    parser.add_argument("--tolerance", type=float, default=0.005, help="max |Δp| the plan is chosen for")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (fp32 and the row alternately)")
    parser.add_argument("--threads", type=int, default=1)
    add_report_arguments(parser, ROWS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = Report("quantize", COLUMNS, args)
    report.note(machine_line())
    bench = Bench(args, report)
    for name in [r for r in ROWS if r.startswith("torch") and report.wanted(r)]:
        bench.torch_row(name)
    onnx = [r for r in ROWS if r.startswith("onnx") and report.wanted(r)]
    if onnx:
        bench.onnx_rows(onnx)
    report.note(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
