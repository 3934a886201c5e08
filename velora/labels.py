"""The three visual-entailment labels, in the order every velora output uses, and the model's answer words."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("entailment", "contradiction", "neutral")

# The released model answers with one BART token per label; the leading space is part of the token.
ANSWER_WORDS: dict[str, str] = {"entailment": " yes", "contradiction": " no", "neutral": " maybe"}

_ALIASES = {label: label for label in LABELS} | {word.strip(): label for label, word in ANSWER_WORDS.items()}


def normalize_label(value: object) -> str | None:
    """'Entailment ', 'YES', 'no' ... -> the canonical label; None when it is not one of them."""
    if value is None:
        return None
    return _ALIASES.get(str(value).strip().lower())
