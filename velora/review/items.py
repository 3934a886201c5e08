"""What a review looks at: the examples of a mined CSV (`velora mine`), or of a whole dataset or CSV/JSONL, in the
order a look is worth most: likely-mislabelled first (most confident contradiction first), then the least
confident. Each example is known by its id, the `source_row` that `velora convert` gives every row (the line of the
input file) and `velora mine` carries.

Images are reached only through an example: a mined CSV's `image_path` must lie inside the CSV's folder, a
dataset's images are the bytes embedded in it. Nothing else on disk can be asked for.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from velora.convert import read_input
from velora.convert.issues import RowIssue
from velora.convert.translation import COLUMNS as ORIGINAL_COLUMNS
from velora.data import ALL_SPLITS, ExampleSet, image_source, load_examples, score_examples
from velora.errors import VeloraError
from velora.images import DEFAULT_LIMITS, load_image_and_format, read_image_file
from velora.io import is_within
from velora.labels import LABELS, normalize_label
from velora.mine import AMBIGUOUS, MINED_FROM, MISLABELED, uncertainty

CONFIDENT = "confident"  # scored, neither flag: reviewed last
UNSCORED = "unscored"  # no model given: dataset order
REASON_WORDS = {MISLABELED: "the model confidently predicts another label",
                AMBIGUOUS: "the model hesitates (low confidence)",
                CONFIDENT: "the model is fairly sure (neither flag)", UNSCORED: "not scored (no model given)"}
DISPLAY_SIDE = 640  # px: the longer side of an image as the page gets it


@dataclass
class ReviewItem:
    id: str  # the example's source_row, as text
    label: str
    premise: str
    hypothesis: str
    reason: str
    probs: dict[str, float] | None = None
    split: str | None = None
    image_file: Path | None = None  # a mined CSV's image
    row: int | None = None  # else: the row of `ReviewSet.examples` holding the image bytes
    originals: dict[str, str] = field(default_factory=dict)  # translated rows (--translate): ORIGINAL_COLUMNS

    def to_dict(self) -> dict[str, Any]:
        predicted = max(self.probs, key=self.probs.get) if self.probs else None
        return {"id": self.id, "label": self.label, "premise": self.premise, "hypothesis": self.hypothesis,
                "reason": self.reason, "why": REASON_WORDS.get(self.reason, self.reason), "probs": self.probs,
                "predicted": predicted, "split": self.split,
                **dict.fromkeys(ORIGINAL_COLUMNS), **self.originals}


def originals_of(values: dict) -> dict[str, str]:
    """The user's own texts and the back-end of a row whose texts were translated (a `velora convert --translate`
    dataset, a `velora mine --translate` CSV); {} for a row nothing was translated in."""
    if not str(values.get("translated_by") or "").strip():
        return {}
    return {name: str(values.get(name) or "") for name in ORIGINAL_COLUMNS}


@dataclass
class ReviewSet:
    """The examples under review, in order, and where their data came from (what `--apply` corrects)."""

    source: Path  # the file or folder reviewed
    origin: Path  # the dataset (folder or CSV/JSONL) the examples' ids refer to
    items: list[ReviewItem]
    examples: ExampleSet | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_id = {item.id: item for item in self.items}

    def image_bytes(self, example: str) -> tuple[bytes, str]:
        """The example's image for the page: decoded within velora's limits, at most DISPLAY_SIDE px a side, as
        (encoded bytes, media type). KeyError for an id not under review."""
        item = self.by_id[example]
        if item.image_file is not None:
            source: bytes | str = read_image_file(item.image_file, DEFAULT_LIMITS)
        else:
            source = image_source(self.examples.rows(item.row, item.row + 1)["image"][0])
        image, fmt = load_image_and_format(source)
        image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
        out = io.BytesIO()
        kind = "PNG" if fmt in ("PNG", "GIF", "BMP") else "JPEG"
        image.save(out, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
        return out.getvalue(), f"image/{kind.lower()}"


def is_mined_csv(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("r", encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    return "flag" in header and "source_row" in header


def load_review(source: str | os.PathLike, *, predictor=None, split: str = ALL_SPLITS, batch_size: int = 16,
                confidence_threshold: float = 0.6, mislabel_confidence: float = 0.9,
                origin: str | os.PathLike | None = None) -> ReviewSet:
    """The examples to review in `source`: a CSV written by `velora mine` (its order kept), or a dataset folder /
    CSV / JSONL whose rows are ordered by `predictor`'s probabilities when one is given. `origin` overrides the
    dataset a mined CSV says it came from (its `mined_from` column)."""
    path = Path(source)
    if not path.exists():
        raise VeloraError(f"{path}: no such file or dataset folder")
    if is_mined_csv(path):
        return load_mined(path, origin)
    examples = load_examples(path, split)
    probs = score_examples(predictor, examples, batch_size=batch_size, progress=True, desc="scoring") \
        if predictor is not None else None
    items = ordered_items(examples, probs, confidence_threshold, mislabel_confidence)
    notes = [examples.dropped_summary()] if examples.dropped else []
    return ReviewSet(path, path, items, examples, notes)


def ordered_items(examples: ExampleSet, probs: torch.Tensor | None, confidence_threshold: float,
                  mislabel_confidence: float) -> list[ReviewItem]:
    rows = examples.rows(0, len(examples))
    ids = [str(r) for r in rows["source_row"]] if "source_row" in rows else [str(i + 1) for i in range(len(examples))]
    _check_unique(ids, examples.source)
    premises = rows.get("premise") or [""] * len(ids)
    splits = rows.get("split") or [None] * len(ids)
    originals = [originals_of({c: rows[c][i] for c in ORIGINAL_COLUMNS if c in rows}) for i in range(len(ids))]
    items = [ReviewItem(ids[i], examples.labels[i], premises[i] or "", rows["hypothesis"][i], UNSCORED,
                        split=splits[i], row=i, originals=originals[i]) for i in range(len(ids))]
    if probs is None:
        return items
    confidence = uncertainty(probs)["confidence"].tolist()
    for i, item in enumerate(items):
        item.probs = {label: round(float(p), 4) for label, p in zip(LABELS, probs[i])}
        predicted = LABELS[int(probs[i].argmax())]
        item.reason = (MISLABELED if predicted != item.label and confidence[i] >= mislabel_confidence
                       else AMBIGUOUS if confidence[i] < confidence_threshold else CONFIDENT)
    order = sorted(range(len(items)), key=lambda i: (items[i].reason != MISLABELED,
                                                      -confidence[i] if items[i].reason == MISLABELED
                                                      else confidence[i], i))
    return [items[i] for i in order]


def load_mined(path: Path, origin: str | os.PathLike | None = None) -> ReviewSet:
    """The rows of a `velora mine` CSV, in its order; images inside the CSV's folder only."""
    table = read_input(path)
    folder, items, notes = path.parent, [], []
    mined_from: set[str] = set()
    for raw in table.rows:
        if isinstance(raw, RowIssue):
            notes.append(f"line {raw.line}: {raw.reason}")
            continue
        item, problem = _mined_item(raw.line, {**raw.metadata, **raw.values}, folder)
        if problem:
            notes.append(f"line {raw.line}: {problem}")
            continue
        items.append(item)
        mined_from.add(str(raw.metadata.get(MINED_FROM) or ""))
    _check_unique([item.id for item in items], str(path))
    return ReviewSet(path, _origin(path, mined_from, origin), items, None, notes)


