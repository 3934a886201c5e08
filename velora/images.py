"""Open any image a user may hand us, safely, as an RGB Pillow image.

Used by `convert`/`validate` (to check every row), the Predictor (predict, eval, mine, export) and the server, so a
file accepted at conversion time is read the same way, under the same limits (`ImageLimits`), everywhere:

- only regular files are read (never a device, FIFO, socket or directory), at most `max_bytes`, within `timeout_s`;
- the size an image declares is checked before any pixel is decoded: at most `max_pixels`, each side at most
  `max_side`;
- a JPEG much larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
  `Image.draft`), never below `draft_side` on either side;
- 16-bit and 32-bit images become 8-bit a block of rows at a time, without a float64 copy;
- at most one decode per CPU core runs at once in a process (`DECODE_SLOTS`, shared by every caller), and a decode
  still running after `timeout_s` is stopped at its next read of the encoded bytes (Pillow reads them in 64 KiB
  steps; each step's work is bounded by the pixel limits).
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
import warnings
from dataclasses import dataclass, fields, replace
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from velora.errors import VeloraError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost. OFA looks at a square of 256-480 px (672 at most); the defaults leave room for every
    ordinary photo and refuse what only an attack or a mistake produces."""

    max_pixels: int = 40_000_000  # declared width x height: 12-24 MP phone photos, a 35 MP A4 scan; 170x OFA input
    max_side: int = 16_384  # either side (WebP's own limit is 16,383); refuses 80,000,000 x 1 strips
    max_bytes: int = 10 * 1024 * 1024  # a file's size: the server's default upload limit (10 MB)
    draft_side: int = 1_344  # JPEGs decode at reduced scale, keeping both sides >= 2x the largest OFA input
    timeout_s: float = 10.0  # reading one file; decoding one image (a 40 MP PNG decodes in ~1 s)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise VeloraError(f"image limit {f.name} must be positive, got {getattr(self, f.name)}")

    @classmethod
    def from_options(cls, max_pixels: int | None = None, max_side: int | None = None,
                     max_image_mb: float | None = None) -> "ImageLimits":
        """The defaults, with the command-line flags that were given (None: not given)."""
        given = {"max_pixels": max_pixels, "max_side": max_side,
                 "max_bytes": None if max_image_mb is None else int(max_image_mb * 1024 * 1024)}
        return cls(**{name: value for name, value in given.items() if value is not None})


DEFAULT_LIMITS = ImageLimits()
DEFAULT_MAX_PIXELS = DEFAULT_LIMITS.max_pixels
CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
DECODE_SLOTS = threading.BoundedSemaphore(CPU_CORES)  # decodes at once in this process (convert, predict, serve)
_BLOCK_PIXELS = 1 << 18  # pixels converted to 8 bits at a time
_now = time.monotonic  # the clock of the time limits (a test may replace it)


class ImageError(VeloraError, ValueError):
    """An image that cannot be used; the message names the file and says why, `code` the kind: image_not_found,
    not_a_file, empty_file, file_too_large, read_timeout, not_an_image, image_too_large, decode_timeout,
    truncated_image or bad_image."""

    def __init__(self, message: str = "", code: str | None = "bad_image"):
        super().__init__(message, code)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or "<uploaded image>"


# --- reading a file ----------------------------------------------------------------------------------------------


def _refuse_unless_regular(mode: int, name: str) -> None:
    if stat.S_ISDIR(mode):
        raise ImageError(f"{name}: is a directory, not an image file", "not_a_file")
    if not stat.S_ISREG(mode):
        raise ImageError(f"{name}: not a regular file (a device, FIFO or socket); give an image file", "not_a_file")


def _open_error(path: str | os.PathLike, error: OSError) -> ImageError:
    name = str(path)
    if isinstance(error, FileNotFoundError):
        return ImageError(f"{name}: image file not found", "image_not_found")
    try:
        _refuse_unless_regular(os.stat(path).st_mode, name)  # a socket cannot even be opened
    except ImageError as refused:
        return refused
    except OSError:
        pass
    return ImageError(f"{name}: cannot be opened ({error.strerror or error})", "bad_image")


def _too_large(name: str, size: int | str, limits: ImageLimits) -> ImageError:
    return ImageError(f"{name}: file is {size} bytes, over the limit of {limits.max_bytes:,} bytes "
                      "(--max_image_mb); downscale or recompress the image", "file_too_large")


def read_image_file(path: str | os.PathLike, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """A regular file's bytes: at most `limits.max_bytes`, read within `limits.timeout_s` (checked between 1 MiB
    reads). Opening never waits (a FIFO is refused before anything is read); symlinks are followed."""
    name = str(path)
    deadline = _now() + limits.timeout_s
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise _open_error(path, e) from None
    try:
        info = os.fstat(fd)
        _refuse_unless_regular(info.st_mode, name)
        if info.st_size > limits.max_bytes:
            raise _too_large(name, f"{info.st_size:,}", limits)
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limits.max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limits.max_bytes:  # it grew while being read
                raise _too_large(name, f"over {limits.max_bytes:,}", limits)
            if _now() > deadline:
                raise ImageError(f"{name}: reading took longer than {limits.timeout_s:g} s", "read_timeout")
    finally:
        os.close(fd)
    if not chunks:
        raise ImageError(f"{name}: file is empty (0 bytes)", "empty_file")
    return b"".join(chunks)


def _encoded_bytes(source: ImageSource, limits: ImageLimits) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        return read_image_file(source, limits)
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, io.BytesIO):  # already in memory: no size limit to apply
        return source.getvalue()
    data = source.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise _too_large(_describe(source), f"over {limits.max_bytes:,}", limits)
    return data


