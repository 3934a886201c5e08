"""The decisions file of a review: one JSON event per line, appended and synced before the reviewer sees it saved.

    {"v": 1, "id": "6f1c...", "example": "17", "action": "relabel", "label": "neutral", "reviewer": "ana",
     "time": "2026-11-25T17:03:12Z", "seen": "a3d0..."}

Actions: keep, relabel (label), edit (premise, hypothesis, and optionally label), drop, skip, and undo (`undoes`: the
id of the decision it takes back). Nothing is ever rewritten: an example's decision is its latest one not undone
(last writer wins), so two tabs or two reviewers never lose an event, and undo is an event of its own.

Durability and sharing: every append takes an exclusive `flock` on the file, first reads what other processes
appended since (so ids stay unique and `seen` conflicts are noticed), writes the line in one `write`, then
`fsync`s. A line cut off by a crash is ended with a newline before the next append and skipped when read (counted
in `damaged_lines`), so one torn write never swallows the next event.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: one process at a time (the in-process lock still serialises tabs)
    fcntl = None

from velora.errors import VeloraError
from velora.labels import LABELS, normalize_label

VERSION = 1
DECIDING = ("keep", "relabel", "edit", "drop")  # an example with one of these is done
ACTIONS = (*DECIDING, "skip", "undo")
MAX_TEXT = 2_000  # characters of an edited premise or hypothesis (the model reads its first 80 words)
MAX_NAME = 64  # characters of a reviewer's name
MAX_LINE = 16_384  # bytes of one stored event; longer lines are damaged ones
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def decisions_path(source: str | os.PathLike) -> Path:
    """Where the decisions of a review over `source` go: beside it, `NAME.decisions.jsonl`."""
    source = Path(source)
    return source.with_name(f"{source.stem if source.is_file() else source.name}.decisions.jsonl")


@dataclass
class Decision:
    """One event of the file, checked."""

    id: str
    example: str
    action: str
    label: str | None = None
    premise: str | None = None
    hypothesis: str | None = None
    undoes: str | None = None
    reviewer: str = ""
    time: str = ""
    seen: str | None = None  # the id of the decision the reviewer was looking at when deciding (None: none)

    def to_dict(self) -> dict[str, Any]:
        return {"v": VERSION, **{k: v for k, v in self.__dict__.items() if v not in (None, "")}}

    @property
    def done(self) -> bool:
        return self.action in DECIDING


def check_decision(values: dict[str, Any]) -> Decision:
    """A Decision from untrusted values (the page's JSON, a line of the file); VeloraError naming the field."""
    action = values.get("action")
    if action not in ACTIONS:
        raise VeloraError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    decision = Decision(id=str(values.get("id") or uuid.uuid4().hex), example=str(values.get("example") or ""),
                        action=action, reviewer=_text(values, "reviewer", MAX_NAME) or "",
                        time=str(values.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                        seen=values.get("seen") or None)
    if not _ID.match(decision.id):
        raise VeloraError("id: 8 to 64 letters, digits, - or _")
    if action == "undo":
        decision.undoes = str(values.get("undoes") or "")
        if not _ID.match(decision.undoes):
            raise VeloraError("undoes: the id of the decision to undo")
        return decision
    if not decision.example or len(decision.example) > MAX_NAME:
        raise VeloraError("example: the id of the example decided")
    if action in ("relabel", "edit") and values.get("label") is not None:
        decision.label = normalize_label(values["label"])
        if decision.label is None:
            raise VeloraError(f"label: {str(values['label'])[:40]!r} is not one of {', '.join(LABELS)}")
    if action == "relabel" and decision.label is None:
        raise VeloraError("label: relabel needs the new label")
    if action == "edit":
        decision.premise = _text(values, "premise", MAX_TEXT)
        decision.hypothesis = _text(values, "hypothesis", MAX_TEXT)
        if decision.premise is None and decision.hypothesis is None:
            raise VeloraError("edit: give the new premise and/or hypothesis")
        if decision.hypothesis is not None and not decision.hypothesis:
            raise VeloraError("hypothesis: may not be empty")
    return decision


def _text(values: dict, name: str, limit: int) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise VeloraError(f"{name}: must be text")
    if len(value) > limit:
        raise VeloraError(f"{name}: {len(value):,} characters, over the limit of {limit:,}")
    return " ".join(value.split())  # as `velora convert` stores sentences: whitespace runs become one space


@dataclass
class ReviewState:
    """Every event read so far, replayed."""

    events: list[Decision] = field(default_factory=list)
    by_id: dict[str, Decision] = field(default_factory=dict)
    undone: set[str] = field(default_factory=set)
    damaged_lines: int = 0

    def add(self, event: Decision) -> None:
        self.events.append(event)
        self.by_id[event.id] = event
        if event.action == "undo":
            self.undone.add(event.undoes)

    def current(self) -> dict[str, Decision]:
        """Each example's decision in force: its latest event that is not undone (skips included)."""
        out: dict[str, Decision] = {}
        for event in self.events:
            if event.action != "undo" and event.id not in self.undone:
                out[event.example] = event
        return out  # an example whose latest decision was undone falls back to its previous one


class DecisionStore:
    """The decisions file of one review, shared safely by the threads of a server and by other processes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.state = ReviewState()
        self._offset = 0  # bytes of the file replayed so far (always at a line end)
        self._lock = threading.Lock()
        if self.path.exists() and not self.path.is_file():
            raise VeloraError(f"{self.path}: not a file; the decisions file must be a regular file")
        self.sync()

    def sync(self) -> ReviewState:
        """Read what was appended since the last call (by this or another process)."""
        with self._lock:
            self._read_new()
            return self.state

    def current(self) -> dict[str, Decision]:
        return self.sync().current()

    def append(self, values: dict[str, Any]) -> tuple[Decision, Decision | None]:
        """Check, write and fsync one decision. Returns (the stored decision, the example's decision that it
        replaced while the reviewer was looking at an older one, if any). The same id twice is stored once."""
        decision = check_decision(values)
        with self._lock, self._locked_file() as fd:
            self._read_new()
            if decision.id in self.state.by_id:
                return self.state.by_id[decision.id], None
            if decision.action == "undo":
                target = self.state.by_id.get(decision.undoes)
                if target is None or target.action == "undo":
                    raise VeloraError(f"undoes: no decision {decision.undoes} to undo")
                decision.example = target.example
            overtaken = self._overtaken(decision)
            size = os.fstat(fd).st_size
            prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            line = json.dumps(decision.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n"
            os.write(fd, prefix + line)
            os.fsync(fd)
            self._read_new()
            return decision, overtaken

    def _overtaken(self, decision: Decision) -> Decision | None:
        latest = self.state.current().get(decision.example)
        if latest is not None and decision.action != "undo" and latest.id != decision.seen:
            return latest
        return None

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[int]:
        new = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if new:  # the file's name must survive a crash too
                _fsync_dir(self.path.parent)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _read_new(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written (or cut off) waits for its newline
        for raw in data[:end].splitlines():
            if raw.strip():
                self._replay(raw)
        self._offset += end

    def _replay(self, raw: bytes) -> None:
        try:
            values = json.loads(raw) if len(raw) <= MAX_LINE else None
            event = check_decision(values) if isinstance(values, dict) else None
        except (ValueError, VeloraError):
            event = None
        if event is None or event.id in self.state.by_id:
            self.state.damaged_lines += event is None
            return
        self.state.add(event)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
