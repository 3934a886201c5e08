"""The edge report, OUTPUT_DIR/distill_report.json: the student against its teacher, both loaded from their folders
as `velora predict` loads them, measured in the same run on this machine.

    quality  on the validation split (and --test_file): accuracy, macro-F1, agreement with the teacher's label,
             expected calibration error (15 equal-width confidence bins)
    cost     size on disk of the weights each needs, parameters, GFLOP per example (torch's FlopCounterMode on one
             example), latency of one example in torch fp32 (median of --report_latency_runs, the models taking
             turns) end to end and of the model's forward alone, and, with --report_onnx, of the int8 ONNX graph
             `velora export onnx --quantize int8` writes
    ratios   student / teacher of each cost, and the share of the teacher's accuracy the student keeps
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from velora.bundle import ModelBundle
from velora.io import write_json_atomic
from velora.labels import LABELS
from velora.metrics import compute_metrics, predicted_labels
from velora.predictor import Predictor

REPORT_NAME = "distill_report.json"
ECE_BINS = 15
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")


def expected_calibration_error(probs: torch.Tensor, gold: list[str], bins: int = ECE_BINS) -> float:
    """Sum over confidence bins of |accuracy - mean confidence| weighted by the bin's share of examples."""
    confidence, predicted = probs.max(-1)
    correct = np.array([LABELS[i] == g for i, g in zip(predicted.tolist(), gold)], dtype=float)
    confidence = confidence.double().numpy()
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def quality(probs: torch.Tensor, gold: list[str], teacher_probs: torch.Tensor) -> dict:
    m = compute_metrics(gold, predicted_labels(probs))
    agreement = (probs.argmax(-1) == teacher_probs.argmax(-1)).double().mean().item()
    return {"accuracy": m.accuracy, "macro_f1": m.macro_avg["f1"], "agreement_with_teacher": agreement,
            "ece": expected_calibration_error(probs, gold)}


def weights_bytes(bundle: ModelBundle) -> int:
    """Bytes of the weights a model needs: the base's, plus its adapter's."""
    folders = [bundle.base_dir, *([bundle.adapter_dir] if bundle.adapter_dir else [])]
    return sum(p.stat().st_size for folder in folders for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)
               if p.name != "training_args.bin")


def example_cost(predictor: Predictor, example: tuple) -> dict:
    """Parameters and GFLOP of one example (the model's forward, counted by torch's FlopCounterMode)."""
    inputs = model_inputs(predictor, example)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        predictor.model(**inputs)
    return {"parameters": sum(p.numel() for p in predictor.model.parameters()),
            "gflop_per_example": counter.get_total_flops() / 1e9}


def model_inputs(predictor: Predictor, example: tuple) -> dict[str, torch.Tensor]:
    """The forward's inputs for one example, preprocessed by the model's own processor."""
    image, premise, hypothesis = example
    batch = predictor.processor([image], [premise], [hypothesis])
    return {k: batch[k] for k in ("input_ids", "decoder_input_ids", "answer_positions", "patch_images")}


def latencies(calls: dict[str, object], runs: int) -> dict[str, float]:
    """Median ms of each call, the calls taking turns run by run, so a change in the machine's load falls on all
    of them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(runs + 1):  # the first turn warms up
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if turn:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def onnx_scorers(models: dict[str, str], folder: Path) -> dict[str, object]:
    """The int8 ONNX graph of each model path, exported by `velora export onnx --quantize int8`."""
    from velora.export import OnnxPredictor, export_onnx  # deferred: onnx and onnxruntime take seconds to import

    scorers = {}
    for name, path in models.items():
        (folder / name).mkdir()
        scorers[name] = OnnxPredictor.from_file(export_onnx(path, folder / name / "model.onnx",
                                                            quantize="int8").output)
    return scorers


@dataclass
class Split:
    """Labelled examples to compare on, with the teacher's probabilities (from its cache)."""

    name: str
    images: list  # what Predictor.probabilities takes
    premises: list[str | None]
    hypotheses: list[str]
    gold: list[str]
    teacher_probs: torch.Tensor  # (N, 3)
    source: str | None = None

    def quality(self, student: Predictor) -> dict:
        probs = student.probabilities(self.images, self.premises, self.hypotheses)
        return {**({"source": self.source} if self.source else {}), "examples": len(self.gold),
                "student": quality(probs, self.gold, self.teacher_probs),
                "teacher": quality(self.teacher_probs, self.gold, self.teacher_probs)}


def measure_latency(cost: dict, scorers: dict, example: tuple, runs: int, key: str) -> None:
    """One example end to end (decoding, preprocessing, the model) with each scorer, under `key`."""
    image, premise, hypothesis = example
    calls = {name: (lambda s=scorer: s.probabilities([image], [premise], [hypothesis]))
             for name, scorer in scorers.items()}
    if runs:
        for name, ms in latencies(calls, runs).items():
            cost[name][key] = ms


@torch.inference_mode()
def measure_forward(cost: dict, predictors: dict[str, Predictor], example: tuple, runs: int) -> None:
    """The model's forward alone on the preprocessed example: the compute the GFLOP count describes."""
    inputs = {name: model_inputs(p, example) for name, p in predictors.items()}
    calls = {name: (lambda p=p, x=inputs[name]: p.model(**x)) for name, p in predictors.items()}
    if runs:
        for name, ms in latencies(calls, runs).items():
            cost[name]["latency_ms_forward_fp32"] = ms


def _ratios(student: dict, teacher: dict) -> dict:
    return {name: student[name] / teacher[name] for name in student if name in teacher and teacher[name]}


def edge_report(student_dir: Path, teacher: ModelBundle, splits: list[Split], config) -> dict:
    """Measure the student in `student_dir` against the `teacher` on `splits`, and what each costs on one example
    of the first split; write OUTPUT_DIR/distill_report.json."""
    student_model = Predictor.from_pretrained(student_dir, device="cpu", dtype=torch.float32)
    report: dict = {"student": str(student_dir), "teacher": str(config.teacher),
                    "splits": {split.name: split.quality(student_model) for split in splits},
                    "cost": {"student": {"weights_bytes": weights_bytes(ModelBundle.resolve(student_dir))},
                             "teacher": {"weights_bytes": weights_bytes(teacher)}}}
    if splits:
        example = (splits[0].images[0], splits[0].premises[0], splits[0].hypotheses[0])
        models = {"student": student_model, "teacher": Predictor.from_bundle(teacher, device="cpu",
                                                                             dtype=torch.float32)}
        for name, model in models.items():
            report["cost"][name].update(example_cost(model, example))
        measure_latency(report["cost"], models, example, config.report_latency_runs, "latency_ms_torch_fp32")
        measure_forward(report["cost"], models, example, config.report_latency_runs)
        if config.report_onnx:
            with tempfile.TemporaryDirectory(prefix="velora-distill-onnx-") as work:
                onnx = onnx_scorers({"student": str(student_dir), "teacher": str(config.teacher)}, Path(work))
                for name, scorer in onnx.items():
                    report["cost"][name]["onnx_int8_bytes"] = scorer.path.stat().st_size
                measure_latency(report["cost"], onnx, example, config.report_latency_runs, "latency_ms_onnx_int8")
    report["ratios"] = _ratios(report["cost"]["student"], report["cost"]["teacher"])
    for name, split in report["splits"].items():
        if split["teacher"]["accuracy"]:
            report["ratios"][f"{name}_accuracy_kept"] = split["student"]["accuracy"] / split["teacher"]["accuracy"]
    write_json_atomic(Path(student_dir) / REPORT_NAME, report)
    return report
