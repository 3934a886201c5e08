"""Where each row's image is, and whether it decodes: `resolve_image_path` (pure path logic plus existence checks),
`check_image` (a full decode through velora.images, and the sha256 of the bytes), and `check_images`, which runs
both for every distinct image_path in worker processes."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import unicodedata
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm
from tqdm.contrib.concurrent import process_map

from velora.images import DEFAULT_MAX_PIXELS, ImageError, load_image_and_format


def _variants(path: Path, snli: bool) -> Iterator[Path]:
    yield path
    text = str(path)
    if "\\" in text:
        yield Path(text.replace("\\", "/"))  # written on Windows
    for form in ("NFC", "NFD"):  # macOS stores names decomposed
        other = unicodedata.normalize(form, text)
        if other != text:
            yield Path(other)
    if snli and not path.suffix:
        yield path.with_suffix(".jpg")


def _case_hint(path: Path) -> str:
    try:
        siblings = os.listdir(path.parent)
    except OSError:
        return ""
    matches = [s for s in siblings if s.casefold() == path.name.casefold()]
    return f"; a file named {matches[0]!r} exists (file names are case-sensitive)" if matches else ""


def resolve_image_path(
    image_path: str, base: Path, cwd: Path | None = None, *, snli: bool = False
) -> tuple[Path | None, list[tuple[str, str]], str | None]:
    """Where a row's image is: relative paths are taken from `base` (the CSV's folder or --image_root), then, when
    `cwd` is given, from the working directory (the guide writes ./data/x.jpg next to a CSV inside data/).

    Returns (file or None, flags as (code, reason), error when not found)."""
    raw = Path(os.path.expanduser(image_path))
    if raw.is_absolute():
        bases: list[Path | None] = [None]
    else:
        bases = [base] + ([cwd] if cwd is not None and os.path.abspath(cwd) != os.path.abspath(base) else [])
    for where in bases:
        for candidate in _variants(raw, snli):
            full = candidate if where is None else where / candidate
            if not os.path.lexists(full):
                continue
            full = Path(os.path.abspath(full))
            flags = []
            if where is not None and where is not base:
                flags.append(("found_in_working_directory",
                              f"{image_path!r} is not in {base}; using {full} (relative to the working directory)"))
            elif where is not None:
                root = os.path.abspath(base)
                if os.path.commonpath([root, str(full)]) != root:
                    flags.append(("outside_image_root",
                                  f"{full} is outside {root}; allowed, and its bytes are embedded in the dataset"))
            return full, flags, None
    first = raw if bases[0] is None else Path(os.path.abspath(bases[0] / raw))
    looked = "" if bases[0] is None else f" (relative to {os.path.abspath(bases[0])}" + (
        f" and to the working directory {bases[1]})" if len(bases) > 1 else ")")
    return None, [], f"{first}: image file not found{looked}{_case_hint(first)}"


@dataclass
class ImageCheck:
    path: str  # as given: the row's image_path (locate_and_check) or a file path (check_image)
    error: str | None = None
    code: str | None = None
    sha256: str | None = None
    format: str | None = None
    file: str | None = None  # where the image was found
    flags: list[tuple[str, str]] = field(default_factory=list)


def check_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Decode the image completely (velora.images) and fingerprint its bytes; the file is read once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning / EXIF chatter; we report our own
        try:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            if not data:  # missing, a directory, empty, unreadable: velora.images' error says which
                load_image_and_format(path, max_pixels=max_pixels)
                raise ImageError(f"{path}: cannot be read", "bad_image")
            source = io.BytesIO(data)
            source.name = path  # errors name the file
            _, file_format = load_image_and_format(source, max_pixels=max_pixels)
        except ImageError as e:
            return ImageCheck(path, str(e), e.code or "bad_image")
        except Exception as e:  # permissions, a Pillow plugin bug...: still this row's problem, not a crash
            return ImageCheck(path, f"{path}: cannot be read ({type(e).__name__}: {e})", "bad_image")
    return ImageCheck(path, sha256=hashlib.sha256(data).hexdigest(), format=file_format)


def locate_and_check(
    image_path: str, base: str, cwd: str | None = None, snli: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageCheck:
    """resolve_image_path + check_image for one image_path as written in the input (one worker task)."""
    file, flags, error = resolve_image_path(image_path, Path(base), Path(cwd) if cwd else None, snli=snli)
    if error:
        return ImageCheck(image_path, error, "image_not_found")
    check = check_image(str(file), max_pixels)
    check.path, check.file, check.flags = image_path, str(file), flags
    return check


def _check_chunk(jobs: list[tuple]) -> list[ImageCheck]:
    return [locate_and_check(*job) for job in jobs]


class _WorkerBar(tqdm):
    """process_map hands the bar's class lock to every worker: it must come from the workers' start method."""


def _in_workers(jobs: list[tuple], num_proc: int, progress: bool) -> list[ImageCheck]:
    """The jobs in `num_proc` processes, in chunks (one task per image costs more in messaging than the check).

    Workers start with forkserver (spawn where that is missing), never fork: the caller may hold threads.
    ProcessPoolExecutor raises BrokenProcessPool when they cannot start (e.g. a script read from stdin cannot
    be re-imported)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    _WorkerBar.set_lock(context.RLock())
    size = max(1, min(64, len(jobs) // (num_proc * 8)))
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    # tqdm counts finished tasks, so the bar counts chunks of `size` images
    done = process_map(_check_chunk, chunks, max_workers=min(num_proc, len(jobs)), mp_context=context,
                       tqdm_class=_WorkerBar, desc=f"Checking images ({size} per batch)", unit="batch",
                       disable=not progress)
    return [check for chunk in done for check in chunk]


def check_images(
    image_paths: Sequence[str],
    *,
    base: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    snli: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_proc: int = 1,
    progress: bool = False,
) -> dict[str, ImageCheck]:
    """locate_and_check for every distinct image_path, in `num_proc` worker processes, with a progress bar on stderr.
    If the workers cannot start, every image is checked in this process instead."""
    jobs = [(p, str(base), str(cwd) if cwd else None, snli, max_pixels) for p in dict.fromkeys(image_paths)]
    if num_proc > 1 and len(jobs) > 1:
        try:
            return {check.path: check for check in _in_workers(jobs, num_proc, progress)}
        except BrokenProcessPool:
            warnings.warn("image-check worker processes failed to start; checking images in this process")
    bar = tqdm(jobs, desc="Checking images", unit="img", disable=not progress or not jobs)
    return {job[0]: locate_and_check(*job) for job in bar}
