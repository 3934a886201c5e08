"""Everything `velora serve` can be told, checked once, before any model is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from velora.errors import VeloraError
from velora.hub import DEFAULT_MODEL_ID
from velora.predictor import BASE, DEFAULT_ADAPTER

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ServeSettings:
    model_path: str = DEFAULT_MODEL_ID  # model dir, LoRA adapter dir (served as "default") or hub id
    base_model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    image_size: int | None = None
    quantize: str | None = None  # "int8": CPU int8 where measured to keep the probabilities (velora.quantize)
    adapters: dict[str, str] = field(default_factory=dict)  # extra LoRA adapters on the same base: name -> dir
    api_key: str | None = None  # None: open; else X-API-Key or Authorization: Bearer on /check*
    max_batch_size: int = 16  # 1 turns micro-batching off
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    max_upload_mb: float = 10.0  # largest request body (image + fields; for JSON, the base64 text)
    max_text_chars: int = 1000  # premise / hypothesis
    max_batch_items: int = 64  # items in one POST /check_batch
    max_queue: int = 1024  # examples waiting for the model; beyond this, 503 + Retry-After
    low_confidence: float = 0.6  # predictions below this count in velora_low_confidence_total
    decode_threads: int = 4  # images decoded at once (bounds memory under a burst of large uploads)
    warmup: bool = True
    # slow and idle clients (see docs/security.md)
    header_timeout: float = 10.0  # request line + headers must arrive within this, else 408 and close
    body_timeout: float = 30.0  # the body must arrive within this, plus 1 s per 16 KB received, else 408
    keep_alive_timeout: float = 5.0  # an idle keep-alive connection is closed after this
    limit_concurrency: int | None = 256  # more open connections or requests in flight than this: 503; None: no cap
    # --translate (docs/chinese.md): non-English premises and hypotheses scored in English, both in the response
    translate: str | None = None  # a local translation model folder, "deepl" or "command:CMD"; None: warn only
    glossary: str | None = None  # CSV of (source term, English term)
    translation_cache: str | None = None  # SQLite file; None: the default one, "off": none
    translate_detect: str = "cjk"  # which texts are translated: cjk, non_latin or all
    translate_timeout: float = 600.0  # seconds a command:CMD back-end may take per batch

    def __post_init__(self) -> None:
        checks = [
            (self.max_batch_size >= 1, "--max_batch_size must be at least 1 (1 turns batching off)"),
            (0 <= self.max_wait_ms <= 10_000, "--max_wait_ms must be between 0 and 10000"),
            (self.max_upload_mb > 0, "--max_upload_mb must be positive"),
            (self.max_text_chars >= 1, "max_text_chars must be at least 1"),
            (self.max_batch_items >= 1, "max_batch_items must be at least 1"),
            (self.max_queue >= self.max_batch_size, "max_queue must be at least --max_batch_size"),
            (0 <= self.low_confidence <= 1, "low_confidence must be between 0 and 1"),
            (self.decode_threads >= 1, "decode_threads must be at least 1"),
            (self.header_timeout > 0, "--header_timeout must be positive"),
            (self.body_timeout > 0, "--body_timeout must be positive"),
            (self.keep_alive_timeout > 0, "--keep_alive_timeout must be positive"),
            (self.limit_concurrency is None or self.limit_concurrency >= 1, "--limit_concurrency must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise VeloraError(message)
        if self.api_key is not None and not self.api_key.strip():
            raise VeloraError("--api_key is empty: give a key, or leave it out to serve without one")
        for name in self.adapters:
            check_adapter_name(name)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check_paths(self) -> None:
        """Fail early, naming the flag, for adapter folders that are not adapters (the model path is checked by
        the loader, which may also fetch it from a hub)."""
        for name, path in self.adapters.items():
            folder = Path(path).expanduser()
            if not (folder / "adapter_config.json").is_file():
                raise VeloraError(f"--adapter {name}={path}: no adapter_config.json there "
                                  "(pass a folder written by `velora train`)")


def display_name(model: str) -> str:
    """A model or adapter as anyone may see it: a local folder's name (never its path), or a hub id as given."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def check_adapter_name(name: str) -> None:
    if name in (BASE, DEFAULT_ADAPTER):
        raise VeloraError(f"--adapter name {name!r} is reserved ({BASE!r} = adapters off, {DEFAULT_ADAPTER!r} = "
                          "the adapter given as --model_path); pick another name")
    if not ADAPTER_NAME.match(name):
        raise VeloraError(f"--adapter name {name!r}: use 1-64 letters, digits, '_' or '-'")


def parse_adapter_specs(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['fine=./lora_a', 'strict=./lora_b'] -> {'fine': './lora_a', 'strict': './lora_b'}."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise VeloraError(f"--adapter expects NAME=PATH (e.g. --adapter strict=./lora_strict), got {spec!r}")
        check_adapter_name(name)
        if name in adapters:
            raise VeloraError(f"--adapter {name} given twice; each adapter needs its own name")
        adapters[name] = path
    return adapters
