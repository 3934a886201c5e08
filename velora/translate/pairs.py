"""Premise/hypothesis pairs through a Translator, for everything that scores them: `velora predict` (one pair, or
a whole `--input_file`), `eval` and `mine` on a converted dataset, and the server. `translate_pairs` is the one
function to call; with no translator it only warns about Chinese text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from velora.errors import VeloraError
from velora.translate.translator import Translation, Translator

FIELDS = ("premise", "hypothesis")


@dataclass
class ScoredTexts:
    """One pair as the model scores it, with what the user wrote."""

    premise: str | None  # English: what the model scores
    hypothesis: str
    premise_original: str | None
    hypothesis_original: str
    translated_by: str | None = None  # the back-end's name when either text was translated
    lost_terms: list[str] = field(default_factory=list)  # "premise: 不锈钢 -> stainless steel"
    error: str | None = None  # "hypothesis: the translation by X is empty": not to be scored

    @property
    def translated(self) -> bool:
        return self.translated_by is not None

    def to_dict(self) -> dict:
        """The texts scored and the originals, for JSON outputs."""
        out = {"premise": self.premise, "hypothesis": self.hypothesis, "premise_original": self.premise_original,
               "hypothesis_original": self.hypothesis_original, "translated_by": self.translated_by}
        if self.lost_terms:
            out["glossary_terms_lost"] = self.lost_terms
        return out

    def to_text(self) -> str:
        """'Translated by X from: premise "...", hypothesis "..."' (empty when nothing was translated)."""
        if not self.translated:
            return ""
        changed = [f'{name} "{original}"' for name, original, text in (
            ("premise", self.premise_original, self.premise), ("hypothesis", self.hypothesis_original,
                                                               self.hypothesis)) if original != text]
        lost = f"\nGlossary terms lost: {'; '.join(self.lost_terms)}" if self.lost_terms else ""
        return f"Translated by {self.translated_by} from: {', '.join(changed)}{lost}"


def _pair(premise: str | None, hypothesis: str, p: Translation | None, h: Translation, backend: str) -> ScoredTexts:
    used = [(name, t) for name, t in zip(FIELDS, (p, h)) if t is not None]
    errors = [f"{name}: {t.error}" for name, t in used if t.error]
    return ScoredTexts(
        p.text if p is not None else premise, h.text, premise, hypothesis,
        backend if any(t.translated for _, t in used) else None,
        [f"{name}: {term}" for name, t in used for term in t.lost_terms],
        "; ".join(errors) or None,
    )


def translate_pairs(translator: Translator | None, premises: Sequence[str | None], hypotheses: Sequence[str]
                    ) -> list[ScoredTexts]:
    """Each (premise, hypothesis) as the model should score it: translated where the translator detects a
    non-English text (all in one batched call), else as given. A row whose translation came back empty has
    `error` set (the caller reports it for that row)."""
    if len(premises) != len(hypotheses):
        raise VeloraError(f"got {len(premises)} premises and {len(hypotheses)} hypotheses")
    if translator is None:
        return [ScoredTexts(p, h, p, h) for p, h in zip(premises, hypotheses)]
    present = [i for i, p in enumerate(premises) if p]
    results = translator.translate([premises[i] for i in present] + list(hypotheses))
    by_premise = dict(zip(present, results[:len(present)]))
    return [_pair(p, h, by_premise.get(i), t, translator.name)
            for i, (p, h, t) in enumerate(zip(premises, hypotheses, results[len(present):]))]
