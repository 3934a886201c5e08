"""`velora validate` and the checking half of `velora convert`: every row of a CSV/JSONL and every image, in order

    read_input(path)            -> InputTable: a RawRow per record, or a RowIssue for an unreadable line (reading)
    parse_row(raw)              -> Record + RowIssues for its text fields and label (rows, pure)
    check_images(paths, ...)    -> where each image is, a full decode, its sha256, in `num_proc` processes
    find_duplicates / find_conflicts / quality_warnings                  (quality, pure)

Every input row is either kept or dropped with a reason naming its line, field and what to fix; nothing is dropped
silently. The result is a CheckedInput: the records to write and a ConversionReport.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from velora.convert.image_checks import ImageCheck, check_images
from velora.convert.issues import QualityWarning, RowIssue
from velora.convert.quality import find_conflicts, find_duplicates, quality_warnings
from velora.convert.reading import InputTable, read_input
from velora.convert.report import ConversionReport, label_counts
from velora.convert.rows import Record, parse_row
from velora.convert.translation import take_originals, translate_records
from velora.errors import VeloraError
from velora.images import DEFAULT_LIMITS, ImageLimits

if TYPE_CHECKING:
    from velora.translate import Translator


# The columns `velora mine` adds to a row: scores of one model at one time, not data to train on.
MINED_SCORE_COLUMNS = ("flag", "predicted_label", "confidence", "margin", "entropy", "prob_entailment",
                       "prob_contradiction", "prob_neutral", "mined_from")


@dataclass
class CheckedInput:
    records: list[Record]  # the rows that will be written, duplicates removed, in input order
    report: ConversionReport


def image_limits(limits: ImageLimits | None = None, max_pixels: int | None = None) -> ImageLimits:
    """`limits` (default: velora.images' defaults), with `max_pixels` when given."""
    limits = limits or DEFAULT_LIMITS
    return replace(limits, max_pixels=max_pixels) if max_pixels is not None else limits


def _image_bases(table: InputTable, image_root: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """(the root: where relative image paths start and what they may not leave; the working directory as a second
    place to look, or None)."""
    if image_root is not None:
        base = Path(image_root)
        if not base.is_dir():
            raise VeloraError(f"--image_root {base}: not a directory")
        return base, None
    base, cwd = table.path.parent, Path.cwd()
    return base, None if os.path.abspath(cwd) == os.path.abspath(base) else cwd


def _image_ok(issues: list[RowIssue]) -> bool:
    """No problem with the row's image_path so far (its image is worth checking)."""
    return not any(i.field == "image_path" for i in issues)


def _apply_image_checks(parsed: list[tuple[Record, list[RowIssue]]], checks: dict[str, ImageCheck],
                        dropped: list[RowIssue]) -> tuple[list[Record], list[RowIssue]]:
    """Each record gets its image's file, hash and format, or an issue; returns (the usable records, the flags)
    and adds the issues of unusable rows to `dropped`."""
    good: list[Record] = []
    flagged: list[RowIssue] = []
    for record, issues in parsed:
        check = checks.get(record.image_path) if _image_ok(issues) else None
        if check is not None and check.error:
            issues.append(RowIssue(record.line, "image_path", check.code or "bad_image", check.error,
                                   value=record.image_path))
        elif check is not None:
            record.image_file = Path(check.file)
            record.image_key, record.image_format = check.sha256 or "", check.format
            flagged.extend(RowIssue(record.line, "image_path", code, reason, value=record.image_path)
                           for code, reason in check.flags)
        if issues:
            dropped.extend(issues)
        else:
            good.append(record)
    return good, flagged


def _drop_mined_scores(parsed: list[tuple[Record, list[RowIssue]]], columns: list[str]) -> list[QualityWarning]:
    """A CSV written by `velora mine` (or reviewed): its scores are not data, so they are left out of `metadata`,
    with a note; `source_row` and `split` stay, saying where each row came from."""
    scores = [c for c in columns if c in MINED_SCORE_COLUMNS]
    if "flag" not in scores:
        return []
    for record, _ in parsed:
        for name in scores:
            record.metadata.pop(name, None)
    return [QualityWarning("mined_columns", f"the columns `velora mine` adds ({', '.join(scores)}) are scores, "
                                            "not data: left out (the rows' source_row and split are kept)")]


def check_input(
    input_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    allow_outside_paths: bool = False,
    limits: ImageLimits | None = None,
    max_pixels: int | None = None,
    num_proc: int = 1,
    progress: bool = False,
    translator: Translator | None = None,
) -> CheckedInput:
    """Read and check every row and image; nothing is written. Raises VeloraError for a file-level problem
    (missing file or columns, not UTF-8); a row-level problem drops that row with a reason in the report.

    Images must lie inside `image_root` (default: the input file's folder), symlinks followed, unless
    `allow_outside_paths`; each is read and decoded within `limits` (`max_pixels` overrides limits.max_pixels).
    With a `translator` (velora.translate.Translator), the usable rows' texts are translated to English, the
    originals kept (velora.convert.translation)."""
    if num_proc < 1:
        raise VeloraError(f"--num_proc must be 1 or more, got {num_proc}")
    limits = image_limits(limits, max_pixels)
    table = read_input(input_path)
    root, cwd = _image_bases(table, image_root)

    parsed = [parse_row(raw) for raw in table.rows if not isinstance(raw, RowIssue)]
    take_originals([record for record, _ in parsed])  # a CSV from `velora mine` of translated rows
    mined = _drop_mined_scores(parsed, table.metadata_columns)
    dropped = [raw for raw in table.rows if isinstance(raw, RowIssue)]
    wanted = [r.image_path for r, issues in parsed if r.image_path and _image_ok(issues)]
    checks = check_images(wanted, root=root, cwd=cwd, snli=table.format == "snli-ve", limits=limits,
                          allow_outside=allow_outside_paths, num_proc=num_proc, progress=progress)
    good, flagged = _apply_image_checks(parsed, checks, dropped)
    flagged.extend(table.notes)
    translation = None
    if translator is not None:
        good, lost, flags, translation = translate_records(good, translator)
        dropped.extend(lost)
        flagged.extend(flags)

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
        labels=label_counts(records),
        dropped=sorted(dropped, key=lambda i: i.line),
        flagged=sorted(flagged, key=lambda i: i.line),
        warnings=quality_warnings(records) + mined,
        settings={"image_root": str(root), "allow_outside_paths": allow_outside_paths,
                  "max_pixels": limits.max_pixels, "max_side": limits.max_side, "max_image_bytes": limits.max_bytes},
        translation=translation,
    )
    return CheckedInput(records, report)


def validate(
    input_path: str | os.PathLike, *, report_path: str | os.PathLike | None = None, **options
) -> ConversionReport:
    """The checks of `convert` (`options` as for check_input: image_root, allow_outside_paths, limits, max_pixels,
    num_proc, progress), writing nothing but the report (when `report_path` is given)."""
    report = check_input(input_path, **options).report
    if report_path is not None:
        report.save(report_path)
    return report
