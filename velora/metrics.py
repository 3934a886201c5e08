"""Classification metrics of velora's three labels, all from scikit-learn: `velora eval` reports them and
`velora train` evaluates (and picks its best checkpoint) with them, so both say the same about the same predictions.

Averages run over the labels present in the true labels or the predictions, as scikit-learn does by default. The
confusion matrix has rows = true label, columns = predicted label, LABELS order.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from velora.errors import VeloraError
from velora.labels import LABELS

AVERAGES = {"macro_avg": "macro avg", "weighted_avg": "weighted avg"}  # Metrics field -> scikit-learn's key
SCORES = ("precision", "recall", "f1")


@dataclass
class Metrics:
    examples: int
    correct: int
    accuracy: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    macro_avg: dict[str, float]  # precision, recall, f1
    weighted_avg: dict[str, float]
    confusion_matrix: list[list[int]]  # [true][predicted], LABELS order
    predicted_counts: dict[str, int]
    report: str = field(default="", repr=False)  # scikit-learn's classification_report table

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "report"}, "labels": list(LABELS)}

    def flat(self) -> dict[str, float]:
        """The headline numbers under stable names, for side-by-side tables and deltas."""
        out = {"accuracy": self.accuracy, "macro f1": self.macro_avg["f1"], "weighted f1": self.weighted_avg["f1"]}
        for label in LABELS:
            for name in SCORES:
                out[f"{label} {name}"] = self.per_class[label][name]
        return out


def _scores(entry: dict) -> dict[str, float]:
    return {name: float(entry["f1-score" if name == "f1" else name]) for name in SCORES}


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> Metrics:
    """Metrics of predicted vs true labels (label names from LABELS)."""
    from sklearn.metrics import classification_report, confusion_matrix  # deferred: seconds; predict needs none

    if len(y_true) != len(y_pred) or not y_true:
        raise VeloraError(f"need as many predictions as labels, at least one: got {len(y_pred)} and {len(y_true)}")
    unknown = sorted({*y_true, *y_pred} - set(LABELS))
    if unknown:
        raise VeloraError(f"unknown label(s) {', '.join(map(repr, unknown))}; expected {', '.join(LABELS)}")
    present = [label for label in LABELS if label in set(y_true) | set(y_pred)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision/recall (no predictions/support) count as 0, reported
        every = classification_report(y_true, y_pred, labels=list(LABELS), output_dict=True, zero_division=0)
        averaged = classification_report(y_true, y_pred, labels=present, output_dict=True, zero_division=0)
        table = classification_report(y_true, y_pred, labels=present, digits=4, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=list(LABELS))
    correct = int(np.trace(matrix))
    return Metrics(
        examples=len(y_true),
        correct=correct,
        accuracy=correct / len(y_true),
        per_class={label: {**_scores(every[label]), "support": int(every[label]["support"])} for label in LABELS},
        **{name: _scores(averaged[key]) for name, key in AVERAGES.items()},
        confusion_matrix=matrix.tolist(),
        predicted_counts={label: int(matrix[:, i].sum()) for i, label in enumerate(LABELS)},
        report=table,
    )


def predicted_labels(probabilities) -> list[str]:
    """The most probable label of each row of (N, 3) scores in LABELS order."""
    return [LABELS[i] for i in np.asarray(probabilities).argmax(-1)]


def trainer_metrics(eval_pred) -> dict[str, float]:
    """`transformers.Trainer`'s compute_metrics hook: accuracy, macro-F1, weighted-F1 and per-class
    precision/recall/F1 of the (B, 3) answer logits (label ids index LABELS)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    y_true = [LABELS[i] for i in np.asarray(eval_pred.label_ids).tolist()]
    m = compute_metrics(y_true, predicted_labels(logits))
    out = {"accuracy": m.accuracy, "macro_f1": m.macro_avg["f1"], "weighted_f1": m.weighted_avg["f1"]}
    for label in LABELS:
        for name in SCORES:
            out[f"{label}_{name}"] = m.per_class[label][name]
    return out
