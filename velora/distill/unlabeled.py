"""`--unlabeled_file`: rows without labels (image_path, premise, hypothesis; the layouts `velora convert` reads) that
the teacher labels for the student. Every row is read and checked as `velora convert` would (images located under
the file's folder or --image_root, decoded within the limits); a bad row is left out with its line and field named,
never silently, and never stops the run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from velora.convert.image_checks import resolve_image_path
from velora.convert.issues import RowIssue
from velora.convert.reading import open_input
from velora.convert.rows import parse_row
from velora.distill.teacher import Row
from velora.errors import VeloraError
from velora.images import DEFAULT_LIMITS, ImageError, ImageLimits, load_image, read_image_file
from velora.ofa.processor import OFAProcessor, TextError
from velora.predict.inputs import REQUIRED


@dataclass
class UnlabeledRows:
    path: Path
    rows: list[Row] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)  # each row's prompt, encoded by the student's processor
    dropped: list[str] = field(default_factory=list)  # "line N, field: reason" per row left out
    labels_ignored: bool = False  # the file had a label column (its labels are not used as gold)

    def summary(self) -> str:
        text = f"{self.path}: {len(self.rows)} unlabelled rows for the teacher to label"
        if self.dropped:
            text += (f"; {len(self.dropped)} left out (first: {self.dropped[0]}); `velora validate {self.path}` "
                     "lists every reason")
        if self.labels_ignored:
            text += ("; its label column is not used (to train on those labels, convert the file and pass it as "
                     "--dataset_name)")
        return text


def _image(image_path: str, line: int, root: Path, cwd: Path | None, allow_outside: bool, limits: ImageLimits,
           seen: dict[str, tuple[str, str] | str]) -> tuple[str, str]:
    """(the image file, its content hash) or ValueError naming the line and the problem; each path read once."""
    if image_path not in seen:
        file, _, error = resolve_image_path(image_path, root, cwd, allow_outside=allow_outside)
        try:
            if error is not None:
                raise error
            data = read_image_file(file, limits)
            load_image(data, limits=limits)  # decodes within the limits, or says why not
            seen[image_path] = (str(file), hashlib.blake2b(data, digest_size=16).hexdigest())
        except ImageError as e:
            seen[image_path] = f"line {line}, image_path: {e}"
    found = seen[image_path]
    if isinstance(found, str):
        raise ValueError(found)
    return found


def read_unlabeled(path: str | os.PathLike, processor: OFAProcessor, *, image_root: str | os.PathLike | None = None,
                   allow_outside_paths: bool = False, limits: ImageLimits = DEFAULT_LIMITS) -> UnlabeledRows:
    """Every usable row of `path` as a teacher Row, with its prompt encoded by `processor` (the student's);
    VeloraError for a file-level problem (missing file or columns, not UTF-8) or a file with no usable row."""
    reader = open_input(path, REQUIRED)
    root = Path(image_root) if image_root else reader.path.parent
    if not root.is_dir():
        raise VeloraError(f"--image_root {root}: not a directory")
    cwd = None if image_root or os.path.abspath(Path.cwd()) == os.path.abspath(root) else Path.cwd()
    out = UnlabeledRows(reader.path)
    seen: dict[str, tuple[str, str] | str] = {}
    for item in reader:
        if isinstance(item, RowIssue):
            out.dropped.append(f"line {item.line}, {item.field}: {item.reason}")
            continue
        record, issues = parse_row(item)
        issues = [i for i in issues if i.field != "label"]
        out.labels_ignored |= record.label is not None
        if issues:
            out.dropped.append(f"line {record.line}, {issues[0].field}: {issues[0].reason}")
            continue
        try:
            prompt = processor.encode_text(record.hypothesis, record.premise)
            file, key = _image(record.image_path, record.line, root, cwd, allow_outside_paths, limits, seen)
        except TextError as e:
            out.dropped.append(f"line {record.line}, {e}")
            continue
        except ValueError as e:
            out.dropped.append(str(e))
            continue
        out.rows.append(Row(file, key, record.premise, record.hypothesis))
        out.prompts.append(prompt)
    if not out.rows:
        first = f" (first problem: {out.dropped[0]})" if out.dropped else ""
        raise VeloraError(f"--unlabeled_file {out.path}: no usable row{first}")
    return out
