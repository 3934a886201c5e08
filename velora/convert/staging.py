"""The hidden folder `.NAME.velora-tmp-XXXXXXXX` beside a dataset being written: the dataset is built there and
renamed into place only when complete. A run holds a lock on the folder's marker file while it lives, so the next
run can tell a folder left by a run that died (kill -9, power loss) from one in use, and removes only the former;
a folder without velora's marker is never touched."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; left-over folders are then not cleaned up
    fcntl = None

MARKER = "velora-staging.lock"


def _prefix(output: Path) -> str:
    return f".{output.name}.velora-tmp-"


def _lock(path: Path):
    """An open file holding an exclusive lock on `path`, or None when another process holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def remove_stale(output: Path) -> list[Path]:
    """Remove the staging folders of `output` whose run has died; returns them."""
    if fcntl is None:
        return []
    removed = []
    for folder in map(Path, glob.glob(glob.escape(str(output.parent / _prefix(output))) + "*")):
        marker = folder / MARKER
        if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
            continue  # not velora's
        handle = _lock(marker)
        if handle is None:
            continue  # a live run
        with handle:
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def staging_folder(output: Path) -> Iterator[Path]:
    """A new staging folder beside `output`, locked while the caller runs and removed afterwards (also on error);
    stale ones of earlier runs are removed first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(output)
    work = Path(tempfile.mkdtemp(prefix=_prefix(output), dir=output.parent))
    handle = None
    try:
        if fcntl is not None:  # lock under another name, then rename: a cleaner never sees it unlocked
            handle = _lock(work / f"{MARKER}.new")
            handle.write(json.dumps({"pid": os.getpid()}) + "\n")
            handle.flush()
            os.replace(work / f"{MARKER}.new", work / MARKER)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if handle is not None:
            handle.close()
