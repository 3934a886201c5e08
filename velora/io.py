"""How velora writes: one policy for every file and folder a command produces (convert, train, eval, mine, merge,
export).

- A file appears whole or not at all: written beside its target, synced, then renamed over it (`write_atomic`).
- A folder appears whole or not at all: built in a hidden `.NAME.velora-tmp-XXXX` folder beside it, then swapped
  in (`staged_dir`); the run holds a lock on a marker file in it while it lives, so the next run that stages the
  same output removes folders left by a run that died (kill -9, power loss), never one in use or one without the
  marker.
- Nothing is overwritten that velora did not write: an existing output file needs `overwrite`; an existing
  non-empty output folder must be velora's own kind of output (the caller's `owned` predicate) and `overwrite`; an
  output folder that is, or lies inside, one of the command's inputs is refused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from velora.errors import VeloraError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders left by killed runs are then not cleaned up
    fcntl = None

STAGING_MARK = ".velora-tmp-"
STAGING_MARKER = "velora-staging.lock"  # locked by the run that owns a staging folder


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n")


def check_output_file(path: str | os.PathLike, flag: str, *, overwrite: bool = False,
                      suffixes: Sequence[str] = ()) -> Path:
    """`path` as an output file: not a folder, not an existing file unless `overwrite`, with one of `suffixes`."""
    path = Path(path)
    if path.is_dir():
        raise VeloraError(f"{flag} {path}: is a directory; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise VeloraError(f"{flag} {path}: give a file name ending in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise VeloraError(f"{flag} {path}: already exists; pass --overwrite to replace it, or choose a new name")
    return path


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it (symlinks resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_dir(path: str | os.PathLike, flag: str, *, overwrite: bool = False,
                     owned: Callable[[Path], bool] = lambda p: False, what: str = "output",
                     inputs: Sequence[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """`path` as an output folder. Refused: a file; a folder that is or lies inside one of `inputs` ((name, path)
    pairs such as ("base model", DIR)); a non-empty folder that `owned` does not recognise as velora's `what`; one
    that it does, unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VeloraError(f"{flag} {path}: is a file; choose a folder")
    for name, folder in inputs:
        if folder is not None and Path(folder).exists() and is_within(path, folder):
            raise VeloraError(f"{flag} {path}: is or lies inside the {name} ({folder}); choose a new folder")
    if path.is_dir() and any(path.iterdir()):
        if not owned(path):
            raise VeloraError(f"{flag} {path}: holds other files (not a {what} velora wrote); choose a new or empty "
                              "folder")
        if not overwrite:
            raise VeloraError(f"{flag} {path}: already holds a {what}; pass --overwrite to replace it, or choose a "
                              "new folder")
    return path


def _lock(path: Path):
    """An open file holding an exclusive lock on `path`, or None when another process holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _staging_prefix(output: Path) -> str:
    return f".{output.name}{STAGING_MARK}"


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove the staging folders of `output` whose run has died (kill -9, power loss): velora's marker file in them
    is no longer locked. A folder without the marker is not velora's and is never touched."""
    if fcntl is None:
        return []
    removed = []
    for folder in map(Path, glob.glob(glob.escape(str(output.parent / _staging_prefix(output))) + "*")):
        marker = folder / STAGING_MARKER
        if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
            continue
        handle = _lock(marker)
        if handle is None:
            continue  # a live run
        with handle:
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def staging_folder(output: str | os.PathLike) -> Iterator[Path]:
    """A new hidden folder beside `output` to work in, locked while the block runs and removed afterwards (also on
    error); stale ones of earlier runs are removed first."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output)
    work = Path(tempfile.mkdtemp(prefix=_staging_prefix(output), dir=output.parent))
    handle = None
    try:
        if fcntl is not None:  # lock under another name, then rename: a cleaner never sees it unlocked
            handle = _lock(work / f"{STAGING_MARKER}.new")
            handle.write(json.dumps({"pid": os.getpid()}) + "\n")
            handle.flush()
            os.replace(work / f"{STAGING_MARKER}.new", work / STAGING_MARKER)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if handle is not None:
            handle.close()


def publish(staged: Path, output: Path) -> None:
    """Swap the finished folder `staged` (inside a staging folder) in at `output`: an existing `output` is moved
    aside into the staging folder first (and goes with it)."""
    if output.exists():
        os.replace(output, staged.parent / "previous")
    os.replace(staged, output)


@contextlib.contextmanager
def staged_dir(output: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to build `output` in; when the block succeeds it replaces `output` in one rename. On an
    error nothing at `output` changes."""
    output = Path(output)
    with staging_folder(output) as work:
        staged = work / "new"
        staged.mkdir()
        yield staged
        publish(staged, output)
