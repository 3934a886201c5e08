"""The four fields of a row (image_path, premise, hypothesis, label), the other spellings users write them
with, and the mapping of a header (or a JSON object's keys) onto them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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
SNLI_KEYS = ("flikr30kid", "flickr30kid", "flickr30k_id")
_IMAGE_NAME = re.compile(r"\.(jpe?g|png|gif|webp|bmp|tiff?)$", re.I)


@dataclass
class RawRow:
    """One input record: `values` maps the canonical field names found to their raw values."""

    line: int
    values: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


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


def is_snli_key(name: object) -> bool:
    """SNLI-VE's image id key (Flikr30kID, sic)."""
    return _canonical(name) in SNLI_KEYS


def field_of(name: object) -> str | None:
    """The field a column name spells (its own name or an alias), else None."""
    canon = _canonical(name)
    return next((f for f in FIELDS if canon in (f, *ALIASES[f])), None)


def record_names(header: Sequence[str]) -> list[str]:
    """A distinct key per column: blank names become column_N, repeated ones get _2, _3..."""
    names: list[str] = []
    for i, name in enumerate(header):
        name = str(name).strip() or f"column_{i + 1}"
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def check_header(path: Path, header: Sequence[str], required: Sequence[str]) -> dict[str, int]:
    """The header's {field: index}; VeloraError naming what is missing and what was found."""
    fields, _ = map_columns(header)
    missing = [name for name in required if name not in fields]
    if missing:
        hint = " (the first line looks like data: add the header line)" if any(
            _IMAGE_NAME.search(str(h).strip()) for h in header) else ""
        optional = [name for name in FIELDS if name not in required]
        needs = ",".join(FIELDS) if not optional else f"{','.join(required)} ({', '.join(optional)} optional)"
        raise VeloraError(f"{path}: missing column(s) {', '.join(missing)}; found columns: "
                          f"{', '.join(repr(h) for h in header)}{hint}. The header must be {needs}")
    return fields
