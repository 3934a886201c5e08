"""The conversion report: what happened to every row (kept, dropped with its reason, flagged), the data-quality
warnings and the split sizes, as JSON (`conversion_report.json`) and as the console summary."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from velora import __version__
from velora.convert.issues import QualityWarning, RowIssue, plural, printable
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
    "field_too_long": "text too long",
    "image_not_found": "image file not found",
    "path_outside_root": "image path outside the input's folder / --image_root (refused)",
    "not_a_file": "not a regular file (a directory, device, FIFO or socket)",
    "empty_file": "empty image file",
    "file_too_large": "image file over the size limit",
    "read_timeout": "image file too slow to read",
    "not_an_image": "not an image",
    "truncated_image": "truncated or corrupt image",
    "image_too_large": "image over the pixel limit",
    "decode_timeout": "image too slow to decode",
    "bad_image": "unreadable image",
    # flagged (kept)
    "duplicate": "exact duplicate, kept once",
    "conflicting_labels": "same image + hypothesis, conflicting labels",
    "outside_image_root": "image outside the input's folder / --image_root (--allow_outside_paths)",
    "found_in_working_directory": "image found relative to the working directory, not the CSV folder",
    # --translate
    "translation_failed": "translation came back empty",
    "glossary_term_lost": "glossary term missing from the translation",
}


# Characters json.dumps(ensure_ascii=False) leaves raw that a terminal obeys or that reorder text: DEL, C1 controls
# (0x9b starts an escape sequence on some terminals), bidirectional marks and overrides.
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def json_text(value: Any) -> str:
    """Indented JSON, UTF-8 text kept readable, every control character escaped (`cat report.json` is safe)."""
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
    translation: dict[str, Any] | None = None  # --translate: back-end, cache, glossary, counts

    @property
    def dropped_rows(self) -> int:
        return len({issue.line for issue in self.dropped})

    @property
    def duplicates(self) -> int:
        return sum(1 for issue in self.flagged if issue.code == "duplicate")

    def sections(self) -> list[tuple[str, list[RowIssue]]]:
        """(title, issues) of the rows dropped, removed as duplicates, and kept but flagged: three disjoint sets of
        rows (the flags of a row removed as a duplicate are left out: that row is not in the dataset)."""
        removed = {issue.line for issue in self.flagged if issue.code == "duplicate"}
        return [
            ("Dropped", self.dropped),
            ("Duplicates removed (the first is kept)", [i for i in self.flagged if i.code == "duplicate"]),
            ("Flagged (kept)", [i for i in self.flagged if i.code != "duplicate" and i.line not in removed]),
        ]

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
                "flagged": len({issue.line for issue in self.sections()[2][1]}),
                "images": self.images,
                "labels": self.labels,
                "dropped_by_reason": dict(Counter(issue.code for issue in self.dropped).most_common()),
                "flagged_by_reason": dict(Counter(issue.code for issue in self.flagged).most_common()),
            },
            "splits": self.splits,
            "translation": self.translation,
            "dropped": [issue.to_dict() for issue in self.dropped],
            "flagged": [issue.to_dict() for issue in self.flagged],
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json_text(self.to_dict()), encoding="utf-8")
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
        if self.translation:
            out.append(translation_line(self.translation))
        for title, issues in self.sections():
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
        return "\n".join(printable(line) for line in out)


def translation_line(t: dict[str, Any]) -> str:
    """'Translated 12 texts (8 rows) to English with hf:opus-mt-zh-en: 5 from the cache, ...'."""
    if not t.get("translated"):
        return f"Translation ({t['backend']}): no text needed it (detection: {t['detect']})."
    return (f"Translated {plural(t['translated'], 'text')} ({plural(t.get('rows_translated', 0), 'row')} kept) to "
            f"English with {t['backend']}: {t.get('from_cache', 0):,} from the cache, {t.get('sent', 0):,} sent; "
            "originals in premise_original / hypothesis_original.")
