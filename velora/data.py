"""Converted datasets, for every command that reads one: `open_dataset` (a `velora convert` folder, checked),
`load_training_splits` (`velora train`) and `load_examples` (labelled examples for `eval`, `mine` and
`export --eval_file`, scored through any scorer with the Predictor's `probabilities(images, premises, hypotheses,
batch_size=...)` interface).

A source is either a dataset directory written by `velora convert` (a DatasetDict with train/validation, or a single
saved Dataset) or, for `load_examples`, a CSV/JSONL file, checked on the fly by
`velora.convert.load_records_with_report` exactly as `velora convert` would check it (rows it drops are counted,
never hidden).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from velora.convert import load_records_with_report
from velora.convert.issues import printable
from velora.errors import VeloraError
from velora.images import load_image
from velora.labels import LABELS, normalize_label
from velora.translate import Translator, non_english_warning, translate_pairs

ALL_SPLITS = "all"  # every split of a DatasetDict, one after the other, with a `split` column
REQUIRED_COLUMNS = ("image", "hypothesis", "label")


@dataclass
class ExampleSet:
    """Labelled examples; `dataset` has velora's dataset columns with images left undecoded ({"bytes", "path"})."""

    dataset: Any  # datasets.Dataset
    source: str  # for reports: "data/test.csv" or "data/hf_dataset [validation]"
    dropped: list = field(default_factory=list)  # velora.convert.RowIssue per CSV/JSONL row the checks left out
    translated_by: str | None = None  # the back-end that translated texts of these examples (--translate)

    def __len__(self) -> int:
        return len(self.dataset)

    @cached_property
    def labels(self) -> list[str]:
        return [_label_name(self.dataset, v, f"{self.source} row {i}") for i, v in enumerate(self.dataset["label"])]

    def rows(self, start: int, stop: int) -> dict[str, list]:
        """Columns of rows [start, stop) as lists."""
        return self.dataset[start:stop]

    def texts(self) -> tuple[list[str | None], list[str]]:
        """(premises, hypotheses) of every example, as the model scores them."""
        n = len(self.dataset)
        premises = list(self.dataset["premise"]) if "premise" in self.dataset.column_names else [None] * n
        return premises, list(self.dataset["hypothesis"])

    def non_english_warning(self) -> str | None:
        """The warning for Chinese text about to be scored untranslated (velora.translate.non_english_warning)."""
        names = list(self.dataset["source_row"]) if "source_row" in self.dataset.column_names else None
        return non_english_warning(*self.texts(), names=names)

    def notes(self, translated: bool = False) -> str | None:
        """For reports: rows the checks left out, and Chinese text scored untranslated (unless `translated`) or
        the back-end that translated."""
        language = (f"texts translated to English by {self.translated_by}" if self.translated_by
                    else None if translated else self.non_english_warning())
        return "; ".join(filter(None, [self.dropped_summary(), language])) or None

    def dropped_summary(self) -> str | None:
        if not self.dropped:
            return None
        first = self.dropped[0]
        return printable(f"{len({i.line for i in self.dropped})} row(s) of {self.source} were left out by the input "
                         f"checks (first: line {first.line}, {first.field}: {first.reason}); "
                         f"run `velora validate {self.source}` for every reason")


def _label_name(dataset, value, where: str) -> str:
    feature = dataset.features["label"]
    if hasattr(feature, "int2str") and isinstance(value, int):
        value = feature.int2str(value)
    label = normalize_label(value)
    if label is None:
        raise VeloraError(f"{where}: label {value!r} is not one of {', '.join(LABELS)}")
    return label


def _check_split(split, where: str) -> None:
    """velora's columns, and velora's three label names when `label` is a ClassLabel."""
    missing = [c for c in REQUIRED_COLUMNS if c not in split.column_names]
    if missing:
        raise VeloraError(f"{where}: missing column(s) {', '.join(missing)}; a velora dataset has "
                          f"{', '.join(REQUIRED_COLUMNS)} (make one with `velora convert`)")
    names = getattr(split.features["label"], "names", None)
    unknown = [n for n in names or () if normalize_label(n) is None]
    if unknown:
        raise VeloraError(f"{where}: label set {names} does not match {list(LABELS)} (unknown: {unknown}); "
                          "convert the data with `velora convert`")


