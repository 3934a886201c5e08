"""Open any image a user may hand us, safely, as an RGB Pillow image.

Used by `convert`/`validate` (to check every row) and by the Predictor (to score), so a file accepted at
conversion time is read the same way at training and serving time.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from velora.errors import VeloraError

# Pillow's own default (~89.5 MP, a 9459x9459 image). Larger is refused as a possible decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]


class ImageError(VeloraError, ValueError):
    """An image that cannot be used; the message names the file and says why, `code` the kind: image_not_found,
    not_a_file, empty_file, not_an_image, image_too_large, truncated_image or bad_image."""

    def __init__(self, message: str = "", code: str | None = "bad_image"):
        super().__init__(message, code)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or "<uploaded image>"


def _open(source: ImageSource) -> Image.Image:
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image file", "not_a_file")
        if not path.exists():
            raise ImageError(f"{name}: image file not found", "image_not_found")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: file is empty (0 bytes)", "empty_file")
    elif isinstance(source, bytes):
        if not source:
            raise ImageError("image is empty (0 bytes)", "empty_file")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():  # we check the size ourselves and raise a clear error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or a format Pillow cannot read", "not_an_image") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})", "image_too_large") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e})", "bad_image") from None


def _check_size(img: Image.Image, name: str, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb); downscale the image first", "image_too_large"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has zero width or height", "bad_image")


def _decode_fully(img: Image.Image, name: str) -> None:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: truncated or corrupt image data ({e})", "truncated_image") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale, scaled to 8 bits (Pillow's convert would clip)."""
    pixels = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (pixels.max(initial=0) > 255 and pixels.max(initial=0) <= 65535):
        pixels = pixels / 257.0
    elif img.mode == "F" and pixels.max(initial=0) <= 1.0:
        pixels = pixels * 255.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))  # uint8 2-D: mode "L"


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


def load_image_and_format(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str | None]:
    """load_image, plus the file's format as Pillow identified it ("JPEG", "PNG"...; None for an Image given)."""
    if isinstance(source, Image.Image):
        img, name = source, "<image>"
    else:
        name = _describe(source)
        img = _open(source)
    file_format = img.format
    _check_size(img, name, max_pixels)
    _decode_fully(img, name)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not lose an otherwise good image
        pass
    return to_rgb(img), file_format


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` completely and return it upright (EXIF orientation applied) in RGB.

    Raises ImageError, naming the file, for a missing/empty/non-image/truncated file or one over `max_pixels`.
    Animated images give their first frame.
    """
    return load_image_and_format(source, max_pixels)[0]
