"""`velora mine` (the guide's `collect_hard_examples.py`): the examples worth a human look, as a CSV that
`velora convert` accepts as is, so reviewed rows go straight back into training.

Two kinds of row are listed, each with its `flag`:
  ambiguous          the model's top probability is below --confidence_threshold (it hesitates);
  likely_mislabeled  the model disagrees with the given label with confidence >= --mislabel_confidence
                     (a confident contradiction of the label: often a labelling error).
`--strategy` (confidence, margin or entropy) orders the ambiguous rows hardest first, and `--top_k` keeps the
first K of them; likely-mislabelled rows are all kept and come first, most confident first.

A model scores its own training rows too well to doubt their labels. For those rows `velora mine` uses out-of-fold
probabilities instead (`out_of_fold=`: k LoRA runs with the settings of the run being mined, each scoring the rows
it did not train on, velora.train.folds) and cleanlab's confident learning (`find_label_issues`) decides which
labels are likely wrong; `bench/loop.py` measures both ways on the demo task (bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from velora.convert.check import MINED_SCORE_COLUMNS
from velora.convert.spreadsheet import write_rows
from velora.convert.translation import COLUMNS as TRANSLATION_COLUMNS
from velora.data import ExampleSet, load_examples, metadata_of, score_examples
from velora.errors import VeloraError
from velora.io import check_output_file, write_atomic
from velora.labels import LABELS
from velora.predictor import Predictor
from velora.translate import Translator

STRATEGIES = ("confidence", "margin", "entropy")
METHODS = ("auto", "model", "out_of_fold")
AMBIGUOUS, MISLABELED = "ambiguous", "likely_mislabeled"
MINED_FROM = "mined_from"  # the data the rows came from, relative to the CSV: what `velora review --apply` corrects
COLUMNS = ["image_path", "premise", "hypothesis", "label", *(c for c in MINED_SCORE_COLUMNS if c != MINED_FROM),
           "source_row", MINED_FROM]
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
              "TIFF": ".tif"}


def uncertainty(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row of (N, 3) probabilities: confidence (top probability), margin (top minus second) and entropy
    normalised to [0, 1] (0 = certain, 1 = all three labels equally likely)."""
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])
    return {"confidence": top2[:, 0], "margin": top2[:, 0] - top2[:, 1], "entropy": entropy.clamp(0, 1)}


def select_hard(probs: torch.Tensor, labels: list[str], *, confidence_threshold: float = 0.6,
                strategy: str = "confidence", top_k: int | None = None,
                mislabel_confidence: float | None = 0.9) -> list[tuple[int, str]]:
    """(row index, flag) of the rows to review, in output order (see the module docstring)."""
    check_settings(confidence_threshold, strategy, top_k, mislabel_confidence)
    u = uncertainty(probs)
    confidence = u["confidence"].tolist()
    predicted = [LABELS[i] for i in probs.argmax(-1).tolist()]
    mislabeled = [] if mislabel_confidence is None else [
        i for i in range(len(labels)) if predicted[i] != labels[i] and confidence[i] >= mislabel_confidence]
    taken = set(mislabeled)
    ambiguous = [i for i in range(len(labels)) if confidence[i] < confidence_threshold and i not in taken]
    hardness = {"confidence": u["confidence"], "margin": u["margin"], "entropy": -u["entropy"]}[strategy].tolist()
    ambiguous.sort(key=lambda i: (hardness[i], i))
    mislabeled.sort(key=lambda i: (-confidence[i], i))
    return [(i, MISLABELED) for i in mislabeled] + [(i, AMBIGUOUS) for i in ambiguous[:top_k]]


