"""Checked records -> a `datasets.Dataset` with velora's columns (`features()`), each image's checked bytes
embedded, written to Arrow in bounded memory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from velora.convert.rows import Record
from velora.errors import VeloraError
from velora.images import DEFAULT_LIMITS, ImageLimits, load_image, read_image_file
from velora.labels import LABELS

# Formats whose original bytes are embedded as they are; anything else Pillow reads is re-encoded as PNG.
KEEP_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})


def features():
    """The columns of every velora dataset (convert output, load_records)."""
    # deferred: datasets takes ~1 s to import
    from datasets import ClassLabel, Features, Image as ImageFeature, Value  # deferred: datasets takes ~1 s; validate never needs it

    return Features(
        {
            "image": ImageFeature(),
            "premise": Value("string"),
            "hypothesis": Value("string"),
            "label": ClassLabel(names=list(LABELS)),
            "source_row": Value("int64"),
            "metadata": Value("string"),  # JSON object of the input's extra columns/keys, "{}" when none
            "premise_original": Value("string"),  # as written in the input: premise is its translation (--translate)
            "hypothesis_original": Value("string"),
            "translated_by": Value("string"),  # the translation back-end of this row, "" when nothing was translated
        }
    )


@contextlib.contextmanager
def quiet_datasets():
    """datasets' own progress bars would duplicate ours."""
    import datasets  # deferred: datasets takes ~1 s to import
    from datasets.utils import logging as ds_logging  # deferred: as above

    was_disabled = datasets.are_progress_bars_disabled()
    verbosity = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


def _image_bytes(record: Record, limits: ImageLimits) -> bytes:
    data = read_image_file(record.image_file, limits)
    if hashlib.sha256(data).hexdigest() != record.image_key:
        raise VeloraError(f"{record.image_file} (line {record.line}) changed while converting; run the command again")
    if record.image_format in KEEP_FORMATS:
        return data
    buffer = io.BytesIO()
    load_image(io.BytesIO(data), limits=limits).save(buffer, format="PNG")
    return buffer.getvalue()


BATCH_ROWS = 1000
BATCH_BYTES = 64 * 2**20  # image bytes held in memory per Arrow record batch


def _batches(records: Sequence[Record], limits: ImageLimits, progress: bool) -> Iterator[dict[str, list]]:
    columns: dict[str, list] = {name: [] for name in features()}
    size = 0
    with tqdm(total=len(records), desc="Embedding images", unit="row", disable=not progress or not records) as bar:
        for r in records:
            data = _image_bytes(r, limits)
            columns["image"].append({"bytes": data, "path": str(r.image_file)})
            columns["premise"].append(r.premise)
            columns["hypothesis"].append(r.hypothesis)
            columns["label"].append(LABELS.index(r.label))
            columns["source_row"].append(r.line)
            columns["metadata"].append(json.dumps(r.metadata, ensure_ascii=False))
            columns["premise_original"].append(r.premise if r.premise_original is None else r.premise_original)
            columns["hypothesis_original"].append(r.hypothesis if r.hypothesis_original is None
                                                  else r.hypothesis_original)
            columns["translated_by"].append(r.translated_by)
            size += len(data)
            if len(columns["image"]) >= BATCH_ROWS or size >= BATCH_BYTES:
                bar.update(len(columns["image"]))
                yield columns
                columns, size = {name: [] for name in columns}, 0
        if columns["image"]:
            bar.update(len(columns["image"]))
            yield columns


def build_dataset(
    records: Sequence[Record],
    work_dir: str | os.PathLike,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    keep_in_memory: bool = False,
    progress: bool = False,
):
    """Checked records -> datasets.Dataset with `features()`, each image's (checked) bytes embedded.

    Record batches are streamed to an Arrow file in `work_dir` (bounded memory) whose schema carries the features;
    the Dataset maps that file, or holds it in memory with `keep_in_memory` (then `work_dir` may be deleted).
    Written with pyarrow, not through datasets' per-example encoding: faster, and `Image.encode_example` would
    swap the checked bytes for the path whenever the path names an existing file."""
    import pyarrow as pa  # deferred with datasets (~1 s to import)
    from datasets import Dataset  # deferred: as above

    schema = features().arrow_schema
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    path = Path(work_dir) / f"records-{uuid.uuid4().hex[:12]}.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in _batches(records, limits, progress):
            writer.write_batch(pa.RecordBatch.from_pydict(batch, schema=schema))
    with quiet_datasets():
        return Dataset.from_file(str(path), in_memory=keep_in_memory)