def _mined_item(line: int, values: dict, folder: Path) -> tuple[ReviewItem | None, str | None]:
    label = normalize_label(values.get("label"))
    image = str(values.get("image_path") or "").strip()
    example = str(values.get("source_row") or "").strip()
    if label is None or not image or not example:
        return None, "needs image_path, label and source_row (as `velora mine` writes them)"
    file = folder / image
    if Path(image).is_absolute() or not is_within(file, folder):
        return None, f"image_path {image!r} leaves the CSV's folder; only images beside the CSV are shown"
    try:
        probs = {label_: float(values[f"prob_{label_}"]) for label_ in LABELS}
    except (KeyError, TypeError, ValueError):
        probs = None
    item = ReviewItem(example, label, str(values.get("premise") or ""), str(values.get("hypothesis") or ""),
                      str(values.get("flag") or UNSCORED), probs, str(values.get("split") or "") or None,
                      image_file=file, originals=originals_of(values))
    return item, None


def _origin(path: Path, mined_from: set[str], origin: str | os.PathLike | None) -> Path:
    if origin is not None:
        return Path(origin)
    named = {m for m in mined_from if m}
    if len(named) > 1:
        raise VeloraError(f"{path}: rows were mined from several datasets ({', '.join(sorted(named))}); review "
                          "one at a time, or pass --data_dir")
    if not named:
        return path  # an older mined CSV: its ids are its own rows' source_row; --data_dir names the dataset
    where = Path(named.pop())
    return where if where.is_absolute() else path.parent / where


def _check_unique(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for example in ids:
        if example in seen:
            raise VeloraError(f"{where}: source row {example} appears twice; a review needs one row per example "
                              "(convert the data with `velora convert`)")
        seen.add(example)