def select_label_issues(probs: torch.Tensor, labels: list[str], *, confidence_threshold: float = 0.6,
                        strategy: str = "confidence", top_k: int | None = None) -> list[tuple[int, str]]:
    """Like select_hard, with cleanlab's confident learning choosing the likely-mislabelled rows (per-label
    thresholds learnt from `probs`, which should be out-of-fold), ranked least likely label first."""
    from cleanlab.filter import find_label_issues  # deferred: cleanlab imports pandas (~1 s)

    check_settings(confidence_threshold, strategy, top_k, None)
    given = np.array([LABELS.index(label) for label in labels])
    if len(set(given.tolist())) < 2:
        mislabeled: list[int] = []  # one label only: nothing to contradict it with
    else:
        mislabeled = find_label_issues(given, probs.double().numpy(), return_indices_ranked_by="self_confidence",
                                       n_jobs=1).tolist()
    flagged = set(mislabeled)
    rest = [(i, flag) for i, flag in select_hard(probs, labels, confidence_threshold=confidence_threshold,
                                                  strategy=strategy, mislabel_confidence=None)
            if i not in flagged]
    return [(i, MISLABELED) for i in mislabeled] + rest[:top_k]


def check_settings(confidence_threshold: float, strategy: str, top_k: int | None,
                   mislabel_confidence: float | None) -> None:
    if strategy not in STRATEGIES:
        raise VeloraError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not 1 / 3 < confidence_threshold <= 1:
        raise VeloraError(f"--confidence_threshold {confidence_threshold}: must be above 1/3 (the top of three "
                          "probabilities never is lower) and at most 1 (1 lists every example)")
    if top_k is not None and top_k < 1:
        raise VeloraError(f"--top_k {top_k}: must be 1 or more")
    if mislabel_confidence is not None and not 0.5 <= mislabel_confidence <= 1:
        raise VeloraError(f"--mislabel_confidence {mislabel_confidence}: must be between 0.5 and 1")


@dataclass
class MineResult:
    source: str
    scored: int
    confidence_threshold: float
    mislabel_confidence: float | None
    rows: list[dict] = field(default_factory=list)  # as written to the CSV, in order
    output_file: Path | None = None
    images_dir: Path | None = None  # where embedded images were written, if any were
    note: str | None = None
    method: str = "model"  # whose probabilities: the model's own, or out_of_fold

    def count(self, flag: str) -> int:
        return sum(row["flag"] == flag for row in self.rows)

    def summary(self) -> str:
        how = " with out-of-fold probabilities" if self.method == "out_of_fold" else ""
        lines = [f"Scored {self.scored} examples from {self.source}{how}."]
        if self.note:
            lines.append(f"Note: {self.note}")
        lines.append(f"  {self.count(AMBIGUOUS)} ambiguous (confidence < {self.confidence_threshold})")
        if self.method == "out_of_fold":
            lines.append(f"  {self.count(MISLABELED)} likely mislabelled (cleanlab's confident learning)")
        elif self.mislabel_confidence is not None:
            lines.append(f"  {self.count(MISLABELED)} likely mislabelled (predicted another label with "
                         f"confidence >= {self.mislabel_confidence})")
        if self.output_file is not None:
            where = f" (images in {self.images_dir})" if self.images_dir else ""
            lines.append(f"Wrote {len(self.rows)} rows to {self.output_file}{where}.")
            if self.rows:
                lines.append(f"Next: `velora review {self.output_file}` (a web page: keep, relabel, edit or drop "
                             f"each), then `velora review {self.output_file} --apply` writes the corrected dataset "
                             "to train on.")
        return "\n".join(lines)