def open_dataset(path: str | os.PathLike):
    """A folder written by `velora convert` (a DatasetDict, or a single saved Dataset), every split checked for
    velora's columns and label names. Raises VeloraError naming the folder and the fix."""
    from datasets import DatasetDict, load_from_disk  # deferred: datasets takes ~1 s to import

    path = Path(path)
    if not path.is_dir() or not any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        what = "no such folder" if not path.exists() else "not a folder" if not path.is_dir() else (
            "no dataset_dict.json")
        raise VeloraError(f"{path}: not a dataset made by `velora convert` ({what}); run "
                          f"`velora convert --csv_path data.csv --output_dir {path}` first")
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise VeloraError(f"{path}: not a dataset saved by `velora convert` ({str(e).splitlines()[0]})") from None
    except IndexError:  # datasets cannot load a split saved with 0 rows and no data file
        empty = [d.name for d in path.iterdir() if (d / "state.json").exists() and not any(d.glob("*.arrow"))]
        raise VeloraError(f"{path}: the {' and '.join(empty) or 'a'} split has no rows and no data file, which "
                          f"`datasets` cannot load; convert the data again with `velora convert` (it writes empty "
                          f"splits loadably) or remove that split") from None
    for name, split in (loaded.items() if isinstance(loaded, DatasetDict) else [(None, loaded)]):
        _check_split(split, f"{path} [{name}]" if name else str(path))
    return loaded


def load_training_splits(path: str | os.PathLike):
    """The DatasetDict `velora train` reads: a `velora convert` folder with a non-empty train split."""
    from datasets import DatasetDict  # deferred: datasets takes ~1 s to import

    dataset = open_dataset(path)
    if not isinstance(dataset, DatasetDict) or "train" not in dataset:
        raise VeloraError(f"{path}: expected train and validation splits (made by `velora convert`)")
    if len(dataset["train"]) == 0:
        raise VeloraError(f"{path}: the train split is empty; convert more rows, or a smaller --val_ratio")
    return dataset


def _pick_split(loaded, path: Path, split: str) -> tuple[Any, str]:
    from datasets import Dataset, concatenate_datasets  # deferred: datasets takes ~1 s to import

    if isinstance(loaded, Dataset):
        return loaded, str(path)
    names = list(loaded)
    if split == ALL_SPLITS:
        parts = [loaded[n].add_column("split", [n] * len(loaded[n])) for n in names if len(loaded[n])]
        if not parts:
            raise VeloraError(f"{path}: every split is empty")
        return concatenate_datasets(parts), f"{path} [{', '.join(names)}]"
    if split not in loaded:
        raise VeloraError(f"{path}: no {split!r} split (it has {', '.join(names)}); pass --split "
                          f"{' or '.join([*names, ALL_SPLITS])}")
    if len(loaded[split]) == 0:
        others = [n for n in names if n != split and len(loaded[n])]
        hint = f"; pass --split {others[0]} or {ALL_SPLITS}" if others else ""
        raise VeloraError(f"{path}: the {split!r} split is empty{hint}")
    return loaded[split], f"{path} [{split}]"


def load_examples(path: str | os.PathLike, split: str = "validation", *, translator: Translator | None = None,
                  **check_options) -> ExampleSet:
    """Labelled examples from a `velora convert` dataset directory or a CSV/JSONL file.

    `split` picks the split of a DatasetDict ("validation", "train", or "all" for every split with a `split`
    column); it is ignored for a single Dataset and for a CSV/JSONL (all its usable rows), which is checked as
    `velora convert` would with `check_options` (image_root, allow_outside_paths, limits: see
    velora.convert.check_input). With a `translator` (velora.translate), texts it detects as non-English are
    translated, the originals kept in premise_original / hypothesis_original.
    """
    from datasets import Image as ImageFeature  # deferred: datasets takes ~1 s to import

    path = Path(path)
    if not path.exists():
        raise VeloraError(f"{path}: no such file or dataset directory")
    dropped: list = []
    if path.is_dir():
        dataset, source = _pick_split(open_dataset(path), path, split)
        if translator is not None:
            dataset = translate_dataset(dataset, translator, source)
    else:
        dataset, report = load_records_with_report(path, translator=translator, **check_options)
        source, dropped = str(path), list(report.dropped)
    if len(dataset) == 0:
        raise VeloraError(f"{source}: no examples")
    if isinstance(dataset.features["image"], ImageFeature):
        dataset = dataset.cast_column("image", ImageFeature(decode=False))
    backends = set(dataset["translated_by"]) - {""} if "translated_by" in dataset.column_names else set()
    return ExampleSet(dataset, source, dropped, ", ".join(sorted(backends)) or None)


