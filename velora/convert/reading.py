"""Reading a user's CSV/TSV, JSONL (or SNLI-VE jsonl) or Parquet file into raw rows, one record at a time: header
mapping, encodings, delimiters, and a RowIssue for every line that cannot become a row. Checking the rows is
velora.convert.rows' job.

`open_input(path)` streams (memory does not grow with the file: `velora predict --input_file` reads millions of
rows through it); `read_input(path)` collects every row into an InputTable (what `velora convert` checks).

CSV cells that velora neutralised against spreadsheet formulas (a leading `'`, see velora.convert.spreadsheet)
are restored here."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from velora.convert.columns import FIELDS, RawRow, check_header, field_of, is_snli_key, map_columns, record_names
from velora.convert.issues import RowIssue, clip
from velora.convert.spreadsheet import restore
from velora.errors import VeloraError
from velora.labels import normalize_label

# Characters one CSV field may hold while parsing (Python's default, 131,072, is only a long paragraph); a longer
# field is what an unmatched double quote produces. Long values are dropped row by row (velora.convert.rows).
CSV_FIELD_LIMIT = 16 * 1024 * 1024
MAX_LINE_BYTES = CSV_FIELD_LIMIT  # of one JSONL line: a longer one is reported, never held in memory
PARQUET_BATCH_ROWS = 1024  # rows decoded from a Parquet file at a time
MINED_FLAGS = ("ambiguous", "likely_mislabeled")  # velora.mine's flags


@contextlib.contextmanager
def _csv_field_limit(limit: int):
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


@dataclass
class InputTable:
    path: Path
    format: str  # "csv", "jsonl", "snli-ve" or "parquet"
    columns: list[str]  # as found (CSV header, or every JSONL key seen)
    metadata_columns: list[str]
    rows: list[RawRow | RowIssue]
    blank_lines: int = 0
    notes: list[RowIssue] = field(default_factory=list)  # rows kept, with something worth saying (mined_columns)


class InputReader:
    """One input file read a record at a time. `records()` yields (line, {column: value}) or a RowIssue for a
    line that cannot be read; iterating yields RawRow | RowIssue. `format`, `columns` and `blank_lines` are final
    once the records have been read (a JSONL file's keys are only known then)."""

    format = ""

    def __init__(self, path: Path, required: Sequence[str] = FIELDS):
        self.path, self.required = path, tuple(required)
        self.columns: list[str] = []  # as found (the CSV header, every JSONL key seen, the Parquet schema)
        self.names: list[str] = []  # the keys of each record, in column order
        self.blank_lines = 0
        self.notes: list[RowIssue] = []
        self._mapping: tuple[dict[str, int], dict[str, int]] | None = None  # of `names`, when fixed by a header

    def records(self) -> Iterator[tuple[int, dict[str, Any]] | RowIssue]:
        raise NotImplementedError

    @property
    def metadata_columns(self) -> list[str]:
        return list(self._mapping[1]) if self._mapping else []

    def raw_row(self, line: int, record: dict[str, Any]) -> RawRow:
        fields, metadata = self._mapping
        return RawRow(line, {name: record[self.names[i]] for name, i in fields.items()},
                      {name: record[self.names[i]] for name, i in metadata.items()})

    def __iter__(self) -> Iterator[RawRow | RowIssue]:
        for item in self.records():
            yield item if isinstance(item, RowIssue) else self.raw_row(*item)


# --- CSV ---------------------------------------------------------------------------------------------------------


def _line_at(path: Path, offset: int) -> int:
    """The line holding byte `offset`, counting "\\n" (or "\\r" in a file with no "\\n" before it)."""
    newlines = returns = 0
    with path.open("rb") as f:
        for start in range(0, offset, 1 << 20):
            block = f.read(min(1 << 20, offset - start))
            newlines, returns = newlines + block.count(b"\n"), returns + block.count(b"\r")
    return (newlines or returns) + 1


def _utf8_error(path: Path) -> VeloraError:
    """The first byte of `path` that is not UTF-8, found a block at a time."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with path.open("rb") as f:
        while True:
            block = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # an unfinished character from the previous block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                where = offset - pending + e.start
                return VeloraError(f"{path} line {_line_at(path, where)}: not valid UTF-8 (byte "
                                   f"0x{e.object[e.start]:02x}); save the file as UTF-8 (Excel: 'CSV UTF-8 "
                                   "(comma delimited)')")
            if not block:
                return VeloraError(f"{path}: not valid UTF-8; save the file as UTF-8")
            offset += len(block)


def _sniff_delimiter(header_line: str, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    if "," not in header_line:
        for candidate in (";", "\t"):
            if candidate in header_line:
                return candidate
    return ","


class CsvReader(InputReader):
    format = "csv"

    def __init__(self, path: Path, required: Sequence[str] = FIELDS):
        super().__init__(path, required)
        with self._rows():
            pass  # reads and checks the header

    @contextlib.contextmanager
    def _rows(self) -> Iterator[tuple[csv.reader, list[str]]]:
        """A csv reader positioned after the header, and the header (checked)."""
        with _csv_field_limit(CSV_FIELD_LIMIT), self.path.open("rb") as raw:
            if raw.read(2) in (b"\xff\xfe", b"\xfe\xff"):
                raise VeloraError(f"{self.path}: file is UTF-16 (Excel 'Unicode text'); save it as 'CSV UTF-8' "
                                  "instead")
            raw.seek(0)
            try:
                yield from self._open(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
            except UnicodeDecodeError:
                raise _utf8_error(self.path) from None

    def _open(self, text: io.TextIOWrapper) -> Iterator[tuple[csv.reader, list[str]]]:
        first_line = text.readline()
        if not first_line.strip():
            raise VeloraError(f"{self.path}: the file is empty or its first line is blank; it must start with "
                              f"the header {','.join(FIELDS)}")
        delimiter = _sniff_delimiter(first_line, self.path.suffix.lower())
        reader = csv.reader(itertools.chain([first_line], text), delimiter=delimiter)
        try:
            header = [restore(cell) for cell in next(reader)]
        except csv.Error as e:
            raise VeloraError(f"{self.path} line 1: cannot parse the header ({e})") from None
        fields = check_header(self.path, header, self.required)
        self.columns, self.names = [h.strip() for h in header], record_names(header)
        self._mapping = (fields, map_columns(header)[1])
        yield reader, header

    def records(self) -> Iterator[tuple[int, dict[str, Any]] | RowIssue]:
        with self._rows() as (reader, header):
            yield from self._records(reader, header)

    def _records(self, reader, header: list[str]) -> Iterator[tuple[int, dict[str, Any]] | RowIssue]:
        width, fields = len(header), self._mapping[0]
        # Every row has exactly the header's fields: with extra columns, a short row is as likely shifted as
        # truncated. Only unnamed columns at the end of the header (a trailing comma) may be left out.
        needed = width
        while needed > max(fields.values(), default=-1) + 1 and not header[needed - 1].strip():
            needed -= 1
        self.blank_lines, self.notes = 0, []
        previous_end = reader.line_num
        while True:
            start = previous_end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise VeloraError(
                    f"{self.path} line {start}: cannot parse the CSV ({e}); look for an unmatched double quote"
                ) from None
            end, previous_end = reader.line_num, reader.line_num
            if not any(cell.strip() for cell in row):
                self.blank_lines += 1
                continue
            if len(row) > width and _mined_tail(row[width:]):
                self.notes.append(RowIssue(start, "row", "mined_columns", f"{len(row) - width} extra fields of a "
                                           "`velora mine` row (its scores) ignored", value=clip(",".join(row))))
                row = row[:width]
            if len(row) > width or len(row) < needed:
                spans = f" (the record runs from line {start} to {end}: an unmatched double quote?)" if end > start \
                    else ""
                advice = (" - text containing a comma must be in double quotes" if len(row) > width
                          else " - a value is missing (leave it empty but keep its comma)" if not spans else "")
                yield RowIssue(start, "row", "field_count", f"has {len(row)} fields but the header has {width}"
                               f"{spans}{advice}", value=clip(",".join(row)))
                continue
            row = [restore(cell) for cell in row] + [""] * (width - len(row))
            yield start, dict(zip(self.names, row))


def _mined_tail(extra: list[str]) -> bool:
    """Whether fields beyond the header are what `velora mine` adds after the label (a flag, the predicted label,
    scores): a mined row appended to a training CSV, not text with an unquoted comma."""
    return len(extra) >= 2 and extra[0].strip() in MINED_FLAGS and normalize_label(extra[1]) is not None


# --- JSON Lines --------------------------------------------------------------------------------------------------


def _json_record(number: int, raw_line: bytes) -> dict | RowIssue:
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as e:
        return RowIssue(number, "row", "bad_encoding",
                        f"not valid UTF-8 (byte 0x{raw_line[e.start]:02x}); save the file as UTF-8")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return RowIssue(number, "row", "bad_json", f"not valid JSON ({e.msg} at column {e.colno})", value=clip(line))
    if not isinstance(obj, dict):
        return RowIssue(number, "row", "not_an_object", f"a line must be a JSON object with keys {', '.join(FIELDS)}, "
                        f"got {type(obj).__name__}", value=clip(line))
    return obj


class JsonlReader(InputReader):
    format = "jsonl"

    def records(self) -> Iterator[tuple[int, dict[str, Any]] | RowIssue]:
        seen = dict.fromkeys(self.columns)
        self.blank_lines = 0
        with self.path.open("rb") as f:
            for number in itertools.count(1):
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass  # the rest of an over-long line, skipped a block at a time
                    yield RowIssue(number, "row", "line_too_long", f"line is over {MAX_LINE_BYTES:,} bytes; a row "
                                   "holds an image path and two short texts")
                    continue
                if number == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                line = (raw[:-1] if raw.endswith(b"\n") else raw).rstrip(b"\r")
                if not line.strip():
                    self.blank_lines += raw.endswith(b"\n")  # not the whitespace after the final newline
                    continue
                record = _json_record(number, line)
                if isinstance(record, dict):
                    self._note_keys(record, seen)
                    yield number, record
                else:
                    yield record

    @property
    def metadata_columns(self) -> list[str]:
        return [c for c in self.columns if field_of(c) is None]

    def raw_row(self, line: int, record: dict[str, Any]) -> RawRow:
        """Each line maps its own keys (lines may spell the fields differently)."""
        keys = list(record)
        fields, metadata = map_columns(keys)
        return RawRow(line, {name: record[keys[i]] for name, i in fields.items()},
                      {keys[i]: record[keys[i]] for i in metadata.values()})

    def _note_keys(self, record: dict, seen: dict) -> None:
        for key in record:
            if str(key) not in seen:
                seen[str(key)] = None
                self.columns.append(str(key))
                self.names.append(str(key))
                if is_snli_key(key):
                    self.format = "snli-ve"


# --- Parquet -----------------------------------------------------------------------------------------------------


def _parquet_file(path: Path):
    import pyarrow  # deferred: pyarrow (through datasets) takes ~0.3 s to import, only Parquet inputs need it
    import pyarrow.parquet as pq  # deferred: as above

    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise VeloraError(f"{path}: not a readable Parquet file ({e})") from None


class ParquetReader(InputReader):
    format = "parquet"

    def __init__(self, path: Path, required: Sequence[str] = FIELDS):
        super().__init__(path, required)
        with contextlib.closing(_parquet_file(path)) as parquet:
            self.schema = parquet.schema_arrow
            self.rows = parquet.metadata.num_rows
        self.columns = list(self.schema.names)
        self.names = record_names(self.columns)
        self._mapping = (check_header(path, self.columns, required), map_columns(self.columns)[1])

    def records(self) -> Iterator[tuple[int, dict[str, Any]] | RowIssue]:
        with contextlib.closing(_parquet_file(self.path)) as parquet:
            line = 0
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for values in zip(*(column.to_pylist() for column in batch.columns)):
                    line += 1
                    yield line, dict(zip(self.names, values))


# --- Any input ---------------------------------------------------------------------------------------------------

READERS = {".jsonl": JsonlReader, ".ndjson": JsonlReader, ".json": JsonlReader, ".csv": CsvReader, ".tsv": CsvReader,
           ".txt": CsvReader, ".parquet": ParquetReader, ".pq": ParquetReader}


def open_input(path: str | os.PathLike, required: Sequence[str] = FIELDS) -> InputReader:
    """A reader of a CSV (.csv/.tsv/.txt), JSON Lines (.jsonl/.ndjson/.json) or Parquet (.parquet) file; other
    suffixes are sniffed. The CSV/Parquet header is checked now for the `required` fields."""
    path = Path(path)
    if path.is_dir():
        raise VeloraError(f"{path}: is a directory; give the CSV or JSONL file")
    if not path.exists():
        raise VeloraError(f"{path}: input file not found")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        with path.open("rb") as f:
            head = f.read(4096)
        reader = ParquetReader if head.startswith(b"PAR1") else JsonlReader if head.lstrip(
            b"\xef\xbb\xbf \t\r\n").startswith(b"{") else CsvReader
    return reader(path, required)


def _table(reader: InputReader) -> InputTable:
    rows = list(reader)
    return InputTable(reader.path, reader.format, reader.columns, reader.metadata_columns, rows, reader.blank_lines,
                      reader.notes)


def read_csv(path: Path) -> InputTable:
    return _table(CsvReader(Path(path)))


def read_jsonl(path: Path) -> InputTable:
    return _table(JsonlReader(Path(path)))


def read_input(path: str | os.PathLike) -> InputTable:
    """Every row of a CSV, JSONL or Parquet file (see open_input), in memory: what `velora convert` checks."""
    return _table(open_input(path))