def mine(predictor: Predictor | None, data: str | os.PathLike | ExampleSet,
         output_file: str | os.PathLike | None = None, *, confidence_threshold: float = 0.6,
         strategy: str = "confidence", top_k: int | None = None, mislabel_confidence: float | None = 0.9,
         split: str = "all", batch_size: int = 16, overwrite: bool = False, progress: bool = False,
         out_of_fold: str | os.PathLike | Mapping[str, Any] | None = None, folds: int = 4,
         translator: Translator | None = None) -> MineResult:
    """Score `data` (a `velora convert` dataset, every split by default, or a CSV/JSONL) and list the rows to
    review; with `output_file`, write them as a CSV (and any embedded images beside it, see `write_csv`).

    With `out_of_fold` (the folder of the `velora train` run that learnt from these rows, or its TrainConfig /
    settings), each row is scored by one of `folds` LoRA adapters trained without it, and cleanlab picks the likely
    mislabelled rows; `predictor` is then not needed. With a `translator` (velora.translate), non-English texts
    are scored in English and the CSV shows both (premise_original, hypothesis_original, translated_by)."""
    check_settings(confidence_threshold, strategy, top_k, mislabel_confidence)
    output = Path(output_file) if output_file is not None else None
    if output is not None:
        check_output(output, overwrite)
    examples = data if isinstance(data, ExampleSet) else load_examples(data, split, translator=translator)
    if out_of_fold is not None:
        probs = out_of_fold_scores(out_of_fold, examples, folds, batch_size, progress)
    elif predictor is None:
        raise VeloraError("mine: give a Predictor, or out_of_fold= the training run to repeat")
    else:
        probs = score_examples(predictor, examples, batch_size=batch_size, progress=progress, desc="mine")
    result = list_hard(examples, probs, output, method="model" if out_of_fold is None else "out_of_fold",
                       confidence_threshold=confidence_threshold, strategy=strategy, top_k=top_k,
                       mislabel_confidence=mislabel_confidence,
                       origin=None if isinstance(data, ExampleSet) else Path(data))
    result.note = examples.notes(translated=translator is not None)
    return result


def list_hard(examples: ExampleSet, probs: torch.Tensor, output_file: str | os.PathLike | None = None, *,
              method: str = "model", confidence_threshold: float = 0.6, strategy: str = "confidence",
              top_k: int | None = None, mislabel_confidence: float | None = 0.9,
              origin: str | os.PathLike | None = None) -> MineResult:
    """The rows of `examples` to review given their (N, 3) `probs`: with `method` "out_of_fold" cleanlab picks
    the likely mislabelled rows, with "model" the confidence rule does; with `output_file`, the CSV (`origin`, the
    data the examples came from, goes in its mined_from column)."""
    labels = examples.labels
    if method == "out_of_fold":
        picked = select_label_issues(probs, labels, confidence_threshold=confidence_threshold, strategy=strategy,
                                     top_k=top_k)
    else:
        picked = select_hard(probs, labels, confidence_threshold=confidence_threshold, strategy=strategy,
                             top_k=top_k, mislabel_confidence=mislabel_confidence)
    result = MineResult(examples.source, len(examples), confidence_threshold, mislabel_confidence, method=method)
    records = [examples.rows(i, i + 1) for i, _ in picked]
    result.rows = [_row_values(record, labels[i], flag, probs[i], i) for record, (i, flag) in zip(records, picked)]
    if output_file is not None:
        output = Path(output_file)
        result.images_dir = write_csv(result.rows, [record["image"][0] for record in records], output,
                                      Path(origin) if origin is not None else None)
        result.output_file = output
    return result


def out_of_fold_scores(run, examples: ExampleSet, folds: int, batch_size: int, progress: bool) -> torch.Tensor:
    from velora.train.folds import fold_config, out_of_fold_probabilities  # deferred: transformers' Trainer

    config = fold_config(run) if isinstance(run, (str, os.PathLike)) else run
    return out_of_fold_probabilities(config, examples.dataset, folds=folds, batch_size=max(batch_size, 1),
                                     progress=progress)


