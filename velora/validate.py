"""`velora validate` and the checking half of `velora convert`: read a user's CSV/JSONL, check every row and image.

Every input row is either kept or dropped with a reason naming its line, field and what to fix; nothing is dropped
silently. The stages are small functions, used in this order by `check_input`:

    read_input(path)            -> InputTable (velora.readers): header + RawRow per record (or a RowIssue for an unreadable line)
    parse_row(raw)              -> Record + RowIssues for its text fields and label (pure)
    resolve_image_path(...)     -> where the image is, plus flags (`..`, found via the working directory)
    check_images(paths, ...)    -> full decode of every distinct image, in `num_proc` processes
    find_duplicates / find_conflicts / quality_warnings            (velora.data_quality)

The result is a CheckedInput: the records to write and a ConversionReport. velora.convert writes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import unicodedata
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image

from velora.data_quality import QualityWarning, RowIssue, find_conflicts, find_duplicates, plural, quality_warnings
from velora.errors import VeloraError
from velora.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from velora.labels import LABELS, normalize_label
from velora.readers import FIELDS, RawRow, _clip, read_input  # noqa: F401  (FIELDS re-exported)

REQUIRED_VALUES = ("image_path", "hypothesis", "label")  # an empty premise is allowed (image-only prompt)
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


# --- one row -----------------------------------------------------------------------------------------------------


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
                               value=_clip(value)))
        return ""
    # sentences: whitespace runs (newlines, tabs) become one space; a file name is only trimmed
    value = value.strip() if name == "image_path" else " ".join(value.split())
    if not value and name in REQUIRED_VALUES:
        issues.append(RowIssue(raw.line, name, "empty_field", f"{name} is empty"))
    return value


def parse_row(raw: RawRow) -> tuple[Record, list[RowIssue]]:
    """Text and label checks for one row (no file access). The row is usable only if the issue list is empty."""
    issues: list[RowIssue] = []
    image_path = _text(raw, "image_path", issues)
    premise = _text(raw, "premise", issues)
    hypothesis = _text(raw, "hypothesis", issues)
    label = None
    raw_label = raw.values.get("label")
    if "label" not in raw.values:
        issues.append(RowIssue(raw.line, "label", "missing_field", "no 'label' field"))
    elif raw_label is None or (isinstance(raw_label, str) and not raw_label.strip()):
        issues.append(RowIssue(raw.line, "label", "empty_field", "label is empty"))
    else:
        label = normalize_label(raw_label) if isinstance(raw_label, str) else None
        if label is None:
            issues.append(RowIssue(
                raw.line, "label", "unknown_label",
                f"{_clip(raw_label)!r} is not a label; use entailment, contradiction or neutral (or yes/no/maybe)",
                value=_clip(raw_label),
            ))
    if image_path and re.match(r"^[a-z][a-z0-9+.-]*://|^data:", image_path, re.I):
        issues.append(RowIssue(raw.line, "image_path", "url_not_supported",
                               "URLs are not supported; download the image and give its file path", value=image_path))
    return Record(raw.line, image_path, premise, hypothesis, label, raw.metadata), issues


# --- images ------------------------------------------------------------------------------------------------------


def _variants(path: Path, snli: bool) -> Iterator[Path]:
    yield path
    text = str(path)
    if "\\" in text:
        yield Path(text.replace("\\", "/"))  # written on Windows
    for form in ("NFC", "NFD"):  # macOS stores names decomposed
        other = unicodedata.normalize(form, text)
        if other != text:
            yield Path(other)
    if snli and not path.suffix:
        yield path.with_suffix(".jpg")


def _case_hint(path: Path) -> str:
    try:
        siblings = os.listdir(path.parent)
    except OSError:
        return ""
    matches = [s for s in siblings if s.casefold() == path.name.casefold()]
    return f"; a file named {matches[0]!r} exists (file names are case-sensitive)" if matches else ""


def resolve_image_path(
    image_path: str, base: Path, cwd: Path | None = None, *, snli: bool = False
) -> tuple[Path | None, list[tuple[str, str]], str | None]:
    """Where a row's image is: relative paths are taken from `base` (the CSV's folder or --image_root), then, when
    `cwd` is given, from the working directory (the guide writes ./data/x.jpg next to a CSV inside data/).

    Returns (file or None, flags as (code, reason), error when not found)."""
    raw = Path(os.path.expanduser(image_path))
    if raw.is_absolute():
        bases: list[Path | None] = [None]
    else:
        bases = [base] + ([cwd] if cwd is not None and os.path.abspath(cwd) != os.path.abspath(base) else [])
    for where in bases:
        for candidate in _variants(raw, snli):
            full = candidate if where is None else where / candidate
            if not os.path.lexists(full):
                continue
            full = Path(os.path.abspath(full))
            flags = []
            if where is not None and where is not base:
                flags.append(("found_in_working_directory",
                              f"{image_path!r} is not in {base}; using {full} (relative to the working directory)"))
            elif where is not None:
                root = os.path.abspath(base)
                if os.path.commonpath([root, str(full)]) != root:
                    flags.append(("outside_image_root",
                                  f"{full} is outside {root}; allowed, and its bytes are embedded in the dataset"))
            return full, flags, None
    first = raw if bases[0] is None else Path(os.path.abspath(bases[0] / raw))
    looked = "" if bases[0] is None else f" (relative to {os.path.abspath(bases[0])}" + (
        f" and to the working directory {bases[1]})" if len(bases) > 1 else ")")
    return None, [], f"{first}: image file not found{looked}{_case_hint(first)}"


@dataclass
class ImageCheck:
    path: str  # as given: the row's image_path (locate_and_check) or a file path (check_image)
    error: str | None = None
    code: str | None = None
    sha256: str | None = None
    format: str | None = None
    file: str | None = None  # where the image was found
    flags: list[tuple[str, str]] = field(default_factory=list)


def _error_code(message: str) -> str:
    for needle, code in (("is a directory", "not_a_file"), ("not found", "image_not_found"),
                         ("empty (0 bytes)", "empty_file"), ("not an image", "not_an_image"),
                         ("decompression bomb", "image_too_large"), ("truncated", "truncated_image")):
        if needle in message:
            return code
    return "bad_image"


def _sniff_format(data: bytes) -> str | None:
    """The common formats by their magic bytes (saves a second Image.open); None: ask Pillow."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Decode the image completely (velora.images.load_image) and fingerprint its bytes; the file is read once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning / EXIF chatter; we report our own
        try:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            if not data:  # missing, a directory, empty, unreadable: load_image's message says which
                load_image(path, max_pixels=max_pixels)
                raise ImageError(f"{path}: cannot be read")
            source = io.BytesIO(data)
            source.name = path  # errors name the file
            load_image(source, max_pixels=max_pixels)
            fmt = _sniff_format(data)
            if fmt is None:
                with Image.open(io.BytesIO(data)) as img:
                    fmt = img.format
        except ImageError as e:
            return ImageCheck(path, str(e), _error_code(str(e)))
        except Exception as e:  # permissions, a Pillow plugin bug...: still this row's problem, not a crash
            return ImageCheck(path, f"{path}: cannot be read ({type(e).__name__}: {e})", "bad_image")
    return ImageCheck(path, sha256=hashlib.sha256(data).hexdigest(), format=fmt)


