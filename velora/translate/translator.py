"""The Translator: texts in, English out, through one back-end, with the glossary, the cache and detection.

    translator = load_translator("./opus-mt-zh-en", glossary="terms.csv")   # or "deepl", "command:CMD"
    [t.text for t in translator.translate(["一台不锈钢咖啡机", "a red car"])]
    # ['A stainless steel coffee machine', 'a red car']   (the English text is left as it is)

For each text: detected as English -> kept; else the glossary's terms are replaced by their English terms, the
cache is asked, and what is left goes to the back-end in batches (each batch cached as soon as it is back, so a run
cut short loses nothing); the glossary's English terms are then looked for in the translation.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from velora.errors import VeloraError
from velora.translate.backend import Backend
from velora.translate.cache import TranslationCache
from velora.translate.command import DEFAULT_TIMEOUT, CommandBackend
from velora.translate.deepl_api import DeepLBackend
from velora.translate.detect import Detector, pick_detector
from velora.translate.glossary import Glossary
from velora.translate.hf import HFBackend

COMMAND_PREFIX = "command:"


@dataclass(frozen=True)
class Translation:
    original: str
    text: str  # what the model scores: the translation, or the original when it was left as it was
    translated: bool = False  # False: detected as English, left as it was
    from_cache: bool = False
    lost_terms: tuple[str, ...] = ()  # glossary entries ("不锈钢 -> stainless steel") missing from the translation
    error: str | None = None  # why `text` cannot be used (an empty translation)


class Translator:
    """Thread-safe: one translation at a time (the server calls it from several threads)."""

    def __init__(self, backend: Backend, *, cache: TranslationCache | None = None, glossary: Glossary | None = None,
                 detect: str | Detector = "cjk", progress: bool = False):
        self.backend = backend
        self.cache = cache
        self.glossary = glossary
        self.detect_name = detect if isinstance(detect, str) else getattr(detect, "__name__", "custom")
        self.detect = pick_detector(detect)
        self.progress = progress
        self.counts: Counter = Counter()  # texts seen / translated / from_cache / sent (to the back-end)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.backend.name

    def needs_translation(self, text: str) -> bool:
        return self.detect(text)

    def load(self) -> None:
        """Load what the back-end needs now (a model's weights) rather than for the first text (the server)."""
        with self._lock:
            self.backend.load()

    def translate(self, texts: Sequence[str]) -> list[Translation]:
        with self._lock:
            return self._translate(list(texts))

    def _translate(self, texts: list[str]) -> list[Translation]:
        prepared: dict[int, tuple[str, list[str]]] = {}  # index -> (text to translate, glossary terms in it)
        for i, text in enumerate(texts):
            if self.detect(text):
                sent = " ".join(text.split())
                prepared[i] = self.glossary.apply(sent) if self.glossary else (sent, [])
        done = {sent: sent for sent, found in prepared.values() if found and not self.detect(sent)}  # glossary alone
        wanted = [sent for sent, _ in prepared.values() if sent not in done]
        cached = self.cache.get(self.backend.identity, wanted) if self.cache and wanted else {}
        done.update(cached)
        missing = list(dict.fromkeys(s for s in wanted if s not in done))
        done.update(self._from_backend(missing))
        self.counts.update(texts=len(texts), translated=len(prepared), sent=len(missing),
                           from_cache=sum(sent in cached for sent, _ in prepared.values()))
        return [self._result(text, *prepared[i], done[prepared[i][0]], prepared[i][0] in cached)
                if i in prepared else Translation(text, text) for i, text in enumerate(texts)]

    def _from_backend(self, texts: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        size = max(1, self.backend.batch_size)
        with tqdm(total=len(texts), desc=f"translating ({self.name})", unit="text",
                  disable=not self.progress or not texts) as bar:
            for start in range(0, len(texts), size):
                batch = texts[start:start + size]
                translated = [" ".join(t.split()) for t in self.backend.translate(batch)]
                if len(translated) != len(batch):
                    raise VeloraError(f"--translate {self.name}: {len(translated)} translations for {len(batch)} texts")
                pairs = [(s, t) for s, t in zip(batch, translated) if t]
                if self.cache is not None and pairs:
                    self.cache.put(self.backend.identity, pairs)
                out.update(zip(batch, translated))
                bar.update(len(batch))
        return out

    def _result(self, original: str, sent: str, found: list[str], text: str, from_cache: bool) -> Translation:
        lost = tuple(self.glossary.describe(t) for t in self.glossary.lost(found, text)) if found else ()
        error = None if text else f"the translation by {self.name} is empty"
        return Translation(original, text, True, from_cache, lost, error)

    def describe(self) -> dict:
        """For reports: which back-end, how texts were picked, where the cache and glossary are, and the counts."""
        return {"backend": self.name, "backend_identity": self.backend.identity, "detect": self.detect_name,
                "cache": str(self.cache.path) if self.cache else None,
                "glossary": self.glossary.path if self.glossary else None,
                "glossary_terms": len(self.glossary.terms) if self.glossary else 0, **dict(self.counts)}

    def close(self) -> None:
        self.backend.close()
        if self.cache is not None:
            self.cache.close()


def make_backend(spec: str, *, device: str = "auto", timeout: float = DEFAULT_TIMEOUT, batch_size: int = 16
                 ) -> Backend:
    """`deepl`, `command:CMD`, or a local model folder (or a hub id in the Hugging Face cache)."""
    spec = spec.strip()
    if spec == "deepl":
        return DeepLBackend()
    if spec.startswith(COMMAND_PREFIX):
        return CommandBackend(spec[len(COMMAND_PREFIX):], timeout=timeout)
    if not spec:
        raise VeloraError("--translate is empty: give a local model folder (./opus-mt-zh-en), deepl or command:CMD")
    return HFBackend(spec, device=device, batch_size=batch_size)


def load_translator(spec: str, *, device: str = "auto", glossary: str | os.PathLike | None = None,
                    cache: str | os.PathLike | bool | None = True, detect: str | Detector = "cjk",
                    timeout: float = DEFAULT_TIMEOUT, batch_size: int = 16, progress: bool = False) -> Translator:
    """A Translator for `--translate SPEC`, checked now (folder, key, program, glossary, cache) so that a mistake
    fails before any slow step; a model's weights load when a text first needs them. `cache`: True/None = the
    default file, False/"off" = none, else a path."""
    if batch_size < 1:
        raise VeloraError(f"--translate_batch_size must be 1 or more, got {batch_size}")
    pick_detector(detect)  # a wrong --translate_detect fails before the model or the glossary is read
    terms = Glossary.load(glossary) if glossary else None
    backend = make_backend(spec, device=device, timeout=timeout, batch_size=batch_size)
    if cache is False or str(cache).lower() == "off":
        store = None
    else:
        store = TranslationCache(None if cache in (True, None) else cache)
    return Translator(backend, cache=store, glossary=terms, detect=detect, progress=progress)


def translator_for(options: Mapping[str, Any], device: str = "auto", progress: bool = False) -> Translator | None:
    """The Translator the --translate options ask for, None without `translate`: the keys are the flags' names
    (translate, glossary, translation_cache, translate_detect, translate_timeout), as the CLI and ServeSettings
    hold them."""
    if not options.get("translate"):
        return None
    return load_translator(options["translate"], device=device, glossary=options.get("glossary"),
                           cache=options.get("translation_cache") or True, detect=options.get("translate_detect", "cjk"),
                           timeout=options.get("translate_timeout", DEFAULT_TIMEOUT), progress=progress)
