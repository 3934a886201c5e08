"""`velora mine` (the guide's `collect_hard_examples.py`): the examples worth a human look, as a CSV that
`velora convert` accepts as is, so reviewed rows go straight back into training.

Two kinds of row are listed, each with its `flag`:
  ambiguous          the model's top probability is below --confidence_threshold (it hesitates);
  likely_mislabeled  the model disagrees with the given label with confidence >= --mislabel_confidence
                     (a confident contradiction of the label: often a labelling error).
`--strategy` (confidence, margin or entropy) orders the ambiguous rows hardest first, and `--top_k` keeps the
first K of them; likely-mislabelled rows are all kept and come first, most confident first.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from velora.convert.spreadsheet import write_rows
from velora.convert.translation import COLUMNS as TRANSLATION_COLUMNS
from velora.data import ExampleSet, load_examples, metadata_of, score_examples
from velora.errors import VeloraError
from velora.io import check_output_file
from velora.labels import LABELS
from velora.predictor import Predictor
from velora.translate import Translator

STRATEGIES = ("confidence", "margin", "entropy")
AMBIGUOUS, MISLABELED = "ambiguous", "likely_mislabeled"
COLUMNS = ["image_path", "premise", "hypothesis", "label", "flag", "predicted_label", "confidence", "margin",
           "entropy", *(f"prob_{label}" for label in LABELS), "source_row"]
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

    def count(self, flag: str) -> int:
        return sum(row["flag"] == flag for row in self.rows)

    def summary(self) -> str:
        lines = [f"Scored {self.scored} examples from {self.source}."]
        if self.note:
            lines.append(f"Note: {self.note}")
        lines.append(f"  {self.count(AMBIGUOUS)} ambiguous (confidence < {self.confidence_threshold})")
        if self.mislabel_confidence is not None:
            lines.append(f"  {self.count(MISLABELED)} likely mislabelled (predicted another label with "
                         f"confidence >= {self.mislabel_confidence})")
        if self.output_file is not None:
            where = f" (images in {self.images_dir})" if self.images_dir else ""
            lines.append(f"Wrote {len(self.rows)} rows to {self.output_file}{where}.")
            if self.rows:
                lines.append(f"Next: review the `label` column, then `velora convert --csv_path {self.output_file} "
                             "--output_dir DIR` (or add the rows to your training CSV) and train again.")
        return "\n".join(lines)


def mine(predictor: Predictor, data: str | os.PathLike | ExampleSet, output_file: str | os.PathLike | None = None,
         *, confidence_threshold: float = 0.6, strategy: str = "confidence", top_k: int | None = None,
         mislabel_confidence: float | None = 0.9, split: str = "all", batch_size: int = 16,
         overwrite: bool = False, progress: bool = False, translator: Translator | None = None) -> MineResult:
    """Score `data` (a `velora convert` dataset, every split by default, or a CSV/JSONL) and list the rows to
    review; with `output_file`, write them as a CSV (and any embedded images beside it, see `write_csv`).
    With a `translator` (velora.translate), non-English texts are scored in English and the CSV shows both
    (premise_original, hypothesis_original, translated_by)."""
    check_settings(confidence_threshold, strategy, top_k, mislabel_confidence)
    output = Path(output_file) if output_file is not None else None
    if output is not None:
        check_output(output, overwrite)
    examples = data if isinstance(data, ExampleSet) else load_examples(data, split, translator=translator)
    labels = examples.labels
    probs = score_examples(predictor, examples, batch_size=batch_size, progress=progress, desc="mine")
    picked = select_hard(probs, labels, confidence_threshold=confidence_threshold, strategy=strategy,
                         top_k=top_k, mislabel_confidence=mislabel_confidence)
    result = MineResult(examples.source, len(examples), confidence_threshold, mislabel_confidence,
                        note=examples.notes(translated=translator is not None))
    records = [examples.rows(i, i + 1) for i, _ in picked]
    result.rows = [_row_values(record, labels[i], flag, probs[i], i) for record, (i, flag) in zip(records, picked)]
    if output is not None:
        result.images_dir = write_csv(result.rows, [record["image"][0] for record in records], output)
        result.output_file = output
    return result


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


def write_csv(rows: list[dict], images: list, output: Path) -> Path | None:
    """Write `rows` to `output`, giving each an `image_path`: the original file when it still exists under the
    CSV's folder with the same bytes, else the embedded bytes saved once per image in `<stem>_images/`.
    Returns that images folder when anything was written to it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    images_dir = output.parent / f"{output.stem}_images"
    wrote_images = False
    for row, image in zip(rows, images):
        row["image_path"], written = _image_path(image, output.parent, images_dir, row["source_row"])
        wrote_images |= written
    columns = COLUMNS + [c for c in dict.fromkeys(k for r in rows for k in r) if c not in COLUMNS]
    write_rows(output, columns, rows)  # cells a spreadsheet would run as formulas get a leading '
    return images_dir if wrote_images else None


def _image_path(image: dict | str, csv_dir: Path, images_dir: Path, source_row: object) -> tuple[str, bool]:
    """(path relative to csv_dir, whether a file was written to images_dir)."""
    original = image.get("path") if isinstance(image, dict) else image
    data = image.get("bytes") if isinstance(image, dict) else None
    if original and Path(original).is_file():
        within = os.path.commonpath([os.path.abspath(csv_dir), os.path.abspath(original)]) == os.path.abspath(csv_dir)
        if within and (data is None or Path(original).read_bytes() == data):
            return Path(os.path.relpath(original, csv_dir)).as_posix(), False
    if data is None:
        raise VeloraError(f"source row {source_row}: image {original!r} no longer exists and the dataset holds no "
                          "copy of it")
    try:
        with Image.open(io.BytesIO(data)) as img:
            suffix = EXTENSIONS.get(img.format or "", ".png")
    except Exception:
        raise VeloraError(f"source row {source_row}: the dataset's image bytes are not an image") from None
    images_dir.mkdir(parents=True, exist_ok=True)
    target = images_dir / (hashlib.sha256(data).hexdigest()[:16] + suffix)
    if not target.exists():
        target.write_bytes(data)
    return target.relative_to(csv_dir).as_posix(), True
