"""What the checks find: a RowIssue per problem with one input row, a QualityWarning per finding about the whole
file, and the small text helpers every message uses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Sequence

MAX_VALUE_CHARS = 200  # of a rejected value quoted in the report
# Characters a terminal obeys rather than shows (C0, DEL, C1: escape sequences, bells, carriage returns) and
# bidirectional marks and overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class RowIssue:
    """One problem with one input row: `line` is the line where the row starts in the input file."""

    line: int
    field: str
    code: str
    reason: str
    value: str | None = None
    related_lines: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        out = {"line": self.line, "field": self.field, "code": self.code, "reason": self.reason}
        if self.value is not None:
            out["value"] = self.value
        if self.related_lines:
            out["related_lines"] = list(self.related_lines)
        return out


@dataclass
class QualityWarning:
    """A data-quality finding about the whole file; `lines` lists every row it concerns (may be empty)."""

    code: str
    message: str
    lines: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "count": len(self.lines), "lines": self.lines}


def clip(value: object) -> str:
    """A value as quoted in a report: text as it is, anything else as JSON, cut to MAX_VALUE_CHARS."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def plural(n: int, word: str, many: str | None = None) -> str:
    """plural(1, "row") -> "1 row"; plural(3, "row") -> "3 rows"."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def examples(lines: Sequence[int], limit: int = 5) -> str:
    """'line 4' / 'lines 4, 9, 12 and 3 more'."""
    shown = ", ".join(str(n) for n in lines[:limit])
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"{'line' if len(lines) == 1 else 'lines'} {shown}{more}"


def printable(text: str) -> str:
    """`text` with control and bidirectional characters written as escapes ('\\x1b', '\\n', '\\u202e'), for the
    console: a file name or a cell cannot drive the terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
