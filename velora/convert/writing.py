"""`velora convert`: check the input, split the kept rows (grouped by image, stratified by label) and write a
DatasetDict atomically, with conversion_report.json inside it; `load_records` for a CSV/JSONL loaded in memory
(`velora train --train_file`, `velora eval --test_file`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from velora.convert.check import CheckedInput, check_input, image_limits
from velora.convert.dataset import build_dataset, quiet_datasets
from velora.convert.issues import QualityWarning, plural
from velora.convert.report import REPORT_NAME, ConversionReport, split_summary
from velora.convert.split import grouped_stratified_split
from velora.errors import VeloraError
from velora.images import ImageLimits
from velora.io import check_output_dir, is_within, publish, staging_folder

if TYPE_CHECKING:
    from velora.translate import Translator


def _holds_dataset(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _check_output_dir(output: Path, input_path: Path, image_root: Path | None, overwrite: bool) -> None:
    """velora.io's output policy, and one rule of convert's own: the dataset may go inside the input's folder (the
    guide's ./data/hf_dataset beside ./data/my_ve_data.csv) but must never replace that folder or one above it."""
    for protected in filter(None, [input_path.resolve().parent, image_root and image_root.resolve()]):
        if is_within(protected, output):
            raise VeloraError(f"--output_dir {output} would replace the folder holding your input data; "
                              "choose a new folder, e.g. data/hf_dataset")
    check_output_dir(output, "--output_dir", overwrite=overwrite, owned=_holds_dataset, what="dataset")


def _failure_report_path(output: Path) -> Path:
    return output.parent / f"{output.name}.{REPORT_NAME}"


def _unusable(checked: CheckedInput, strict: bool) -> str | None:
    """Why nothing may be written ("no usable rows ...", or --strict's dropped rows), naming the first reason."""
    report = checked.report
    if checked.records and not (strict and report.dropped):
        return None
    first = report.dropped[0] if report.dropped else None
    why = f"; first: line {first.line}, {first.field}: {first.reason}" if first else ""
    if not checked.records:
        return f"no usable rows ({report.dropped_rows} dropped{why})"
    return f"{report.dropped_rows} of {plural(report.rows_read, 'row')} would be dropped{why}"


def convert(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    allow_outside_paths: bool = False,
    val_ratio: float = 0.2,
    seed: int = 42,
    strict: bool = False,
    num_proc: int = 1,
    overwrite: bool = False,
    limits: ImageLimits | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    translator: Translator | None = None,
) -> ConversionReport:
    """Check `input_path` (see check_input for `image_root`, `allow_outside_paths`, `limits`, `max_pixels`) and
    write a DatasetDict (train, validation) to `output_dir`, with conversion_report.json inside it. The split keeps
    each image (by content) in one split and the label mix of the whole. With a `translator`
    (velora.translate.load_translator), non-English premises and hypotheses are written in English, the originals in
    premise_original / hypothesis_original and the back-end in translated_by.

    The dataset appears at `output_dir` only when complete (written beside it, then renamed into place). When no
    row survives, or `strict` and a row was dropped, nothing is written there and the report goes to
    `<output_dir>.conversion_report.json` beside it before VeloraError is raised."""
    if not 0 <= val_ratio < 1:
        raise VeloraError(f"--val_ratio must be at least 0 and below 1, got {val_ratio}")
    output = Path(output_dir)
    input_path = Path(input_path)
    _check_output_dir(output, input_path, Path(image_root) if image_root else None, overwrite)

    limits = image_limits(limits, max_pixels)
    checked = check_input(input_path, image_root=image_root, allow_outside_paths=allow_outside_paths,
                          limits=limits, num_proc=num_proc, progress=progress, translator=translator)
    report, records = checked.report, checked.records
    report.settings.update({"val_ratio": val_ratio, "seed": seed, "strict": strict})
    problem = _unusable(checked, strict)
    if problem:
        failure = report.save(_failure_report_path(output))
        where = f"{input_path}: " if not records else "--strict: "
        raise VeloraError(f"{where}{problem}; every reason is in {failure}")

    train_idx, val_idx = grouped_stratified_split([r.label for r in records], [r.image_key for r in records],
                                                  val_ratio, seed)
    splits = {"train": [records[i] for i in train_idx], "validation": [records[i] for i in val_idx]}
    report.splits = {name: split_summary(rows) for name, rows in splits.items()}
    if report.splits["validation"]["rows"] and report.splits["validation"]["rows"] < 20:
        report.warnings.append(QualityWarning(
            "small_validation",
            f"the validation split has only {plural(report.splits['validation']['rows'], 'row')}; its metrics will be "
            "noisy",
        ))

    from datasets import DatasetDict  # deferred: datasets takes ~1 s to import

    with staging_folder(output) as work:
        full = build_dataset(records, work / "records", limits=limits, progress=progress)
        dataset = DatasetDict({"train": full.select(train_idx), "validation": full.select(val_idx)})
        staged = work / "dataset"
        with quiet_datasets():
            dataset.save_to_disk(str(staged), num_shards={n: 1 for n, rows in splits.items() if len(rows) == 0})
        del dataset, full
        report.output_dir = str(output)
        report.save(staged / REPORT_NAME)
        report.report_path = str(output / REPORT_NAME)
        publish(staged, output)
    stale = _failure_report_path(output)
    if stale.exists():
        stale.unlink()
    return report


def load_records_with_report(input_path: str | os.PathLike, *, strict: bool = False, **options):
    """A CSV/JSONL checked (`options` as for check_input: image_root, allow_outside_paths, limits, max_pixels,
    num_proc, progress) and loaded in memory as one datasets.Dataset (same features as `convert` output, no split),
    with its report. For `velora train --train_file x.csv` / `velora eval --test_file x.csv`."""
    options["limits"] = image_limits(options.get("limits"), options.pop("max_pixels", None))
    checked = check_input(input_path, **options)
    problem = _unusable(checked, strict)
    if problem:
        raise VeloraError(f"{input_path}: {problem}; run `velora validate {input_path}` for every reason")
    with tempfile.TemporaryDirectory(prefix="velora-load-") as cache:
        dataset = build_dataset(checked.records, cache, limits=options["limits"], keep_in_memory=True,
                                progress=options.get("progress", False))
    return dataset, checked.report


def load_records(input_path: str | os.PathLike, **kwargs):
    """load_records_with_report without the report: a datasets.Dataset with `features()`."""
    return load_records_with_report(input_path, **kwargs)[0]
