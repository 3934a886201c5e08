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
        record.premise_original, record.hypothesis_original = record.premise, record.hypothesis
        record.premise, record.hypothesis = premise.text, hypothesis.text
        if premise.translated or hypothesis.translated:
            record.translated_by = translator.name
        row_dropped, row_flagged = [], []
        for name, result in (("premise", premise), ("hypothesis", hypothesis)):
            drop, flag = _issues(record, name, result)
            row_dropped += drop
            row_flagged += flag
        dropped += row_dropped
        if not row_dropped:
            kept.append(record)
            flagged += row_flagged
    summary = {**translator.describe(), "rows_translated": sum(bool(r.translated_by) for r in kept)}
    return kept, dropped, flagged, summary
