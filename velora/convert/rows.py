"""One raw row -> a Record plus the RowIssues of its text fields and label. Pure: no file is touched here (the
image is located and checked by velora.convert.image_checks)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from velora.convert.issues import RowIssue, clip
from velora.convert.reading import RawRow
from velora.labels import normalize_label

REQUIRED_VALUES = ("image_path", "hypothesis", "label")  # an empty premise is allowed (image-only prompt)
MAX_TEXT_CHARS = 10_000  # of image_path, premise or hypothesis; the model reads the first 80 words of a text
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^data:", re.I)


@dataclass
class Record:
    """A row after its text checks; image fields are filled in by the image check."""

    line: int
    image_path: str  # as written in the input
    premise: str
    hypothesis: str
    label: str | None
    metadata: dict[str, Any]
    image_file: Path | None = None
    image_key: str = ""  # sha256 of the image bytes
    image_format: str | None = None
    premise_original: str | None = None  # as the user wrote it, when `premise` is its translation (--translate)
    hypothesis_original: str | None = None
    translated_by: str = ""  # the translation back-end's name when a text of this row was translated


def _text(raw: RawRow, name: str, issues: list[RowIssue]) -> str:
    if name not in raw.values:
        if name in REQUIRED_VALUES:
            issues.append(RowIssue(raw.line, name, "missing_field", f"no {name!r} field"))
        return ""
    value = raw.values[name]
    if value is None:
        value = ""
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        issues.append(RowIssue(raw.line, name, "not_text", f"{name} must be text, got {type(value).__name__}",
                               value=clip(value)))
        return ""
    if len(value) > MAX_TEXT_CHARS:
        issues.append(RowIssue(raw.line, name, "field_too_long", f"{name} is {len(value):,} characters, over the "
                               f"limit of {MAX_TEXT_CHARS:,} (the model reads the first 80 words)", value=clip(value)))
        return ""
    # sentences: whitespace runs (newlines, tabs) become one space; a file name is only trimmed
    value = value.strip() if name == "image_path" else " ".join(value.split())
    if not value and name in REQUIRED_VALUES:
        issues.append(RowIssue(raw.line, name, "empty_field", f"{name} is empty"))
    return value


def _label(raw: RawRow, issues: list[RowIssue]) -> str | None:
    if "label" not in raw.values:
        issues.append(RowIssue(raw.line, "label", "missing_field", "no 'label' field"))
        return None
    value = raw.values["label"]
    if value is None or (isinstance(value, str) and not value.strip()):
        issues.append(RowIssue(raw.line, "label", "empty_field", "label is empty"))
        return None
    label = normalize_label(value) if isinstance(value, str) else None
    if label is None:
        issues.append(RowIssue(
            raw.line, "label", "unknown_label",
            f"{clip(value)!r} is not a label; use entailment, contradiction or neutral (or yes/no/maybe)",
            value=clip(value),
        ))
    return label


def parse_row(raw: RawRow) -> tuple[Record, list[RowIssue]]:
    """Text and label checks for one row (no file access). The row is usable only if the issue list is empty."""
    issues: list[RowIssue] = []
    image_path = _text(raw, "image_path", issues)
    premise = _text(raw, "premise", issues)
    hypothesis = _text(raw, "hypothesis", issues)
    label = _label(raw, issues)
    if image_path and _URL.match(image_path):
        issues.append(RowIssue(raw.line, "image_path", "url_not_supported",
                               "URLs are not supported; download the image and give its file path", value=image_path))
    return Record(raw.line, image_path, premise, hypothesis, label, raw.metadata), issues
