"""Which texts are not English: script detection (`has_cjk`, the same check `velora validate` warns with), a
configurable check for the rest, and the warning every command gives when it scores such text untranslated."""

from __future__ import annotations

import unicodedata
from typing import Callable, Sequence

from velora.convert.issues import examples
from velora.convert.quality import TRANSLATE_HINT, has_cjk
from velora.errors import VeloraError

Detector = Callable[[str], bool]


def has_non_latin_letters(text: str) -> bool:
    """A letter outside the Latin script (Cyrillic, Greek, Arabic, Hebrew, Thai, CJK...)."""
    return any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in text)


def _any_text(text: str) -> bool:
    return bool(text.strip())


# --translate_detect: what is sent to the translator. Texts in a Latin-script language (German, French...) look
# like English to script detection: `all` sends every text (a de-en or fr-en model leaves English mostly as is).
DETECTORS: dict[str, Detector] = {"cjk": has_cjk, "non_latin": has_non_latin_letters, "all": _any_text}


def pick_detector(detect: str | Detector) -> Detector:
    if callable(detect):
        return detect
    if detect not in DETECTORS:
        raise VeloraError(f"--translate_detect {detect!r}: use one of {', '.join(DETECTORS)}")
    return DETECTORS[detect]


def cjk_rows(premises: Sequence[str | None], hypotheses: Sequence[str]) -> list[int]:
    """Indices of the pairs whose premise or hypothesis has Chinese/Japanese/Korean text."""
    return [i for i, (p, h) in enumerate(zip(premises, hypotheses)) if has_cjk(p or "") or has_cjk(h or "")]


def non_english_warning(premises: Sequence[str | None], hypotheses: Sequence[str], *,
                        names: Sequence[object] | None = None, hint: str = TRANSLATE_HINT) -> str | None:
    """The warning for examples about to be scored with Chinese/Japanese/Korean text in them (None when there are
    none). `names` labels each pair in the message (e.g. source rows); `hint` says how to translate."""
    rows = cjk_rows(premises, hypotheses)
    if not rows:
        return None
    if len(premises) == 1:
        fields = [name for name, text in (("premise", premises[0]), ("hypothesis", hypotheses[0]))
                  if has_cjk(text or "")]
        what = f"the {' and the '.join(fields)} {'has' if len(fields) == 1 else 'have'}"
    else:
        labels = [names[i] if names is not None else i for i in rows]
        what = f"{len(rows)} of {len(premises)} examples ({examples(labels).replace('line', 'row')}) have"
    return (f"{what} Chinese/Japanese/Korean text, scored as if it were English (OFA only understands English): "
            f"{hint}")
