"""Translation inside the pipeline (the guide's section 5.4: OFA reads English only): Chinese (or any non-English)
premises and hypotheses are translated to English before the model sees them, the originals kept beside them.

    detect      which texts are not English (has_cjk, shared with `velora validate`), the untranslated warning
    glossary    --glossary terms.csv: terms replaced before translation, checked after it
    cache       the SQLite cache: (back-end identity, source text) -> translation
    hf          --translate ./opus-mt-zh-en: a local transformers model, on OFA's device
    deepl_api   --translate deepl: the DeepL API (DEEPL_AUTH_KEY)
    command     --translate command:CMD: any program, one line in, one line out
    translator  Translator (the steps above in order), load_translator(spec, ...)
    pairs       translate_pairs: premise/hypothesis pairs for predict, eval, mine and serve

docs/chinese.md compares the back-ends.
"""

from velora.translate.cache import TranslationCache, default_cache_path
from velora.translate.detect import DETECTORS, cjk_rows, non_english_warning
from velora.translate.glossary import Glossary
from velora.translate.pairs import ScoredTexts, translate_pairs
from velora.translate.translator import Translation, Translator, load_translator, make_backend, translator_for

__all__ = [
    "DETECTORS", "Glossary", "ScoredTexts", "Translation", "TranslationCache", "Translator", "cjk_rows",
    "default_cache_path", "load_translator", "make_backend", "non_english_warning", "translate_pairs", "translator_for",
]
