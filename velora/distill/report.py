"""The edge report, OUTPUT_DIR/distill_report.json: the student against its teacher, both loaded from their folders
as `velora predict` loads them, measured in the same run on this machine.

    quality  on the validation split (and --test_file): accuracy, macro-F1, agreement with the teacher's label,
             expected calibration error (15 equal-width confidence bins)
    cost     size on disk of the weights each needs, parameters, GFLOP per example (torch's FlopCounterMode on one
             example), latency of one example in torch fp32 (median of --report_latency_runs) and, with
             --report_onnx, of the int8 ONNX graph `velora export onnx --quantize int8` writes
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


def example_cost(predictor: Predictor, example: tuple, runs: int) -> dict:
    """Parameters, GFLOP and torch fp32 latency (ms, median of `runs`, preprocessing included) of one example."""
    image, premise, hypothesis = example
    batch = predictor.processor([image], [premise], [hypothesis])
    inputs = {k: batch[k] for k in ("input_ids", "decoder_input_ids", "answer_positions", "patch_images")}
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        predictor.model(**inputs)
    cost = {"parameters": sum(p.numel() for p in predictor.model.parameters()),
            "gflop_per_example": counter.get_total_flops() / 1e9}
    if runs:
        predictor.probabilities([image], [premise], [hypothesis])  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            predictor.probabilities([image], [premise], [hypothesis])
            times.append(1000 * (time.perf_counter() - start))
        cost["latency_ms_torch_fp32"] = statistics.median(times)
    return cost


def onnx_cost(model_path: str, example: tuple, runs: int, folder: Path) -> dict:
    """Size and latency (ms, median) of the int8 ONNX graph of `model_path`, exported by velora export."""
    from velora.export import OnnxPredictor, export_onnx  # deferred: onnx and onnxruntime take seconds to import

    result = export_onnx(model_path, folder / "model.onnx", quantize="int8")
    scorer = OnnxPredictor.from_file(result.output)
    image, premise, hypothesis = example
    scorer.probabilities([image], [premise], [hypothesis])  # warm-up
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        scorer.probabilities([image], [premise], [hypothesis])
        times.append(1000 * (time.perf_counter() - start))
    return {"onnx_int8_bytes": result.size_bytes, "latency_ms_onnx_int8": statistics.median(times)}


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
        teacher_model = Predictor.from_bundle(teacher, device="cpu", dtype=torch.float32)
        for name, model in (("student", student_model), ("teacher", teacher_model)):
            report["cost"][name].update(example_cost(model, example, config.report_latency_runs))
        if config.report_onnx:
            with tempfile.TemporaryDirectory(prefix="velora-distill-onnx-") as work:
                for name, path in (("student", str(student_dir)), ("teacher", str(config.teacher))):
                    (Path(work) / name).mkdir()
                    report["cost"][name].update(onnx_cost(path, example, config.report_latency_runs,
                                                          Path(work) / name))
    report["ratios"] = _ratios(report["cost"]["student"], report["cost"]["teacher"])
    for name, split in report["splits"].items():
        if split["teacher"]["accuracy"]:
            report["ratios"][f"{name}_accuracy_kept"] = split["student"]["accuracy"] / split["teacher"]["accuracy"]
    write_json_atomic(Path(student_dir) / REPORT_NAME, report)
    return report
