"""`--translate ./opus-mt-zh-en`: a local Hugging Face translation model (MarianMT such as Helsinki-NLP/opus-mt-zh-en,
or any AutoModelForSeq2SeqLM with its tokenizer) run with `transformers`, batched, on the device OFA runs on.

The weights load on first use: a run whose texts are all English never loads them. Marian tokenizers need
`sentencepiece` (`pip install 'velora[translate]'`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from velora.errors import VeloraError
from velora.translate.backend import INSTALL, first_line

MAX_SOURCE_TOKENS = 512  # longer inputs are cut (Marian's position limit); velora's texts are far shorter
MAX_OUTPUT_TOKENS = 256  # bounds one batch's time; the model's generation_config (beams, max_length) applies below it
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
HUB_HINT = ("download it once on a connected machine, e.g. `huggingface-cli download Helsinki-NLP/opus-mt-zh-en "
            "--local-dir ./opus-mt-zh-en`, and pass that folder")


def fingerprint(folder: Path) -> str:
    """What identifies the model's translations in the cache: its config and tokenizer files' bytes, and the name
    and size of each weight file (hashing gigabytes of weights would cost more than it tells)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix in WEIGHT_SUFFIXES:
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
        elif path.stat().st_size <= 50 * 2**20:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _pick_device(device: str):
    import torch  # deferred: torch takes ~1 s to import; `velora convert` without a model needs it only here

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFBackend:
    def __init__(self, model: str, device: str = "auto", batch_size: int = 16):
        self.source = model
        self.flag = f"--translate {model}"
        folder = Path(model).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise VeloraError(f"{self.flag}: not a translation model folder (no config.json); {HUB_HINT}")
            self.name, self.identity = f"hf:{folder.resolve().name}", f"hf:{folder.resolve().name}@{fingerprint(folder)}"
        elif folder.exists() or "/" not in model or model.startswith((".", "/", "~")):
            raise VeloraError(f"{self.flag}: no such model folder (give a local translation model folder, "
                              "deepl, or command:CMD)")
        else:  # a hub id, read from the Hugging Face cache (or downloaded when online)
            self.name = self.identity = f"hf:{model}"
        self.device = _pick_device(device)
        self.batch_size = batch_size
        self.model = self.tokenizer = None

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # deferred: seconds; only runs that translate
        from transformers.utils import logging as hf_logging  # deferred: as above

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            try:  # a hub id: the Hugging Face cache first, so that an offline machine does not wait on the network
                self.tokenizer = AutoTokenizer.from_pretrained(self.source, local_files_only=True)
                self.model = AutoModelForSeq2SeqLM.from_pretrained(self.source, local_files_only=True)
            except OSError:
                if Path(self.source).expanduser().is_dir():
                    raise
                self.tokenizer = AutoTokenizer.from_pretrained(self.source)
                self.model = AutoModelForSeq2SeqLM.from_pretrained(self.source)
            self.model = self.model.to(self.device).eval()
        except ImportError as e:
            raise VeloraError(f"{self.flag}: its tokenizer needs a package that is not installed: {INSTALL} "
                              f"({first_line(e)})") from None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            hint = "" if Path(self.source).expanduser().is_dir() else f" (offline? {HUB_HINT})"
            raise VeloraError(f"{self.flag}: cannot load it as a translation model: {first_line(e)}{hint}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()

    def translate(self, texts: list[str]) -> list[str]:
        import torch  # deferred: see _pick_device

        self.load()
        out: list[str] = [""] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad little
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            inputs = self.tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                                    max_length=MAX_SOURCE_TOKENS).to(self.device)
            limit = min(self.model.generation_config.max_length or MAX_OUTPUT_TOKENS, MAX_OUTPUT_TOKENS)
            with torch.inference_mode():
                generated = self.model.generate(**inputs, max_length=limit)
            for i, text in zip(rows, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                out[i] = text.strip()
        return out

    def close(self) -> None:
        self.model = self.tokenizer = None
