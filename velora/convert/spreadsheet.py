"""CSV files that are safe to open in a spreadsheet, and read back losslessly.

A cell starting with = + - @ tab or CR is a formula to Excel, LibreOffice and Google Sheets (`=HYPERLINK(...)`
runs on a click). Every CSV velora writes neutralises such cells the OWASP way, with a leading `'`, and `velora
convert` strips that `'` again when reading a CSV, so a round trip gives back the original text. A cell that already
starts with quotes before such a character gets one more, so that text starting with `'=` also survives.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

FORMULA_STARTS = frozenset("=+-@\t\r")


def _starts_formula(text: str) -> bool:
    return text.lstrip("'")[:1] in FORMULA_STARTS


def neutralise(cell: object) -> object:
    """'=1+2' -> "'=1+2"; numbers and other text unchanged."""
    return "'" + cell if isinstance(cell, str) and _starts_formula(cell) else cell


def restore(cell: str) -> str:
    """The inverse of neutralise: "'=1+2" -> '=1+2'."""
    return cell[1:] if cell.startswith("'") and _starts_formula(cell) else cell


def write_rows(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Path:
    """`rows` (dicts; missing keys empty) as a UTF-8 CSV with a header, every cell neutralised; written beside
    `path` and renamed into place, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([neutralise(c) for c in columns])
        writer.writerows([neutralise(row.get(c, "")) for c in columns] for row in rows)
    os.replace(tmp, path)
    return path
