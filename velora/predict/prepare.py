"""The worker side of `velora predict --input_file`: rows -> encoded prompts and resized images, in
`torch.utils.data.DataLoader` worker processes, so that reading, decoding and resizing overlap the model.

Each worker reads the input itself and prepares the chunks dealt to it; a chunk goes out in batches of
`batch_size` rows, each with the images its rows look at (decoded once per batch, resized to the model's square,
uint8) and, per row, the prompt or the reason it cannot be scored. A bad row becomes an error, never an exception.

With --translate (a `detect` function given), a chunk starts with its ChunkTexts: the distinct (premise,
hypothesis) pairs that need translating, which the main process translates (velora.predict.translation); the rows
holding them come without a prompt, `waiting` for their English text.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from velora.convert.image_checks import resolve_image_path
from velora.convert.issues import RowIssue
from velora.convert.reading import InputReader
from velora.convert.rows import Record, parse_row
from velora.images import ImageError, ImageLimits, load_image
from velora.ofa.processor import OFAProcessor, TextError
from velora.predict.inputs import InputPlan, Item, chunks


@dataclass(frozen=True)
class ImageOptions:
    """Where rows' images are and what one may cost (as `velora convert` checks them)."""

    root: str  # relative paths start here, and may not leave it unless allow_outside
    cwd: str | None  # a second place to look (the guide's ./data/x.jpg next to a CSV in data/)
    snli: bool  # SNLI-VE ids: "123.jpg" may be written "123"
    allow_outside: bool
    limits: ImageLimits


Pair = tuple[str, str]  # (premise, hypothesis) as parsed; the premise may be ""


@dataclass
class ChunkTexts:
    """The pairs of a chunk's rows that need translating, sent before the chunk's batches."""

    chunk: int
    pairs: list[Pair]


def needs_translation(record: Record, detect: Callable[[str], bool]) -> bool:
    return any(detect(text) for text in (record.premise, record.hypothesis) if text)


class RowError(Exception):
    """Why one row cannot be scored: `code` for the summary, `message` naming the field for the output."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def __reduce__(self):  # sent from the worker processes
        return type(self), (self.code, self.message)


@dataclass
class PreparedBatch:
    chunk: int
    last: bool  # the chunk's final batch
    prompts: list[list[int] | None]  # per row: encoded prompt, None when it failed
    image_index: list[int]  # per row: its image in `pixels` (-1 when it failed)
    errors: list[RowError | None]
    pixels: torch.Tensor  # (U, S, S, 3) uint8, the distinct images of the batch's good rows
    waiting: list[Pair | None] | None = None  # with --translate: per row, the pair to translate (prompt None)

    def __len__(self) -> int:
        return len(self.prompts)


def _named(issue: RowIssue) -> str:
    """The issue's reason, starting with the field it is about."""
    return issue.reason if issue.reason.startswith(issue.field) else f"{issue.field}: {issue.reason}"


def encode_prompt(processor: OFAProcessor, premise: str | None, hypothesis: str) -> list[int]:
    try:
        return processor.encode_text(hypothesis, premise)
    except TextError as e:
        raise RowError(e.code, str(e)) from None


def keep(item):
    """The DataLoader's collate function: batches are made by the dataset."""
    return item


class PreparedRows(IterableDataset):
    """The batches of `chunk_ids` (this process's chunks, in order); worker w of n prepares chunk_ids[w::n]."""

    def __init__(self, plan: InputPlan, chunk_ids: Sequence[int], processor: OFAProcessor, images: ImageOptions,
                 batch_size: int, detect: Callable[[str], bool] | None = None):
        self.plan, self.chunk_ids, self.processor = plan, list(chunk_ids), processor
        self.images, self.batch_size = images, batch_size
        self.detect = detect  # --translate: which texts the translator translates (a module-level function)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = self.plan.open()
        for chunk, rows in chunks(reader, self.plan.chunk_size, set(self.chunk_ids[worker::workers])):
            if self.detect is not None:
                yield ChunkTexts(chunk, self.pairs_to_translate(reader, rows))
            for start in range(0, len(rows), self.batch_size):
                end = start + self.batch_size
                yield self.prepare(reader, chunk, rows[start:end], last=end >= len(rows))

    def pairs_to_translate(self, reader: InputReader, rows: list[Item]) -> list[Pair]:
        pairs: dict[Pair, None] = {}
        for item in rows:
            if not isinstance(item, RowIssue):
                record, issues = parse_row(reader.raw_row(*item))
                if all(i.field == "label" for i in issues) and needs_translation(record, self.detect):
                    pairs[(record.premise, record.hypothesis)] = None
        return list(pairs)

    def prepare(self, reader: InputReader, chunk: int, rows: list[Item], last: bool) -> PreparedBatch:
        prompts, image_index, errors, waiting = [], [], [], []
        seen: dict[str, int | RowError] = {}  # image_path -> its index in `arrays`, or why it failed
        arrays: list[np.ndarray] = []
        for item in rows:
            try:
                prompt, image, pair = self._row(reader, item, seen, arrays)
                error = None
            except RowError as e:
                prompt, image, pair, error = None, -1, None, e
            prompts.append(prompt)
            image_index.append(image)
            errors.append(error)
            waiting.append(pair)
        size = self.processor.config.image_size
        pixels = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, size, size, 3, dtype=torch.uint8)
        return PreparedBatch(chunk, last, prompts, image_index, errors, pixels,
                             waiting if self.detect is not None else None)

    def _row(self, reader: InputReader, item: Item, seen: dict, arrays: list
             ) -> tuple[list[int] | None, int, Pair | None]:
        """The row's prompt (None while its texts wait for translation: then the pair), and its image index;
        RowError naming the field when it cannot be scored."""
        if isinstance(item, RowIssue):
            raise RowError(item.code, f"line {item.line}: {item.reason}")
        record, issues = parse_row(reader.raw_row(*item))
        issues = [i for i in issues if i.field != "label"]  # a label is optional here
        if issues:
            raise RowError(issues[0].code, "; ".join(_named(i) for i in issues))
        pair = (record.premise, record.hypothesis)
        if self.detect is not None and needs_translation(record, self.detect):
            prompt = None
        else:
            prompt, pair = encode_prompt(self.processor, *pair), None
        if record.image_path not in seen:
            seen[record.image_path] = self._decode(record.image_path, arrays)
        image = seen[record.image_path]
        if isinstance(image, RowError):
            raise image
        return prompt, image, pair

    def _decode(self, image_path: str, arrays: list[np.ndarray]) -> int | RowError:
        """Locate the image as `velora convert` would, decode it within the limits and resize it for the model."""
        o = self.images
        file, _, error = resolve_image_path(image_path, Path(o.root), Path(o.cwd) if o.cwd else None, snli=o.snli,
                                            allow_outside=o.allow_outside)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's EXIF chatter, once per row
            try:
                if error is not None:
                    raise error
                arrays.append(np.asarray(self.processor.resize(load_image(file, limits=o.limits))))
            except ImageError as e:
                return RowError(e.code or "bad_image", f"image_path: {e}")
            except Exception as e:  # a Pillow plugin bug...: still this row's problem, not a crash
                return RowError("bad_image", f"image_path: {file}: cannot be read ({type(e).__name__}: {e})")
        return len(arrays) - 1
