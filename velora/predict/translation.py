"""`velora predict --input_file ... --translate BACKEND`: non-English premises and hypotheses scored in English,
what the user wrote kept in the output's premise_original / hypothesis_original / translated_by columns (as in
`velora mine`'s CSV, which `velora convert` reads back).

The decoding workers (velora.predict.prepare) start each chunk with its ChunkTexts, the distinct pairs whose texts
the translator's detector flags; the main process translates them in one call (through the translation cache, in
the back-end's batches) and, as the chunk's batches arrive, encodes those rows' English text. Without a translator,
the output's Chinese rows are counted for the warning the single-example predict gives.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from velora.convert.columns import field_of
from velora.convert.quality import has_cjk
from velora.convert.translation import COLUMNS
from velora.ofa.processor import OFAProcessor
from velora.predict.prepare import ChunkTexts, Pair, PreparedBatch, RowError, encode_prompt
from velora.translate import Translator
from velora.translate.pairs import ScoredTexts, translate_pairs


def translation_identity(translator: Translator | None) -> dict | None:
    """What about the translator changes a result (a resumed run must use the same)."""
    if translator is None:
        return None
    glossary = translator.glossary
    return {"backend": translator.backend.identity, "detect": translator.detect_name,
            "glossary": None if glossary is None else {"path": str(glossary.path), "terms": len(glossary.terms),
                                                       "sha256": _terms_digest(glossary.terms)}}


def _terms_digest(terms: dict[str, str]) -> str:
    """Edited terms (even as many as before) change a resumed run's results, so they are part of its identity."""
    return hashlib.sha256(json.dumps(sorted(terms.items()), ensure_ascii=False).encode()).hexdigest()


class ChunkTranslations:
    """The translations of the chunks being scored, by chunk; a chunk's are dropped with its last batch."""

    def __init__(self, translator: Translator, processor: OFAProcessor):
        self.translator, self.processor = translator, processor
        self.by_chunk: dict[int, dict[Pair, ScoredTexts]] = {}

    def add(self, texts: ChunkTexts) -> None:
        scored = translate_pairs(self.translator, [p for p, _ in texts.pairs], [h for _, h in texts.pairs])
        self.by_chunk[texts.chunk] = dict(zip(texts.pairs, scored))

    def apply(self, batch: PreparedBatch) -> list[dict[str, Any] | None]:
        """Give the batch's waiting rows their English prompt (or the reason it failed); returns, per row, what
        goes into its result line (None when nothing was translated)."""
        found = self.by_chunk.get(batch.chunk, {})
        records: list[dict[str, Any] | None] = []
        for i, pair in enumerate(batch.waiting or [None] * len(batch)):
            texts = found.get(pair) if pair is not None else None
            records.append(self._record(texts) if texts is not None and texts.translated and not texts.error else None)
            if pair is None:
                continue
            try:
                if texts is None:  # cannot happen: the worker sent every pair it leaves waiting
                    raise RowError("translation_failed", "not translated")
                if texts.error:
                    raise RowError("translation_failed", texts.error)
                batch.prompts[i] = encode_prompt(self.processor, texts.premise, texts.hypothesis)
            except RowError as e:
                batch.errors[i] = e
        if batch.last:
            self.by_chunk.pop(batch.chunk, None)
        return records

    @staticmethod
    def _record(texts: ScoredTexts) -> dict[str, Any]:
        out = {"premise": texts.premise, "hypothesis": texts.hypothesis, "premise_original": texts.premise_original,
               "hypothesis_original": texts.hypothesis_original, "translated_by": texts.translated_by}
        if texts.lost_terms:
            out["glossary_terms_lost"] = texts.lost_terms
        return out


class OutputTexts:
    """The output side: the columns added with a translator, each row's English text and originals, the counts."""

    def __init__(self, columns: tuple[str, ...], translating: bool):
        self.translating = translating
        self.text_columns = {field: next((c for c in columns if field_of(c) == field), None)
                             for field in ("premise", "hypothesis")}
        self.extra = tuple(c for c in COLUMNS if c not in columns) if translating else ()
        self.translated = self.untranslated_cjk = self.terms_lost = 0

    def update(self, values: dict[str, Any], names: dict[str, str], result: dict[str, Any]) -> None:
        """`values` (an output row: input columns under their output names) with the English text the model
        scored and the originals, when the row was translated; counted either way."""
        translated = result.get("translated")
        if translated is None:
            if self.translating:
                values.update({c: values.get(c) for c in self.extra})
            elif any(has_cjk(str(values.get(names[c]) or "")) for c in self.text_columns.values() if c):
                self.untranslated_cjk += 1
            return
        self.translated += 1
        self.terms_lost += bool(translated.get("glossary_terms_lost"))
        for field, column in self.text_columns.items():
            if column is not None:
                values[names[column]] = translated[field]
        values.update({c: translated[c] for c in COLUMNS})

    def summary(self) -> dict[str, int]:
        return {"translated_rows": self.translated, "glossary_terms_lost_rows": self.terms_lost,
                "untranslated_cjk_rows": self.untranslated_cjk}

