"""The input of `velora predict --input_file`: a CSV/TSV, JSONL or Parquet file read through velora.convert's
streaming readers (the same layouts, column aliases and row parsing as `velora convert`), in chunks of
`chunk_size` rows. A row is every record of the file, blank lines aside, readable or not: each gets one output row.

`scan_input` reads the file once before any model loads (row count for the progress bar, every JSONL key, whether
labels are present) and so fails early on a file-level problem (missing columns, not UTF-8, an unmatched quote).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator

from velora.convert.issues import RowIssue
from velora.convert.columns import field_of
from velora.convert.reading import InputReader, ParquetReader, open_input

REQUIRED = ("image_path", "hypothesis")  # premise and label are optional when scoring
IDENTITY_BYTES = 1 << 16  # of the input's start, hashed into its identity

Item = tuple[int, dict[str, Any]] | RowIssue  # (line, record) or a line that could not be read


@dataclass(frozen=True)
class InputPlan:
    """What the first pass found; small and picklable (sent to every process and worker)."""

    path: str
    format: str  # csv, jsonl, snli-ve or parquet
    columns: tuple[str, ...]  # every record key, in order of appearance
    rows: int
    chunk_size: int
    labelled: bool  # a label column (or key) exists
    json_types: tuple[tuple[str, str], ...] = ()  # JSONL: column -> the JSON type of all its values (for Parquet)

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk_size)

    def chunk_rows(self, chunk: int) -> int:
        return min(self.chunk_size, self.rows - chunk * self.chunk_size)

    def open(self) -> InputReader:
        return open_input(self.path, REQUIRED)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str"}.get(type(value), "json")


def _merge_types(seen: dict[str, str], record: dict[str, Any]) -> None:
    """Per key, one JSON type for all values (int and float make float; any other mix, json)."""
    for key, value in record.items():
        kind, before = _json_type(value), seen.get(key, "null")
        if kind == "null" or kind == before:
            continue
        seen[key] = kind if before == "null" else "float" if {kind, before} == {"int", "float"} else "json"


def scan_input(path: str | os.PathLike, chunk_size: int) -> InputPlan:
    """One pass over the input: rows, columns and labels (a Parquet file's footer says it without a pass)."""
    reader = open_input(path, REQUIRED)
    types: dict[str, str] = {}
    if isinstance(reader, ParquetReader):
        rows = reader.rows
    else:
        rows = 0
        for item in reader.records():
            rows += 1
            if reader.format != "csv" and not isinstance(item, RowIssue):
                _merge_types(types, item[1])
    labelled = any(field_of(c) == "label" for c in reader.columns)
    return InputPlan(str(reader.path), reader.format, tuple(reader.names), rows, chunk_size, labelled,
                     tuple(types.items()))


def chunks(reader: InputReader, chunk_size: int, wanted: Collection[int] | None = None
           ) -> Iterator[tuple[int, list[Item]]]:
    """(chunk number, its rows) in input order; rows of chunks not `wanted` are read past without being kept, and
    reading stops after the last one wanted."""
    last = max(wanted, default=-1) if wanted is not None else None
    records = reader.records()
    for chunk in itertools.count():
        if last is not None and chunk > last:
            return
        block = itertools.islice(records, chunk_size)
        if wanted is not None and chunk not in wanted:
            if sum(1 for _ in block) == 0:  # read past the chunk
                return
            continue
        rows = list(block)
        if not rows:
            return
        yield chunk, rows


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What says a file is still the one a run started on: its size, modification time and a hash of its start."""
    path = Path(path)
    info = path.stat()
    with path.open("rb") as f:
        head = hashlib.blake2b(f.read(IDENTITY_BYTES), digest_size=16).hexdigest()
    return {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "head_blake2b": head}