def translate_dataset(dataset, translator: Translator, source: str):
    """`dataset` with its non-English premises and hypotheses in English (velora.translate.translate_pairs); the
    originals go to premise_original / hypothesis_original unless the dataset has them already (a `velora
    convert` dataset keeps the user's text there), the back-end to translated_by."""
    columns = dataset.column_names
    premises = list(dataset["premise"]) if "premise" in columns else [None] * len(dataset)
    pairs = translate_pairs(translator, premises, list(dataset["hypothesis"]))
    failed = next((i for i, pair in enumerate(pairs) if pair.error), None)
    if failed is not None:
        raise VeloraError(f"{source} row {failed}: {pairs[failed].error}")
    if not any(pair.translated for pair in pairs):
        return dataset
    before = list(dataset["translated_by"]) if "translated_by" in columns else [""] * len(pairs)
    new = {"premise": [p.premise or "" for p in pairs], "hypothesis": [p.hypothesis for p in pairs],
           "translated_by": [p.translated_by or old for p, old in zip(pairs, before)]}
    if "premise_original" not in columns:
        new["premise_original"] = [p.premise_original or "" for p in pairs]
        new["hypothesis_original"] = [p.hypothesis_original for p in pairs]
    dataset = dataset.remove_columns([c for c in new if c in columns])
    for name, values in new.items():
        dataset = dataset.add_column(name, values)
    return dataset.select_columns(columns + [c for c in new if c not in columns])


def image_source(image: Any) -> bytes | str:
    """An undecoded datasets image ({"bytes", "path"}) or a path string -> what the Predictor accepts."""
    if isinstance(image, dict):
        return image["bytes"] if image.get("bytes") else image["path"]
    return image


def metadata_of(rows: dict[str, list], i: int) -> dict:
    """Row i's extra input columns (convert keeps them as a JSON object in `metadata`)."""
    text = rows.get("metadata", [None] * (i + 1))[i]
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        value = {"metadata": text}
    return value if isinstance(value, dict) else {"metadata": value}


def _row_name(rows: dict[str, list], i: int) -> str:
    where = f"source row {rows['source_row'][i]}" if "source_row" in rows else f"row {i}"
    return where + (f" ({rows['split'][i]} split)" if "split" in rows else "")


def iter_chunks(examples: ExampleSet, size: int) -> Iterator[tuple[int, dict[str, list]]]:
    for start in range(0, len(examples), size):
        yield start, examples.rows(start, start + size)


def score_examples(scorer, examples: ExampleSet, *, batch_size: int = 16, adapter: str | None = None,
                   progress: bool = False, desc: str = "scoring") -> torch.Tensor:
    """(N, 3) probabilities in LABELS order for every example, read a few batches at a time (images stay on disk
    until needed). `scorer` is a Predictor or anything with the same `probabilities` method."""
    if batch_size < 1:
        raise VeloraError(f"--batch_size must be 1 or more, got {batch_size}")
    extra = {"adapter": adapter} if adapter is not None else {}
    out = torch.empty(len(examples), len(LABELS))
    bar = tqdm(total=len(examples), desc=desc, unit="ex", disable=not progress)
    for start, rows in iter_chunks(examples, max(4 * batch_size, 32)):
        images = [image_source(img) for img in rows["image"]]
        premises = rows.get("premise", [None] * len(images))
        try:
            probs = scorer.probabilities(images, premises, rows["hypothesis"], batch_size=batch_size, **extra)
        except VeloraError as e:
            raise _name_failing_row(e, rows, images) from None
        out[start:start + len(images)] = probs
        bar.update(len(images))
    bar.close()
    return out


def _name_failing_row(error: VeloraError, rows: dict[str, list], images: list) -> VeloraError:
    """Turn a batch-level error into one naming the row whose image or text is at fault."""
    for i, image in enumerate(images):
        try:
            load_image(image)
        except VeloraError as e:
            return VeloraError(f"{_row_name(rows, i)}, image: {e}")
        if not str(rows["hypothesis"][i] or "").strip():
            return VeloraError(f"{_row_name(rows, i)}, hypothesis: empty")
    return error
