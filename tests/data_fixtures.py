"""Builders for the conversion tests: small images of every awkward kind, and CSV/JSONL files around them."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

HEADER = ("image_path", "premise", "hypothesis", "label")


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """Random pixels, so that every seed gives a distinct image (distinct content hash)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.frombytes(mode, size, pixels.tobytes())


def jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(size, seed).save(path, format="JPEG", quality=90)
    return path


def png(path: Path, seed: int = 0, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(size, seed, mode).save(path, format="PNG")
    return path


def cmyk_jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise((16, 16), seed, "CMYK").save(path, format="JPEG")
    return path


def png16(path: Path, seed: int = 0) -> Path:
    """16-bit grayscale PNG (mode I;16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(seed).integers(0, 65536, (12, 12), dtype=np.uint16)
    Image.frombytes("I;16", (12, 12), values.astype("<u2").tobytes()).save(path, format="PNG")
    return path


def animated_gif(path: Path, seed: int = 0, frames: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [_noise((16, 16), seed + i).convert("P") for i in range(frames)]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    """The first half of a real JPEG's bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    _noise((64, 64), seed).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def text_as_jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def huge_png(path: Path, size: tuple[int, int] = (10_000, 10_000)) -> Path:
    """A 1-bit PNG with huge dimensions: small on disk, 100 MP decoded (over Pillow's ~89.5 MP default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", size).save(path, format="PNG")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(path: Path, width: int, height: int, bit_depth: int = 8) -> Path:
    """A black grayscale PNG of any dimensions, compressed as it is written (the pixels are never held): an
    80,000,000x1 strip or a 16-bit 7000x7000 image is a file of a few hundred KB - a decompression bomb."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = height * (1 + width * bit_depth // 8)  # each row: filter byte 0, then the pixels, all zero
    compressor = zlib.compressobj(1)
    step = b"\x00" * (1 << 20)
    data = b"".join(compressor.compress(step[: min(len(step), total - done)]) for done in range(0, total, len(step)))
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)))
        f.write(_png_chunk(b"IDAT", data + compressor.flush()))
        f.write(_png_chunk(b"IEND", b""))
    return path


def tga(path: Path, seed: int = 0) -> Path:
    """A format Pillow reads but velora re-encodes (not in KEEP_FORMATS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise((8, 8), seed).save(path, format="TGA")
    return path


def write_csv(path: Path, rows: Iterable[Sequence[str]], header: Sequence[str] = HEADER, *,
              newline: str = "\n", bom: bool = False, encoding: str = "utf-8") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def write_jsonl(path: Path, objects: Iterable[object | str]) -> Path:
    """Objects are dumped as JSON; a str is written as the raw line (for broken lines)."""
    lines = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in objects]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def balanced_rows(folder: Path, n_images: int, per_image: int = 1, *, prefix: str = "img", seed: int = 0,
                  subdir: str = "images") -> list[list[str]]:
    """`n_images` distinct JPEGs under folder/subdir, `per_image` rows each, labels cycling through all three."""
    labels = ("entailment", "contradiction", "neutral")
    rows = []
    for i in range(n_images):
        name = f"{subdir}/{prefix}_{i:04d}.jpg"
        jpeg(folder / name, seed=seed + i)
        for j in range(per_image):
            k = i * per_image + j
            rows.append([name, f"A photo number {i} of a red shoe on a white table", f"Hypothesis {k} about it",
                         labels[(i + j) % 3]])
    return rows


def write_keyed_csv(path: Path, rows: Sequence[tuple[str, Sequence[str] | str]], header: Sequence[str] = HEADER, *,
                    newline: str = "\n", bom: bool = False) -> dict[str, int]:
    """Write `rows` as (key, fields) - fields may be a raw text line for malformed rows - and return {key: the line
    where that row starts}, counting quoted newlines the way an editor does."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    lines: dict[str, int] = {}
    for key, fields in rows:
        lines[key] = buffer.getvalue().count("\n") + 1
        if isinstance(fields, str):
            buffer.write(fields + newline)
        else:
            writer.writerow(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    return lines
