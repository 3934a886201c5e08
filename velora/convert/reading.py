"""Reading a user's CSV/JSONL (or SNLI-VE jsonl) into raw rows: header mapping, encodings, delimiters, and a
RowIssue for every line that cannot become a row. Checking the rows is velora.convert.rows' job.

CSV cells that velora neutralised against spreadsheet formulas (a leading `'`, see velora.convert.spreadsheet)
are restored here."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from velora.convert.issues import RowIssue, clip
from velora.convert.spreadsheet import restore
from velora.errors import VeloraError

FIELDS = ("image_path", "premise", "hypothesis", "label")  # the guide's CSV header; all four columns must exist
# Other spellings of the four columns/keys, after lower-casing and turning spaces/dashes into underscores.
# SNLI-VE jsonl: Flikr30kID (sic) / sentence1 / sentence2 / gold_label.
ALIASES = {
    "image_path": ("image", "flikr30kid", "flickr30kid", "flickr30k_id"),
    "premise": ("sentence1",),
    "hypothesis": ("sentence2",),
    "label": ("gold_label",),
}
# Characters one CSV field may hold while parsing (Python's default, 131,072, is only a long paragraph); a longer
# field is what an unmatched double quote produces. Long values are dropped row by row (velora.convert.rows).
CSV_FIELD_LIMIT = 16 * 1024 * 1024


@contextlib.contextmanager
def _csv_field_limit(limit: int):
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


@dataclass
class RawRow:
    """One input record: `values` maps the canonical field names found to their raw values."""

    line: int
    values: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class InputTable:
    path: Path
    format: str  # "csv", "jsonl" or "snli-ve"
    columns: list[str]  # as found (CSV header, or every JSONL key seen)
    metadata_columns: list[str]
    rows: list[RawRow | RowIssue]
    blank_lines: int = 0


def _canonical(name: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def map_columns(names: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Header names -> ({field: index}, {metadata name: index}). A canonical name beats an alias."""
    canon = [_canonical(n) for n in names]
    fields: dict[str, int] = {}
    for name in FIELDS:
        for spelling in (name, *ALIASES[name]):
            hits = [i for i, c in enumerate(canon) if c == spelling]
            if len(hits) > 1:
                raise VeloraError(f"column {names[hits[0]]!r} appears {len(hits)} times in the header; keep one")
            if hits:
                fields[name] = hits[0]
                break
    used = set(fields.values())
    metadata = {}
    for i, name in enumerate(names):
        if i not in used:
            metadata[str(name).strip() or f"column_{i + 1}"] = i
    return fields, metadata


def _line_of(data: bytes, offset: int) -> int:
    newline = b"\n" if b"\n" in data else b"\r"
    return data.count(newline, 0, offset) + 1


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise VeloraError(f"{path}: file is UTF-16 (Excel 'Unicode text'); save it as 'CSV UTF-8' instead")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VeloraError(
            f"{path} line {_line_of(data, e.start)}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
            "save the file as UTF-8 (Excel: 'CSV UTF-8 (comma delimited)')"
        ) from None


