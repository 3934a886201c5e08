"""What `velora predict --input_file` reports when it is done: rows, scored, failed by reason (with the first
row of each), the predicted labels, the input's labels and, when there are some, the metrics of velora.metrics;
throughput of this run."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from velora.convert.issues import printable
from velora.convert.quality import TRANSLATE_HINT
from velora.labels import LABELS, normalize_label
from velora.metrics import Metrics, compute_metrics


@dataclass
class Tally:
    """Counts over the output rows, kept while they are merged."""

    rows: int = 0
    scored: int = 0
    failed: Counter = field(default_factory=Counter)  # code -> rows
    first_failure: dict[str, str] = field(default_factory=dict)  # code -> "row N: message"
    predicted: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)  # the input's labels
    unknown_labels: int = 0  # label cells that are not one of LABELS (left out of the metrics)
    y_true: list[str] = field(default_factory=list, repr=False)  # labelled, scored rows (16 bytes a row)
    y_pred: list[str] = field(default_factory=list, repr=False)

    def add(self, label: Any, values: dict[str, Any], code: str | None) -> None:
        """One output row: its input label (raw, or None), its prediction columns and its failure code."""
        self.rows += 1
        true = _label(label)
        if true is not None:
            self.labels[true] += 1
        elif label not in (None, ""):
            self.unknown_labels += 1
        if values["error"] is not None:
            self.failed[code] += 1
            self.first_failure.setdefault(code, f"row {self.rows}: {values['error']}")
            return
        self.scored += 1
        self.predicted[values["predicted_label"]] += 1
        if true is not None:
            self.y_true.append(true)
            self.y_pred.append(values["predicted_label"])


def _label(value: Any) -> str | None:
    return normalize_label(value) if isinstance(value, str) else None


def _distribution(counts: Counter) -> str:
    total = sum(counts.values()) or 1
    return " | ".join(f"{label} {counts[label]:,} ({counts[label] / total:.1%})" for label in LABELS)


@dataclass
class BulkResult:
    output: str
    rows: int
    scored: int
    failed: dict[str, int]  # reason code -> rows
    failure_examples: dict[str, str]  # reason code -> the first row that failed so
    predicted: dict[str, int]
    labels: dict[str, int]  # of the input's labelled rows
    unknown_labels: int
    metrics: Metrics | None  # on the rows with a label that were scored
    rows_this_run: int  # scored (or failed) by this run: fewer than rows when it resumed
    seconds: float  # this run's scoring, from the first batch to the last chunk written by every process
    startup_seconds: float  # before the first batch: the plan, loading the model, starting the workers
    processes: int
    resumed_chunks: int  # chunks already finished when this run started
    translated_by: str | None = None  # --translate: the back-end
    translated_rows: int = 0  # rows scored in English, their originals in premise_original / hypothesis_original
    glossary_terms_lost_rows: int = 0  # translated rows missing a --glossary term
    untranslated_cjk_rows: int = 0  # without --translate: rows with Chinese text, scored as if it were English

    @classmethod
    def from_tally(cls, tally: Tally, **run: Any) -> "BulkResult":
        metrics = compute_metrics(tally.y_true, tally.y_pred) if tally.y_true else None
        return cls(rows=tally.rows, scored=tally.scored, failed=dict(tally.failed.most_common()),
                   failure_examples=dict(tally.first_failure), predicted=dict(tally.predicted),
                   labels=dict(tally.labels), unknown_labels=tally.unknown_labels, metrics=metrics, **run)

    @property
    def rows_per_second(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "metrics"}
        out["rows_per_second"] = self.rows_per_second
        if self.metrics is not None:
            out["metrics"] = self.metrics.to_dict()
        return out

    def untranslated_warning(self) -> str | None:
        if not self.untranslated_cjk_rows:
            return None
        return (f"{self.untranslated_cjk_rows:,} of {self.rows:,} rows have Chinese/Japanese/Korean text, scored as if "
                f"it were English (OFA only understands English): {TRANSLATE_HINT}")

    def to_text(self) -> str:
        lines = [f"Scored {self.scored:,} of {self.rows:,} rows -> {self.output}"]
        if self.translated_by:
            lost = (f"; {self.glossary_terms_lost_rows:,} lost a glossary term" if self.glossary_terms_lost_rows
                    else "")
            lines.append(f"Translated {self.translated_rows:,} rows to English with {self.translated_by} (originals "
                         f"in premise_original / hypothesis_original{lost})")
        if self.failed:
            lines.append(f"Failed: {sum(self.failed.values()):,} rows")
            width = max(map(len, self.failed))
            lines += [printable(f"  {code:<{width}} {n:>9,}   first: {self.failure_examples[code]}")[:300]
                      for code, n in self.failed.items()]
        lines.append(f"Predicted: {_distribution(Counter(self.predicted))}")
        if self.labels:
            lines.append(f"Input labels: {_distribution(Counter(self.labels))}")
        if self.unknown_labels:
            lines.append(f"  {self.unknown_labels:,} label(s) not one of {', '.join(LABELS)}: left out of the metrics")
        if self.metrics is not None:
            m = self.metrics
            lines += [f"Metrics on {m.examples:,} labelled rows: accuracy {m.accuracy:.4f}, macro F1 "
                      f"{m.macro_avg['f1']:.4f}, weighted F1 {m.weighted_avg['f1']:.4f}", m.report.rstrip("\n")]
        resumed = f"; resumed with {self.resumed_chunks:,} chunks already done" if self.resumed_chunks else ""
        lines.append(f"Throughput: {self.rows_this_run:,} rows in {self.seconds:.1f} s = {self.rows_per_second:.1f} "
                     f"rows/s ({self.processes} process{'es' if self.processes > 1 else ''}{resumed}), after "
                     f"{self.startup_seconds:.1f} s loading the model and starting workers")
        return "\n".join(lines)
