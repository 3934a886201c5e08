"""The teacher's answers, computed once: log-probabilities of every training row (gold, unlabelled and validation)
cached in OUTPUT_DIR/teacher_probabilities.json under the teacher's identity, so a rerun or a resume never runs the
teacher again.

A row is keyed by its picture's content, premise and hypothesis (not by its position), so the cache survives
reordering and new rows are the only ones scored. The identity says which teacher answered: its weights files
(size, modification time and a hash of their start, velora.predict.inputs.file_identity) and its preprocessing;
another teacher, or the same one retrained, starts a new cache (the old file is replaced: velora wrote it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from velora.bundle import ModelBundle
from velora.errors import VeloraError
from velora.io import write_json_atomic
from velora.predict.inputs import file_identity

CACHE_NAME = "teacher_probabilities.json"
CACHE_FORMAT = "velora-teacher-probabilities-1"
MIN_LOG_PROB = -100.0  # an exact 0 probability stored as e^-100, so KL terms stay finite
SAVE_EVERY = 256  # rows scored between two writes of the cache (a kill loses at most these)


@dataclass(frozen=True)
class Row:
    """What the teacher scores: one picture, a premise and a hypothesis."""

    image: int | str  # the picture's index in the student's ImageStore, or its file
    image_key: str  # the picture's content hash
    premise: str | None
    hypothesis: str

    @property
    def key(self) -> str:
        text = json.dumps([self.image_key, self.premise or "", self.hypothesis], ensure_ascii=False)
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def image_digest(image: bytes | str) -> str:
    """A picture's content hash, as the teacher cache keys rows by it."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _weights_files(folder: Path) -> list[Path]:
    names = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "config.json",
             "adapter_config.json", "configuration.json")
    return sorted({p for pattern in names for p in folder.glob(pattern) if p.is_file()})


def teacher_identity(bundle: ModelBundle) -> dict:
    """Which teacher answered: its folders' weight and config files, and the preprocessing it scores with."""
    folders = [bundle.base_dir, *([bundle.adapter_dir] if bundle.adapter_dir else [])]
    files = {str(p.resolve()): {k: v for k, v in file_identity(p).items() if k != "path"}
             for folder in folders for p in _weights_files(folder)}
    identity = {"source": bundle.source, "files": files, "processor": bundle.processor.config.to_dict()}
    return json.loads(json.dumps(identity))  # as the cache file holds it (tuples as lists), to compare equal


class TeacherCache:
    """OUTPUT_DIR/teacher_probabilities.json: {"format", "teacher": identity, "rows": {row key: 3 log-probs}}."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity
        self.rows: dict[str, list[float]] = {}
        self.reused = self.scored = 0
        saved = self._read()
        if saved is not None and saved.get("teacher") == identity:
            self.rows = saved.get("rows", {})
        elif saved is not None:
            print(f"{path}: made by another teacher (or the same one changed since); scoring again")

    def _read(self) -> dict | None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VeloraError(f"{self.path}: unreadable ({e}); velora does not replace it: move it away") from None
        if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT:
            raise VeloraError(f"{self.path}: not a teacher cache written by velora; velora does not replace it: "
                              "move it away or choose another --output_dir")
        return saved

    def save(self) -> None:
        write_json_atomic(self.path, {"format": CACHE_FORMAT, "teacher": self.identity, "rows": self.rows})

    def missing(self, rows: Sequence[Row]) -> list[Row]:
        """The rows not cached yet, each once."""
        return list({row.key: row for row in rows if row.key not in self.rows}.values())

    def fill(self, rows: Sequence[Row], scorer: Callable[[], object], batch_size: int,
             load: Callable[[Row], bytes | str] = lambda row: row.image) -> None:
        """Score the rows not cached yet with the Predictor `scorer()` returns (called only when some are
        missing; `load(row)` gives a row's picture), saving the cache as it goes."""
        todo = self.missing(rows)
        self.reused = len({row.key for row in rows}) - len(todo)
        if not todo:
            print(f"Teacher: all {self.reused} rows' answers read from {self.path}")
            return
        print(f"Teacher: scoring {len(todo)} rows once ({self.reused} read from {self.path.name})")
        predictor = scorer()
        bar = tqdm(total=len(todo), desc="teacher", unit="ex")
        for start in range(0, len(todo), SAVE_EVERY):
            chunk = todo[start:start + SAVE_EVERY]
            probs = predictor.probabilities([load(r) for r in chunk], [r.premise for r in chunk],
                                            [r.hypothesis for r in chunk], batch_size=batch_size)
            log_probs = probs.double().log().clamp(min=MIN_LOG_PROB).float()
            self.rows.update((row.key, values) for row, values in zip(chunk, log_probs.tolist()))
            self.scored += len(chunk)
            self.save()
            bar.update(len(chunk))
        bar.close()

    def log_probs(self, rows: Sequence[Row]) -> torch.Tensor:
        """(N, 3) teacher log-probabilities in LABELS order."""
        return torch.tensor([self.rows[row.key] for row in rows], dtype=torch.float32)