def _sniff_delimiter(header_line: str, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    if "," not in header_line:
        for candidate in (";", "\t"):
            if candidate in header_line:
                return candidate
    return ","


def read_csv(path: Path) -> InputTable:
    with _csv_field_limit(CSV_FIELD_LIMIT):
        return _read_csv(path)


def _read_csv(path: Path) -> InputTable:
    text = _decode(path, path.read_bytes())
    first_line = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    if not first_line.strip():
        raise VeloraError(f"{path}: the file is empty or its first line is blank; it must start with the header "
                          f"{','.join(FIELDS)}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(first_line, path.suffix.lower()))
    try:
        header = [restore(cell) for cell in next(reader)]
    except csv.Error as e:
        raise VeloraError(f"{path} line 1: cannot parse the header ({e})") from None
    fields, metadata = map_columns(header)
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        hint = ""
        if any(re.search(r"\.(jpe?g|png|gif|webp|bmp|tiff?)$", h.strip(), re.I) for h in header):
            hint = " (the first line looks like data: add the header line)"
        raise VeloraError(
            f"{path}: missing column(s) {', '.join(missing)}; found columns: "
            f"{', '.join(repr(h) for h in header)}{hint}. The header must be {','.join(FIELDS)}"
        )
    width = len(header)
    # Every row has exactly the header's fields: with extra columns, a short row is as likely shifted as truncated.
    # Only unnamed columns at the end of the header (a trailing comma) may be left out.
    needed = width
    while needed > max(fields.values()) + 1 and not header[needed - 1].strip():
        needed -= 1
    rows: list[RawRow | RowIssue] = []
    blank = 0
    previous_end = reader.line_num
    while True:
        start = previous_end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise VeloraError(
                f"{path} line {start}: cannot parse the CSV ({e}); look for an unmatched double quote"
            ) from None
        end, previous_end = reader.line_num, reader.line_num
        if not any(cell.strip() for cell in row):
            blank += 1
            continue
        if len(row) > width or len(row) < needed:
            spans = f" (the record runs from line {start} to {end}: an unmatched double quote?)" if end > start else ""
            advice = (" - text containing a comma must be in double quotes" if len(row) > width
                      else " - a value is missing (leave it empty but keep its comma)" if not spans else "")
            rows.append(RowIssue(
                start, "row", "field_count",
                f"has {len(row)} fields but the header has {width}{spans}{advice}",
                value=clip(",".join(row)),
            ))
            continue
        row = [restore(cell) for cell in row] + [""] * (width - len(row))
        rows.append(RawRow(
            start,
            {name: row[i] for name, i in fields.items()},
            {name: row[i] for name, i in metadata.items()},
        ))
    return InputTable(path, "csv", [h.strip() for h in header], list(metadata), rows, blank)


def read_jsonl(path: Path) -> InputTable:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows: list[RawRow | RowIssue] = []
    seen_keys: dict[str, None] = {}
    blank = 0
    snli = False
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # after the final newline
    for number, raw_line in enumerate(lines, start=1):
        raw_line = raw_line.rstrip(b"\r")
        if not raw_line.strip():
            blank += 1
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(RowIssue(number, "row", "bad_encoding",
                                 f"not valid UTF-8 (byte 0x{raw_line[e.start]:02x}); save the file as UTF-8"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(RowIssue(number, "row", "bad_json", f"not valid JSON ({e.msg} at column {e.colno})",
                                 value=clip(line)))
            continue
        if not isinstance(obj, dict):
            rows.append(RowIssue(number, "row", "not_an_object",
                                 f"a line must be a JSON object with keys {', '.join(FIELDS)}, "
                                 f"got {type(obj).__name__}",
                                 value=clip(line)))
            continue
        keys = list(obj)
        for k in keys:
            seen_keys.setdefault(str(k), None)
        fields, metadata = map_columns(keys)
        snli = snli or any(_canonical(k) in ("flikr30kid", "flickr30kid", "flickr30k_id") for k in keys)
        rows.append(RawRow(
            number,
            {name: obj[keys[i]] for name, i in fields.items()},
            {str(keys[i]): obj[keys[i]] for i in metadata.values()},
        ))
    metadata_columns = [k for k in seen_keys if _canonical(k) not in {*FIELDS, *sum(ALIASES.values(), ())}]
    return InputTable(path, "snli-ve" if snli else "jsonl", list(seen_keys), metadata_columns, rows, blank)


def read_input(path: str | os.PathLike) -> InputTable:
    """Read a CSV (.csv/.tsv/.txt) or JSON Lines (.jsonl/.ndjson/.json) file; other suffixes are sniffed."""
    path = Path(path)
    if path.is_dir():
        raise VeloraError(f"{path}: is a directory; give the CSV or JSONL file")
    if not path.exists():
        raise VeloraError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return read_jsonl(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return read_csv(path)
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return read_jsonl(path) if head.startswith(b"{") else read_csv(path)
