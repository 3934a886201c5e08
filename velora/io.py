"""How velora writes: one policy for every file and folder a command produces (convert, train, eval, mine, merge,
export).

- A file appears whole or not at all: written beside its target, synced, then renamed over it (`write_atomic`).
- A folder appears whole or not at all: built in a hidden `.NAME.velora-tmp-PID-XXXX` folder beside it, then swapped
  in (`staged_dir`); staging folders left by a killed run are removed by the next run that stages the same output,
  and only when the process that made them is gone.
- Nothing is overwritten that velora did not write: an existing output file needs `overwrite`; an existing
  non-empty output folder must be velora's own kind of output (the caller's `owned` predicate) and `overwrite`; an
  output folder that is, or lies inside, one of the command's inputs is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from velora.errors import VeloraError

STAGING_MARK = ".velora-tmp-"


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
            raise VeloraError(f"{flag} {path}: holds files that velora did not write as a {what}; choose a new or "
                              "empty folder")
        if not overwrite:
            raise VeloraError(f"{flag} {path}: already holds a {what}; pass --overwrite to replace it, or choose a "
                              "new folder")
    return path


def _owner_alive(staging: Path) -> bool:
    """Whether the process named in a staging folder's name still runs (then the folder is not stale)."""
    pid = staging.name.split(STAGING_MARK, 1)[-1].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove `.OUTPUT.velora-tmp-*` folders beside `output` whose process is gone (a run killed mid-write)."""
    removed = []
    if not output.parent.is_dir():
        return removed
    for staging in output.parent.glob(f".{output.name}{STAGING_MARK}*"):
        if staging.is_dir() and not _owner_alive(staging):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


@contextlib.contextmanager
def staged_dir(output: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to build `output` in; when the block succeeds it replaces `output` in one rename (an
    existing `output` is moved aside first, then deleted). On an error nothing at `output` changes."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}{STAGING_MARK}{os.getpid()}-", dir=output.parent))
    try:
        staged = work / "new"
        staged.mkdir()
        yield staged
        if output.exists():
            os.replace(output, work / "previous")
        os.replace(staged, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
