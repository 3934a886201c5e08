"""The progress folder of `velora predict --input_file IN --output_file OUT`: `OUT.progress/` beside the output.

    state.json            what the run is: IN's identity (path, size, mtime, a hash of its first 64 KiB) and every
                          setting that changes a result (model, dtype, image options, chunk size)
    chunk-00000042.jsonl  one per finished chunk, a line per row: its probabilities, or why it failed; each file
                          appears whole or not at all (written beside, synced, renamed)
    lock                  held while a run uses the folder (a second run on the same output is refused)

A run killed at any point leaves finished chunks (and at most half-written temporary files, removed on resume):
the same command scores only the missing chunks. Another input or other settings are refused, naming what
differs. The output is then merged inside the folder and renamed over OUT in one step, and the folder removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from velora.errors import VeloraError
from velora.io import write_atomic, write_json_atomic

KIND = "velora predict --input_file progress"
STATE, LOCK = "state.json", "lock"
CHUNK = re.compile(r"chunk-(\d{8})\.jsonl")


def progress_folder(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".progress")


def _differences(before: dict, now: dict) -> list[str]:
    """Names of what changed between two run identities, for the refusal message."""
    if before.get("input", {}).get("path") != now["input"]["path"]:
        changed = [f"another input file (was {before.get('input', {}).get('path')})"]
    else:
        changed = [f"the input file's {k}" for k in ("size", "mtime_ns", "head_blake2b")
                   if before["input"].get(k) != now["input"][k]]
    settings = before.get("settings", {})
    return changed + [name for name in now["settings"] if settings.get(name) != now["settings"][name]]


class Progress:
    """The chunk files of one run (every process of a torchrun job writes its own chunks here)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock: int | None = None

    def __getstate__(self) -> dict:  # sent to the other processes of a torchrun job: the lock stays here
        return {"folder": self.folder, "_lock": None}

    def chunk_path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:08d}.jsonl"

    def done(self) -> set[int]:
        return {int(m.group(1)) for name in os.listdir(self.folder) if (m := CHUNK.fullmatch(name))}

    def write_chunk(self, chunk: int, rows: list[dict[str, Any]]) -> None:
        write_atomic(self.chunk_path(chunk), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def read_chunk(self, chunk: int) -> list[dict[str, Any]]:
        with self.chunk_path(chunk).open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    @property
    def state(self) -> dict | None:
        try:
            state = json.loads((self.folder / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("kind") == KIND else None

    def merge_path(self, output: Path) -> Path:
        """Where the output is written before it is renamed into place."""
        return self.folder / f"merging{output.suffix}"

    def lock(self) -> None:
        """Hold the folder for this process until it exits (the kernel lets go of a killed process's lock)."""
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VeloraError(f"{self.folder}: another velora predict is writing this output now; wait for it, or "
                              "choose another --output_file") from None
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def start_fresh(self, identity: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock()
        write_json_atomic(self.folder / STATE, {"kind": KIND, **identity})

    def clean_partial_files(self) -> None:
        """Temporary files of a write that a kill interrupted (write_atomic names them .NAME.XXXX.tmp)."""
        for name in os.listdir(self.folder):
            if name.startswith(".") and name.endswith(".tmp") or name.startswith("merging"):
                (self.folder / name).unlink(missing_ok=True)

    def finish(self, output: Path) -> None:
        """Rename the merged output over `output` (recording it first, so that a kill right after the rename is
        recognised: the output is this run's), then remove the folder."""
        merged = self.merge_path(output)
        info = merged.stat()
        state = self.state or {}
        write_json_atomic(self.folder / STATE, {**state, "finished": [info.st_size, info.st_mtime_ns]})
        os.replace(merged, output)
        self.unlock()
        shutil.rmtree(self.folder, ignore_errors=True)

    def wrote(self, output: Path) -> bool:
        """Whether `output` is the file this run renamed into place (killed before the folder was removed)."""
        finished = (self.state or {}).get("finished")
        with contextlib.suppress(OSError):
            info = output.stat()
            return finished == [info.st_size, info.st_mtime_ns]
        return False


def open_progress(output: Path, identity: dict, overwrite: bool) -> tuple[Progress, set[int]]:
    """The run's progress folder: resumed when it holds this run (same `identity`), else started afresh.

    Returns (the folder, its finished chunks). Refused: a folder velora did not write; another run's folder
    without `overwrite`."""
    identity = json.loads(json.dumps(identity))  # as state.json holds it (tuples are lists there)
    progress = Progress(progress_folder(output))
    if not progress.folder.exists():
        progress.start_fresh(identity)
        return progress, set()
    if not progress.folder.is_dir():
        raise VeloraError(f"{progress.folder}: is a file; velora predict keeps its progress there: move it away")
    state = progress.state
    if state is None and any(name != LOCK and not name.startswith(".") for name in os.listdir(progress.folder)):
        raise VeloraError(f"{progress.folder}: not a progress folder of velora predict (no valid {STATE}); move it "
                          "away or choose another --output_file")
    if state is not None and {k: state.get(k) for k in identity} != identity:
        if not overwrite:
            changed = ", ".join(_differences(state, identity))
            raise VeloraError(f"{progress.folder} holds an unfinished run that differs ({changed}); rerun the "
                              "command that started it to finish it, or pass --overwrite to start over")
        progress.lock()
        progress.unlock()
        shutil.rmtree(progress.folder)
    if state is None or not progress.folder.exists():  # new, removed above, or killed before state.json was whole
        progress.start_fresh(identity)
        return progress, set()
    progress.lock()
    progress.clean_partial_files()
    return progress, progress.done()