def trained_on(model_path: str | os.PathLike, data: str | os.PathLike) -> bool:
    """Whether `model_path` is a `velora train` run whose training data included `data` (then its own scores of
    those rows are too sure to doubt their labels)."""
    try:
        run = json.loads((Path(model_path) / "velora_run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    sources = str(run.get("run", {}).get("data_source") or "").split(",")
    return os.path.abspath(data) in {os.path.abspath(source) for source in sources if source}


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir() and not overwrite:  # say why this file matters before io's refusal
        raise VeloraError(f"--output_file {output}: already exists (perhaps already reviewed); pass --overwrite "
                          "or choose another file name")
    check_output_file(output, "--output_file", overwrite=overwrite)


def _row_values(record: dict[str, list], label: str, flag: str, probs: torch.Tensor, index: int) -> dict:
    """One output row (without image_path) from a one-row slice of the dataset."""
    u = {k: float(v[0]) for k, v in uncertainty(probs[None]).items()}
    values = {
        "premise": record.get("premise", [""])[0] or "",
        "hypothesis": record["hypothesis"][0],
        "label": label,
        "flag": flag,
        "predicted_label": LABELS[int(probs.argmax())],
        **{k: round(v, 4) for k, v in u.items()},
        **{f"prob_{name}": round(float(p), 4) for name, p in zip(LABELS, probs)},
        "source_row": record["source_row"][0] if "source_row" in record else index,
    }
    if "split" in record:
        values["split"] = record["split"][0]
    if (record.get("translated_by") or [""])[0]:  # --translate: what the user wrote, beside what was scored
        values.update({name: record[name][0] for name in TRANSLATION_COLUMNS})  # convert reads them back
    for key, value in metadata_of(record, 0).items():  # the input's extra columns, never shadowing ours
        values[f"original_{key}" if key in values or key in COLUMNS else key] = value
    return values


def write_csv(rows: list[dict], images: list, output: Path, origin: Path | None = None) -> Path | None:
    """Write `rows` to `output`, giving each an `image_path`: the original file when it still exists under the
    CSV's folder with the same bytes, else the embedded bytes saved once per image in `<stem>_images/`, named after
    the original file and the row (`shoe-row17.jpg`). `origin`, the data mined, goes in the `mined_from` column.
    Returns that images folder when anything was written to it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    images_dir = output.parent / f"{output.stem}_images"
    mined_from = Path(os.path.relpath(origin, output.parent)).as_posix() if origin is not None else ""
    written: dict[str, str] = {}  # sha256 of an image -> its file, so rows sharing an image share one copy
    for row, image in zip(rows, images):
        row["image_path"] = _image_path(image, output.parent, images_dir, row["source_row"], written)
        row[MINED_FROM] = mined_from
    columns = COLUMNS + [c for c in dict.fromkeys(k for r in rows for k in r) if c not in COLUMNS]
    write_rows(output, columns, rows)  # cells a spreadsheet would run as formulas get a leading '
    return images_dir if written else None


def _image_path(image: dict | str, csv_dir: Path, images_dir: Path, source_row: object,
                written: dict[str, str]) -> str:
    """The image's path relative to csv_dir; a copy in images_dir (recorded in `written`) when needed."""
    original = image.get("path") if isinstance(image, dict) else image
    data = image.get("bytes") if isinstance(image, dict) else None
    if original and Path(original).is_file():
        within = os.path.commonpath([os.path.abspath(csv_dir), os.path.abspath(original)]) == os.path.abspath(csv_dir)
        if within and (data is None or Path(original).read_bytes() == data):
            return Path(os.path.relpath(original, csv_dir)).as_posix()
    if data is None:
        raise VeloraError(f"source row {source_row}: image {original!r} no longer exists and the dataset holds no "
                          "copy of it")
    key = hashlib.sha256(data).hexdigest()
    if key not in written:
        written[key] = _copy_image(data, images_dir, f"{Path(original or 'image').stem}-row{source_row}",
                                   source_row).relative_to(csv_dir).as_posix()
    return written[key]


def _copy_image(data: bytes, images_dir: Path, name: str, source_row: object) -> Path:
    """`data` as images_dir/NAME.EXT; a file already there with other bytes is kept, the copy gets a -HASH suffix."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            suffix = EXTENSIONS.get(img.format or "", ".png")
    except Exception:
        raise VeloraError(f"source row {source_row}: the dataset's image bytes are not an image") from None
    images_dir.mkdir(parents=True, exist_ok=True)
    target = images_dir / f"{name}{suffix}"
    if target.exists() and target.read_bytes() != data:
        target = images_dir / f"{name}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}"
    if not target.exists():
        write_atomic(target, data)
    return target