# --- decoding ----------------------------------------------------------------------------------------------------


class _DeadlineReader(io.BytesIO):
    """Encoded bytes that stop a decode once `deadline` has passed: Pillow's decoders pull their input through
    read(), a block at a time."""

    def __init__(self, data: bytes, name: str, timeout_s: float):
        super().__init__(data)
        self.name, self.timeout_s = name, timeout_s
        self.deadline = _now() + timeout_s

    def check_deadline(self) -> None:
        if _now() > self.deadline:
            raise ImageError(f"{self.name}: decoding took longer than {self.timeout_s:g} s", "decode_timeout")

    def read(self, size: int | None = -1) -> bytes:
        self.check_deadline()
        return super().read(size)


def _open(stream: _DeadlineReader, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():  # we check the size ourselves and raise a clear error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or a format Pillow cannot read", "not_an_image") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})", "image_too_large") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e})", "bad_image") from None


def _check_size(img: Image.Image, name: str, limits: ImageLimits) -> None:
    """The size the file declares, before any pixel is decoded."""
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {limits.max_pixels:,} "
            "(possible decompression bomb); downscale the image first, or raise --max_pixels", "image_too_large"
        )
    if max(width, height) > limits.max_side:
        raise ImageError(
            f"{name}: {width}x{height} has a side over the limit of {limits.max_side:,} pixels (possible "
            "decompression bomb); crop or downscale the image first, or raise --max_side", "image_too_large"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has zero width or height", "bad_image")


def _draft(img: Image.Image, limits: ImageLimits) -> None:
    """A JPEG at least twice `draft_side` on both sides decodes at 1/2, 1/4 or 1/8 scale, both sides kept >=
    `draft_side` (what the model needs and more); smaller JPEGs and other formats decode at full size."""
    if img.format in ("JPEG", "MPO") and min(img.size) >= 2 * limits.draft_side:
        img.draft(None, (limits.draft_side, limits.draft_side))


def _decode_fully(img: Image.Image, name: str) -> None:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: truncated or corrupt image data ({e})", "truncated_image") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not lose an otherwise good image
        return img


def _to_8bit_block(block: np.ndarray, sixteen_bit: bool, unit_float: bool) -> np.ndarray:
    """One block of a 16/32-bit image in 8 bits; float images (mode F) are computed in their own float32."""
    if block.dtype.kind == "f":
        scaled = block / np.float32(257) if sixteen_bit else block * np.float32(255) if unit_float else block
        return np.clip(np.rint(scaled), 0, 255)
    if sixteen_bit:  # round(v / 257) exactly, in integers: (255 v + 32895) >> 16; 65535 -> 255, 32896 -> 128
        scaled = np.clip(block, 0, 65535).astype(np.uint32)
        scaled *= 255
        scaled += 32895
        return scaled >> 16
    return np.clip(block, 0, 255)


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale, scaled to 8 bits (Pillow's convert would clip), converted a
    block of rows at a time: memory is the image plus its 8-bit copy."""
    pixels = np.asarray(img)  # (H, W) uint16 / int32 / float32
    top = pixels.max(initial=0)
    sixteen_bit = img.mode.startswith("I;16") or 255 < top <= 65535
    unit_float = img.mode == "F" and top <= 1.0
    out = np.empty(pixels.shape, dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, pixels.shape[1]))
    for start in range(0, pixels.shape[0], rows):
        out[start:start + rows] = _to_8bit_block(pixels[start:start + rows], sixteen_bit, unit_float)
    return Image.fromarray(out)  # uint8 2-D: mode "L"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image_and_format(
    source: ImageSource, max_pixels: int | None = None, *, limits: ImageLimits = DEFAULT_LIMITS
) -> tuple[Image.Image, str | None]:
    """load_image, plus the file's format as Pillow identified it ("JPEG", "PNG"...; None for an Image given)."""
    if max_pixels is not None:
        limits = replace(limits, max_pixels=max_pixels)
    if isinstance(source, Image.Image):
        with DECODE_SLOTS:
            return _decoded(source, "<image>", limits), None
    name = _describe(source)
    data = _encoded_bytes(source, limits)
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes)", "empty_file")
    with DECODE_SLOTS:
        stream = _DeadlineReader(data, name, limits.timeout_s)
        img = _open(stream, name)
        _check_size(img, name, limits)  # the size the file declares, before draft shrinks it
        _draft(img, limits)
        rgb = _decoded(img, name, limits)
        stream.check_deadline()
        return rgb, img.format


def _decoded(img: Image.Image, name: str, limits: ImageLimits) -> Image.Image:
    """Size checks, full decode, EXIF orientation, RGB: the steps every source goes through."""
    _check_size(img, name, limits)
    _decode_fully(img, name)
    return to_rgb(_upright(img))


def load_image(source: ImageSource, max_pixels: int | None = None, *,
               limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode `source` (a path, bytes, a binary file object or a Pillow image) completely and return it upright
    (EXIF orientation applied) in RGB, within `limits` (`max_pixels`, when given, overrides limits.max_pixels).

    Raises ImageError, naming the file, with a `code`: a missing/empty/non-regular/over-size file, not an image,
    over the pixel or side limits, truncated, or past the time limit. Animated images give their first frame.
    """
    return load_image_and_format(source, max_pixels, limits=limits)[0]
