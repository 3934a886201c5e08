"""The conversion report: what happened to every row (kept, dropped with its reason, flagged), the data-quality
warnings and the split sizes, as JSON (`conversion_report.json`) and as the console summary."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from velora import __version__
from velora.convert.issues import QualityWarning, RowIssue, plural
from velora.labels import LABELS

REPORT_NAME = "conversion_report.json"

CODE_TEXT = {
    # dropped
    "bad_encoding": "line is not UTF-8",
    "bad_json": "broken JSON line",
    "not_an_object": "JSON line is not an object",
    "field_count": "wrong number of fields",
    "missing_field": "missing field",
    "empty_field": "empty required field",
    "not_text": "field is not text",
    "unknown_label": "unknown label",
    "url_not_supported": "image path is a URL",
    "image_not_found": "image file not found",
    "not_a_file": "image path is a directory",
    "empty_file": "empty image file",
    "not_an_image": "not an image",
    "truncated_image": "truncated or corrupt image",
    "image_too_large": "image over the pixel limit",
    "bad_image": "unreadable image",
    # flagged (kept)
    "duplicate": "exact duplicate, kept once",
    "conflicting_labels": "same image + hypothesis, conflicting labels",
    "outside_image_root": "image outside the CSV folder / --image_root (allowed)",
    "found_in_working_directory": "image found relative to the working directory, not the CSV folder",
}


def label_counts(records: Sequence[Any]) -> dict[str, int]:
    """{label: rows} in LABELS order, for anything with a `label`."""
    counts = Counter(r.label for r in records)
    return {label: counts.get(label, 0) for label in LABELS}


def split_summary(records: Sequence[Any]) -> dict[str, Any]:
    return {"rows": len(records), "images": len({r.image_key for r in records}), "labels": label_counts(records)}


@dataclass
class ConversionReport:
    """What happened to every row. `dropped`: rows not in the output; `flagged`: rows kept but worth a look
    (duplicates are kept once); `warnings`: data-quality advice about the whole file."""

    input_path: str
    input_format: str
    columns: list[str]
    metadata_columns: list[str]
    rows_read: int
    blank_rows: int
    kept: int
    images: int
    labels: dict[str, int]
    dropped: list[RowIssue]
    flagged: list[RowIssue]
    warnings: list[QualityWarning]
    settings: dict[str, Any]
    splits: dict[str, dict[str, Any]] | None = None
    output_dir: str | None = None
    report_path: str | None = None

    @property
    def dropped_rows(self) -> int:
        return len({issue.line for issue in self.dropped})

    @property
    def duplicates(self) -> int:
        return sum(1 for issue in self.flagged if issue.code == "duplicate")

    def to_dict(self) -> dict:
        return {
            "velora_version": __version__,
            "input": self.input_path,
            "format": self.input_format,
            "columns": self.columns,
            "metadata_columns": self.metadata_columns,
            "settings": self.settings,
            "output_dir": self.output_dir,
            "counts": {
                "rows_read": self.rows_read,
                "blank_rows_skipped": self.blank_rows,
                "kept": self.kept,
                "dropped": self.dropped_rows,
                "duplicates_removed": self.duplicates,
                "images": self.images,
                "labels": self.labels,
                "dropped_by_reason": dict(Counter(issue.code for issue in self.dropped).most_common()),
                "flagged_by_reason": dict(Counter(issue.code for issue in self.flagged).most_common()),
            },
            "splits": self.splits,
            "dropped": [issue.to_dict() for issue in self.dropped],
            "flagged": [issue.to_dict() for issue in self.flagged],
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.report_path = str(path)
        return path

    def summary(self, examples: int = 3) -> str:
        """The console summary: counts, the reasons rows were dropped (with a few lines each), warnings."""
        out = [f"Read {plural(self.rows_read, 'row')} from {self.input_path} ({self.input_format})."]
        labels = "  ".join(f"{label} {self.labels.get(label, 0):,}" for label in LABELS)
        out.append(f"Kept {plural(self.kept, 'row')}, {plural(self.images, 'distinct image')}: {labels}")
        if self.splits:
            width = max(len(name) for name in self.splits)
            for name, split in self.splits.items():
                counts = "  ".join(f"{label} {split['labels'].get(label, 0):,}" for label in LABELS)
                out.append(f"  {name:<{width}}  {plural(split['rows'], 'row'):>12}  "
                           f"{plural(split['images'], 'image'):>13}   {counts}")
        for title, issues in (("Dropped", self.dropped), ("Flagged (kept)", self.flagged)):
            if not issues:
                continue
            rows = len({issue.line for issue in issues})
            out.append(f"{title}: {plural(rows, 'row')}")
            for code, count in Counter(issue.code for issue in issues).most_common():
                out.append(f"  {count:>6,}  {CODE_TEXT.get(code, code)}")
                for issue in [i for i in issues if i.code == code][:examples]:
                    out.append(f"            line {issue.line}, {issue.field}: {issue.reason}")
        for w in self.warnings:
            out.append(f"Warning: {w.message}")
        if self.report_path:
            out.append(f"Report: {self.report_path}")
        return "\n".join(out)