def locate_and_check(
    image_path: str, base: str, cwd: str | None = None, snli: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageCheck:
    """resolve_image_path + check_image for one image_path as written in the input (one worker task)."""
    file, flags, error = resolve_image_path(image_path, Path(base), Path(cwd) if cwd else None, snli=snli)
    if error:
        return ImageCheck(image_path, error, "image_not_found")
    check = check_image(str(file), max_pixels)
    check.path, check.file, check.flags = image_path, str(file), flags
    return check


def _check_chunk(jobs: list[tuple]) -> list[ImageCheck]:
    return [locate_and_check(*job) for job in jobs]


def check_images(
    image_paths: Sequence[str],
    *,
    base: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    snli: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_proc: int = 1,
    progress: bool = False,
) -> dict[str, ImageCheck]:
    """locate_and_check for every distinct image_path, in `num_proc` worker processes, with a progress bar on stderr.

    Workers start with forkserver (spawn where that is missing), never fork: the caller may hold threads. If the
    workers cannot start (e.g. a script read from stdin cannot be re-imported), the rest is checked in-process."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.auto import tqdm

    results: dict[str, ImageCheck] = {}
    jobs = [(p, str(base), str(cwd) if cwd else None, snli, max_pixels) for p in dict.fromkeys(image_paths)]
    with tqdm(total=len(jobs), desc="Checking images", unit="img", disable=not progress or not jobs) as bar:
        if num_proc > 1 and len(jobs) > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            size = max(1, min(64, len(jobs) // (num_proc * 8)))
            try:
                with ProcessPoolExecutor(min(num_proc, len(jobs)), mp_context=context) as pool:
                    futures = [pool.submit(_check_chunk, jobs[i : i + size]) for i in range(0, len(jobs), size)]
                    for future in as_completed(futures):
                        checks = future.result()
                        for check in checks:
                            results[check.path] = check
                        bar.update(len(checks))
            except BrokenProcessPool:
                warnings.warn("image-check worker processes failed to start; checking images in this process")
        for job in jobs:
            if job[0] not in results:
                results[job[0]] = locate_and_check(*job)
                bar.update()
    return results


# --- the whole file ----------------------------------------------------------------------------------------------


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
        from velora import __version__

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


@dataclass
class CheckedInput:
    records: list[Record]  # the rows that will be written, duplicates removed, in input order
    report: ConversionReport


def _label_counts(records: Sequence[Record]) -> dict[str, int]:
    counts = Counter(r.label for r in records)
    return {label: counts.get(label, 0) for label in LABELS}


def check_input(
    input_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_proc: int = 1,
    progress: bool = False,
) -> CheckedInput:
    """Read and check every row and image; nothing is written. Raises VeloraError for a file-level problem
    (missing file or columns, not UTF-8); a row-level problem drops that row with a reason in the report."""
    if num_proc < 1:
        raise VeloraError(f"--num_proc must be 1 or more, got {num_proc}")
    table = read_input(input_path)
    if image_root is not None:
        base = Path(image_root)
        if not base.is_dir():
            raise VeloraError(f"--image_root {base}: not a directory")
        cwd = None
    else:
        base, cwd = table.path.parent, Path.cwd()
        if os.path.abspath(cwd) == os.path.abspath(base):
            cwd = None

    dropped: list[RowIssue] = []
    flagged: list[RowIssue] = []
    parsed: list[tuple[Record, list[RowIssue]]] = []
    for raw in table.rows:
        if isinstance(raw, RowIssue):
            dropped.append(raw)
        else:
            parsed.append(parse_row(raw))

    wanted = [r.image_path for r, issues in parsed
              if r.image_path and not any(i.field == "image_path" for i in issues)]
    checks = check_images(wanted, base=base, cwd=cwd, snli=table.format == "snli-ve", max_pixels=max_pixels,
                          num_proc=num_proc, progress=progress)

    good: list[Record] = []
    for record, issues in parsed:
        check = checks.get(record.image_path) if not any(i.field == "image_path" for i in issues) else None
        if check is not None:
            if check.error:
                issues.append(RowIssue(record.line, "image_path", check.code or "bad_image", check.error,
                                       value=record.image_path))
            else:
                record.image_file = Path(check.file)
                record.image_key, record.image_format = check.sha256 or "", check.format
                flagged.extend(RowIssue(record.line, "image_path", code, reason, value=record.image_path)
                               for code, reason in check.flags)
        if issues:
            dropped.extend(issues)
        else:
            good.append(record)

    keep, duplicates = find_duplicates(good)
    records = [good[i] for i in keep]
    flagged.extend(duplicates)
    flagged.extend(find_conflicts(records))
    report = ConversionReport(
        input_path=str(table.path),
        input_format=table.format,
        columns=table.columns,
        metadata_columns=table.metadata_columns,
        rows_read=len(table.rows),
        blank_rows=table.blank_lines,
        kept=len(records),
        images=len({r.image_key for r in records}),
        labels=_label_counts(records),
        dropped=sorted(dropped, key=lambda i: i.line),
        flagged=sorted(flagged, key=lambda i: i.line),
        warnings=quality_warnings(records),
        settings={"image_root": str(base), "max_pixels": max_pixels},
    )
    return CheckedInput(records, report)


def validate(
    input_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    num_proc: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report_path: str | os.PathLike | None = None,
    progress: bool = False,
) -> ConversionReport:
    """The checks of `convert`, writing nothing but the report (when `report_path` is given)."""
    report = check_input(input_path, image_root=image_root, max_pixels=max_pixels, num_proc=num_proc,
                         progress=progress).report
    if report_path is not None:
        report.save(report_path)
    return report
