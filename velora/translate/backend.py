"""What every translation back-end provides (a local model, DeepL, a command), and what they share."""

from __future__ import annotations

from typing import Protocol

INSTALL = "pip install 'velora[translate]'"  # the optional packages: sentencepiece (Marian tokenizers), deepl


class Backend(Protocol):
    name: str  # shown in reports and datasets: "hf:opus-mt-zh-en", "deepl", "command:python mt.py"
    identity: str  # the cache's key: changes whenever the translations would (model files, languages...)
    batch_size: int  # texts per call of `translate`

    def load(self) -> None:
        """Load what `translate` needs (a model's weights); it loads it on first use otherwise."""

    def translate(self, texts: list[str]) -> list[str]:
        """One English text per text, in order; raises VeloraError with one line naming the back-end."""

    def close(self) -> None:
        """Free what it holds (model weights, HTTP sessions)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line, for one-line errors."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
