"""Where each row's image is, and whether it decodes: `resolve_image_path` (path rules: the root, symlinks, the
working directory), `check_image` (one bounded read, a full decode through velora.images, the sha256 of the bytes),
and `check_images`, which runs both for every distinct image_path in worker processes."""

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

from velora.images import DEFAULT_LIMITS, ImageError, ImageLimits, load_image_and_format, read_image_file


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


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _refused(image_path: str, root: str) -> ImageError:
    """The same words whether or not the path exists: nothing outside the root is looked at."""
    return ImageError(f"{image_path!r} leads outside {root} (the input file's folder, or --image_root); refused "
                      "without reading it - move the image there, or pass --allow_outside_paths",
                      "path_outside_root")


def _not_found(image_path: str, raw: Path, root: Path, cwd: Path | None) -> ImageError:
    """Names the place the user most likely meant: the working directory for the guide's layout (a CSV in data/
    listing ./data/x.jpg), else the root."""
    places = [("", root)] + ([("the working directory ", cwd)] if cwd is not None else [])
    if raw.is_absolute():
        return ImageError(f"{raw}: image file not found{_case_hint(raw)}", "image_not_found")
    if cwd is not None and raw.parts[:1] == (root.name,):
        places.reverse()
    (kind, first), others = places[0], places[1:]
    shown = Path(os.path.abspath(first / raw))
    also = "".join(f"; also looked in {kind}{os.path.abspath(where)}" for kind, where in others)
    return ImageError(f"{shown}: image file not found (relative to {kind}{os.path.abspath(first)}{also})"
                      f"{_case_hint(shown)}", "image_not_found")


def resolve_image_path(
    image_path: str, root: Path, cwd: Path | None = None, *, snli: bool = False, allow_outside: bool = False
) -> tuple[Path | None, list[tuple[str, str]], ImageError | None]:
    """Where a row's image is. A relative path starts from `root` (the input file's folder, or --image_root); when
    `cwd` is given, also from the working directory (the guide writes ./data/x.jpg next to a CSV inside data/).
    Symlinks are followed; a path that leads outside `root` is refused before anything is looked up there, unless
    `allow_outside` (then it is flagged).

    Returns (the file or None, flags as (code, reason), the error: not found, or outside the root)."""
    raw = Path(os.path.expanduser(image_path))
    real_root = os.path.realpath(root)
    # (where a relative path starts: None for an absolute one; whether that is the working directory)
    starts = [(None, False)] if raw.is_absolute() else [(root, False)] + ([(cwd, True)] if cwd is not None else [])
    refused = False
    for start, from_cwd in starts:
        for candidate in _variants(raw, snli):
            full = candidate if start is None else start / candidate
            outside = not _inside(os.path.realpath(full), real_root)
            if outside and not allow_outside:
                refused |= not from_cwd  # the path as written leads out; from the cwd it is just not there
                continue
            if not os.path.lexists(full):
                continue
            full = Path(os.path.abspath(full))
            flags = []
            if outside and from_cwd:
                flags.append(("found_in_working_directory",
                              f"{image_path!r} is not in {root}; using {full} (relative to the working directory)"))
            elif outside and start is not None:
                flags.append(("outside_image_root", f"{full} is outside {real_root}; allowed "
                              "(--allow_outside_paths), and its bytes are embedded in the dataset"))
            return full, flags, None
    if refused:
        return None, [], _refused(image_path, real_root)
    return None, [], _not_found(image_path, raw, root, cwd)


@dataclass
class ImageCheck:
    path: str  # as given: the row's image_path (locate_and_check) or a file path (check_image)
    error: str | None = None
    code: str | None = None
    sha256: str | None = None
    format: str | None = None
    file: str | None = None  # where the image was found
    flags: list[tuple[str, str]] = field(default_factory=list)


def check_image(path: str, limits: ImageLimits = DEFAULT_LIMITS) -> ImageCheck:
    """Read the file once (a regular file, within the size and time limits), decode it completely (velora.images)
    and fingerprint its bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's EXIF chatter; we report our own
        try:
            data = read_image_file(path, limits)
            source = io.BytesIO(data)
            source.name = path  # errors name the file
            _, file_format = load_image_and_format(source, limits=limits)
        except ImageError as e:
            return ImageCheck(path, str(e), e.code or "bad_image")
        except Exception as e:  # a Pillow plugin bug...: still this row's problem, not a crash
            return ImageCheck(path, f"{path}: cannot be read ({type(e).__name__}: {e})", "bad_image")
    return ImageCheck(path, sha256=hashlib.sha256(data).hexdigest(), format=file_format)


def locate_and_check(image_path: str, root: str, cwd: str | None = None, snli: bool = False,
                     limits: ImageLimits = DEFAULT_LIMITS, allow_outside: bool = False) -> ImageCheck:
    """resolve_image_path + check_image for one image_path as written in the input (one worker task)."""
    file, flags, error = resolve_image_path(image_path, Path(root), Path(cwd) if cwd else None, snli=snli,
                                            allow_outside=allow_outside)
    if error:
        return ImageCheck(image_path, str(error), error.code)
    check = check_image(str(file), limits)
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
    root: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    snli: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
    allow_outside: bool = False,
    num_proc: int = 1,
    progress: bool = False,
) -> dict[str, ImageCheck]:
    """locate_and_check for every distinct image_path, in `num_proc` worker processes, with a progress bar on stderr.
    If the workers cannot start, every image is checked in this process instead."""
    jobs = [(p, str(root), str(cwd) if cwd else None, snli, limits, allow_outside) for p in dict.fromkeys(image_paths)]
    if num_proc > 1 and len(jobs) > 1:
        try:
            return {check.path: check for check in _in_workers(jobs, num_proc, progress)}
        except BrokenProcessPool:
            warnings.warn("image-check worker processes failed to start; checking images in this process")
    bar = tqdm(jobs, desc="Checking images", unit="img", disable=not progress or not jobs)
    return {job[0]: locate_and_check(*job) for job in bar}
