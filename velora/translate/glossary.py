"""A glossary of domain terms (`--glossary terms.csv`: source term, English term per row): each source term is
replaced by its English term before the text is translated, and the English term is looked for in the translation
afterwards; a term the translation lost is reported for its row (the guide's ">95% term accuracy" point)."""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from velora.errors import VeloraError

MAX_GLOSSARY_BYTES = 10 * 2**20
MAX_TERM_CHARS = 200
HEADER_NAMES = {"source", "source_term", "term", "chinese", "zh", "original", "target", "target_term", "english",
                "en", "translation"}  # a first row made of these is a header, not a term


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


@dataclass(frozen=True)
class Glossary:
    path: str
    terms: dict[str, str]  # source term -> English term

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Glossary":
        """Read a two-column CSV (UTF-8, a header row optional); errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise VeloraError(f"--glossary {path}: no such file")
        if path.stat().st_size > MAX_GLOSSARY_BYTES:
            raise VeloraError(f"--glossary {path}: over {MAX_GLOSSARY_BYTES // 2**20} MB; a glossary lists terms")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise VeloraError(f"--glossary {path}: not UTF-8; save it as 'CSV UTF-8'") from None
        terms: dict[str, str] = {}
        for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if not any(cell.strip() for cell in row):
                continue
            if line == 1 and all(cell.strip().lower() in HEADER_NAMES for cell in row):
                continue
            source, english = _term(path, line, row)
            if terms.get(source, english) != english:
                raise VeloraError(f"--glossary {path} line {line}: {source!r} is given twice, as {terms[source]!r} "
                                  f"and {english!r}; keep one")
            terms[source] = english
        if not terms:
            raise VeloraError(f"--glossary {path}: no terms (one 'source term,English term' per line)")
        return cls(str(path), terms)

    @cached_property
    def _pattern(self) -> re.Pattern:
        # the longest term first, so that a term containing another wins
        return re.compile("|".join(re.escape(t) for t in sorted(self.terms, key=len, reverse=True)))

    def apply(self, text: str) -> tuple[str, list[str]]:
        """(`text` with every source term replaced by its English term, spaced from the words around it; the
        source terms found, in order of appearance)."""
        found: list[str] = []

        def replace(match: re.Match) -> str:
            found.append(match.group())
            return f" {self.terms[match.group()]} "

        replaced = self._pattern.sub(replace, text)
        return (" ".join(replaced.split()) if found else text), found

    def lost(self, found: list[str], translation: str) -> list[str]:
        """The source terms among `found` whose English term is not in `translation` (case and spacing aside)."""
        target = _normalized(translation)
        return [term for term in dict.fromkeys(found) if _normalized(self.terms[term]) not in target]

    def describe(self, term: str) -> str:
        return f"{term} -> {self.terms[term]}"


def _term(path: Path, line: int, row: list[str]) -> tuple[str, str]:
    cells = [cell.strip() for cell in row]
    while len(cells) > 2 and not cells[-1]:
        cells.pop()
    if len(cells) != 2 or not all(cells):
        raise VeloraError(f"--glossary {path} line {line}: expected two cells (source term, English term), got "
                          f"{row!r}")
    if any(len(cell) > MAX_TERM_CHARS for cell in cells):
        raise VeloraError(f"--glossary {path} line {line}: a term over {MAX_TERM_CHARS} characters")
    return cells[0], cells[1]
