"""`velora eval`: accuracy, per-class precision / recall / F1, macro and weighted averages and the confusion matrix
of a model on a labelled test set, optionally beside the base model (adapter switched off).

Metrics come from scikit-learn through velora.metrics (the same as `velora train` evaluates with); averages run over
the labels present in the test set or the predictions, as scikit-learn does by default. The confusion matrix has
rows = true label, columns = predicted label, LABELS order.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from velora.data import ExampleSet, load_examples, score_examples
from velora.errors import VeloraError
from velora.io import check_output_file, write_atomic
from velora.labels import LABELS
from velora.metrics import Metrics, compute_metrics, predicted_labels  # noqa: F401 (re-exported: velora.evaluate API)
from velora.predictor import BASE, Predictor
from velora.translate import Translator

SHORT = {"entailment": "entail", "contradiction": "contra", "neutral": "neutral"}  # confusion-matrix headers


# ---------------------------------------------------------------------------------------------------------------
# Text


def classification_table(m: Metrics) -> list[str]:
    """scikit-learn's classification_report table."""
    return m.report.rstrip("\n").splitlines()


def confusion_table(m: Metrics) -> list[str]:
    lines = [f"{'true/predicted':<16}" + "".join(f"{SHORT[label]:>10}" for label in LABELS) + f"{'total':>10}"]
    for label, row in zip(LABELS, m.confusion_matrix):
        lines.append(f"{label:<16}" + "".join(f"{n:>10d}" for n in row) + f"{sum(row):>10d}")
    lines.append(f"{'total':<16}" + "".join(f"{m.predicted_counts[label]:>10d}" for label in LABELS)
                 + f"{m.examples:>10d}")
    return lines


def comparison_table(base: Metrics, tuned: Metrics) -> list[str]:
    lines = [f"{'':<24}{'base':>10}{'tuned':>10}{'delta':>10}"]
    b, t = base.flat(), tuned.flat()
    for name in t:
        lines.append(f"{name:<24}{b[name]:>10.4f}{t[name]:>10.4f}{t[name] - b[name]:>+10.4f}")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    model: str
    test_set: str
    metrics: Metrics
    base_metrics: Metrics | None = None
    note: str | None = None  # rows of the test file left out by the input checks
    predictions: list[str] = field(default_factory=list, repr=False)  # per example, in test-set order
    base_predictions: list[str] | None = field(default=None, repr=False)

    def deltas(self) -> dict[str, float] | None:
        if self.base_metrics is None:
            return None
        b = self.base_metrics.flat()
        return {name: value - b[name] for name, value in self.metrics.flat().items()}

    def to_dict(self) -> dict:
        out = {"model": self.model, "test_set": self.test_set, **self.metrics.to_dict()}
        if self.note:
            out["note"] = self.note
        if self.base_metrics is not None:
            out["base"] = self.base_metrics.to_dict()
            out["delta"] = self.deltas()
        return out

    def to_text(self) -> str:
        m = self.metrics
        lines = [f"Model:    {self.model}", f"Test set: {self.test_set} ({m.examples} examples)"]
        if self.note:
            lines.append(f"Note:     {self.note}")
        lines += ["", f"Accuracy: {m.accuracy:.4f} ({m.correct}/{m.examples})", ""]
        if self.base_metrics is not None:
            lines += ["Base model (adapter off) vs tuned:", *comparison_table(self.base_metrics, m), ""]
        lines += ["Tuned model:" if self.base_metrics is not None else "Per class:", *classification_table(m), ""]
        lines += ["Confusion matrix (rows = true label, columns = predicted):", *confusion_table(m)]
        if self.base_metrics is not None:
            lines += ["", "Base model:", *classification_table(self.base_metrics), "",
                      "Base confusion matrix (rows = true label, columns = predicted):",
                      *confusion_table(self.base_metrics)]
        return "\n".join(lines) + "\n"

    def save_text(self, path: str | os.PathLike) -> Path:
        return _write(path, self.to_text())

    def save_json(self, path: str | os.PathLike) -> Path:
        return _write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def plot(self, path: str | os.PathLike) -> Path:
        return plot_confusion(self, path)


def check_output_paths(report: str | None, json_path: str | None, plot: str | None, overwrite: bool = False
                       ) -> None:
    """Fail before the (slow) evaluation on an output path that cannot be written (velora.io's policy)."""
    for flag, path in (("--output_report", report), ("--output_json", json_path), ("--plot", plot)):
        if path:
            check_output_file(path, flag, overwrite=overwrite)
    if plot:
        formats = Figure().canvas.get_supported_filetypes()
        if Path(plot).suffix.lstrip(".").lower() not in formats:
            raise VeloraError(f"--plot {plot}: unknown image type; end the name with .png, .svg or .pdf")


def _write(path: str | os.PathLike, text: str) -> Path:
    if Path(path).is_dir():
        raise VeloraError(f"{path}: is a directory; give a file name")
    return write_atomic(path, text)


def evaluate(predictor: Predictor, test_file: str | os.PathLike | ExampleSet, *, split: str = "validation",
             compare_base: bool = False, batch_size: int = 16, progress: bool = False,
             translator: Translator | None = None) -> EvalResult:
    """Score every example of `test_file` (CSV/JSONL or `velora convert` dataset; see `velora.data.load_examples`,
    which also translates with a `translator`) with `predictor`; with `compare_base`, also with its adapter
    switched off. The result's note says what the input checks left out and what was (or was not) translated."""
    if compare_base and not predictor.adapter_names:
        raise VeloraError("--compare_base needs a LoRA adapter as --model_path; this is a plain model")
    examples = (test_file if isinstance(test_file, ExampleSet)
                else load_examples(test_file, split, translator=translator))
    y_true = examples.labels
    predictions = predicted_labels(score_examples(predictor, examples, batch_size=batch_size, progress=progress,
                                                  desc="eval"))
    base, base_predictions = None, None
    if compare_base:
        base_predictions = predicted_labels(score_examples(predictor, examples, batch_size=batch_size, adapter=BASE,
                                                           progress=progress, desc="eval (base)"))
        base = compute_metrics(y_true, base_predictions)
    return EvalResult(predictor.description, examples.source, compute_metrics(y_true, predictions), base,
                      examples.notes(), predictions, base_predictions)


def plot_confusion(result: EvalResult, path: str | os.PathLike) -> Path:
    """PNG (or any matplotlib format, by suffix) of the confusion matrix, base and tuned side by side if compared."""
    panels = [("tuned", result.metrics)] if result.base_metrics is not None else [("model", result.metrics)]
    if result.base_metrics is not None:
        panels.insert(0, ("base", result.base_metrics))
    fig = Figure(figsize=(5.2 * len(panels), 4.6))  # no pyplot: no global figure state, no GUI backend
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, m) in zip(axes[0], panels):
        ConfusionMatrixDisplay(np.array(m.confusion_matrix), display_labels=list(LABELS)).plot(
            ax=ax, cmap="Blues", colorbar=False, values_format="d")
        ax.set_title(f"{name}: accuracy {m.accuracy:.3f} (n={m.examples})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    path, image = Path(path), io.BytesIO()
    try:
        fig.savefig(image, format=path.suffix.lstrip(".").lower() or "png", dpi=120)
    except ValueError as e:  # unknown suffix
        raise VeloraError(f"--plot {path}: {e}") from None
    return write_atomic(path, image.getvalue())
