"""`--translate deepl`: the DeepL API through its official `deepl` package (`pip install 'velora[translate]'`), the
key from DEEPL_AUTH_KEY. DEEPL_SERVER_URL points it at another server (a proxy, or a local stand-in in tests), as
DeepL's own command line does."""

from __future__ import annotations

import os

from velora.errors import VeloraError
from velora.translate.backend import INSTALL, first_line

TARGET_LANG = "EN-US"
TEXTS_PER_REQUEST = 50  # DeepL's limit for one /v2/translate call
NETWORK_RETRIES = 2  # the package's default, 5 with exponential backoff, keeps an offline run waiting ~30 s


class DeepLBackend:
    name = "deepl"
    batch_size = TEXTS_PER_REQUEST

    def __init__(self, source_lang: str | None = None):
        try:
            import deepl  # deferred: an optional extra, only needed with --translate deepl
        except ImportError:
            raise VeloraError(f"--translate deepl needs the deepl package: {INSTALL}") from None
        key = os.environ.get("DEEPL_AUTH_KEY", "").strip()
        if not key:
            raise VeloraError("--translate deepl: no API key; set DEEPL_AUTH_KEY (your DeepL account's 'API keys' "
                              "page), or translate offline with a local model: --translate ./opus-mt-zh-en")
        self.deepl = deepl
        deepl.http_client.max_network_retries = NETWORK_RETRIES
        self.source_lang = source_lang
        self.identity = f"deepl:{source_lang or 'auto'}->{TARGET_LANG}"
        self.client = deepl.Translator(key, server_url=os.environ.get("DEEPL_SERVER_URL") or None,
                                       send_platform_info=False)

    def translate(self, texts: list[str]) -> list[str]:
        errors = self.deepl.exceptions
        try:
            results = self.client.translate_text(texts, source_lang=self.source_lang, target_lang=TARGET_LANG)
        except errors.AuthorizationException:
            raise VeloraError("--translate deepl: DeepL refused the key in DEEPL_AUTH_KEY (403); check it") from None
        except errors.QuotaExceededException:
            raise VeloraError("--translate deepl: the DeepL quota of this key is used up for this billing period; "
                              "what was translated so far is cached") from None
        except errors.ConnectionException as e:
            raise VeloraError(f"--translate deepl: cannot reach the DeepL API (offline? {first_line(e)}); "
                              "translate offline with a local model: --translate ./opus-mt-zh-en") from None
        except errors.DeepLException as e:
            raise VeloraError(f"--translate deepl: {first_line(e)}") from None
        if len(results) != len(texts):
            raise VeloraError(f"--translate deepl: {len(results)} translations for {len(texts)} texts")
        return [result.text for result in results]

    def load(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()
