"""The translate step of `velora convert --translate` (and of `--train_file` / `--test_file` CSVs): the usable
rows' premises and hypotheses in English, the user's text kept in `premise_original` / `hypothesis_original`.

A row whose translation came back empty is dropped (`translation_failed`); a row whose glossary terms did not
survive translation is kept and flagged (`glossary_term_lost`). The translator is velora.translate's Translator,
passed in (this package does not import that one: it builds on velora.convert)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from velora.convert.issues import RowIssue, clip
from velora.convert.rows import Record

if TYPE_CHECKING:
    from velora.translate import Translator

COLUMNS = ("premise_original", "hypothesis_original", "translated_by")  # beside premise / hypothesis, in datasets
# and in the CSVs velora writes (`velora mine`)


def take_originals(records: list[Record]) -> None:
    """Rows of a CSV velora wrote (`velora mine`, reviewed) carry the originals of translated texts in COLUMNS:
    they go back where convert keeps them, not into `metadata`, so a round trip keeps what the user wrote."""
    for record in records:
        values = {name: record.metadata.pop(name) for name in COLUMNS if name in record.metadata}
        if values.get("translated_by"):
            record.premise_original = str(values.get("premise_original") or "")
            record.hypothesis_original = str(values.get("hypothesis_original") or "")
            record.translated_by = str(values["translated_by"])


def _issues(record: Record, name: str, result: Any) -> tuple[list[RowIssue], list[RowIssue]]:
    """(dropping issues, flags) of one translated text."""
    if result.error:
        return [RowIssue(record.line, name, "translation_failed", result.error, value=clip(result.original))], []
    return [], [RowIssue(record.line, name, "glossary_term_lost",
                         f"glossary term {term} not in the translation {clip(result.text)!r}; fix the glossary's "
                         "English term or the translation", value=clip(result.original))
                for term in result.lost_terms]


def translate_records(records: list[Record], translator: "Translator"
                      ) -> tuple[list[Record], list[RowIssue], list[RowIssue], dict]:
    """(the records still usable, in English; their dropping issues; their flags; the report's `translation`)."""
    n = len(records)
    results = translator.translate([r.premise for r in records] + [r.hypothesis for r in records])
    kept, dropped, flagged = [], [], []
    for record, premise, hypothesis in zip(records, results[:n], results[n:]):
        row_dropped, row_flagged = [], []
        for name, result in (("premise", premise), ("hypothesis", hypothesis)):
            if result.translated or getattr(record, f"{name}_original") is None:
                setattr(record, f"{name}_original", result.original)
            setattr(record, name, result.text)
            drop, flag = _issues(record, name, result)
            row_dropped += drop
            row_flagged += flag
        if premise.translated or hypothesis.translated:
            record.translated_by = translator.name
        dropped += row_dropped
        if not row_dropped:
            kept.append(record)
            flagged += row_flagged
    summary = {**translator.describe(), "rows_translated": sum(bool(r.translated_by) for r in kept)}
    return kept, dropped, flagged, summary
