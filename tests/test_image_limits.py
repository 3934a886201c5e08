"""velora.images under hostile input: decompression bombs refused before decoding, per-side limits, JPEG draft
decoding, 16-bit images without a float64 copy, a bounded number of decodes at once, time limits, and only regular
files of a bounded size are read."""

from __future__ import annotations

import io
import os
import pickle
import socket
import threading
import tracemalloc

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import data_fixtures as F
import velora.images as images
from velora.errors import VeloraError
from velora.images import ImageError, ImageLimits, load_image, read_image_file


@pytest.fixture
def no_png_decode(monkeypatch):
    """Fails the test if any PNG pixel is decoded."""
    def refuse(self):
        raise AssertionError("a PNG was decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)


def test_16bit_png_bomb_is_refused_before_decoding(tmp_path, no_png_decode):
    bomb = F.blank_png(tmp_path / "bomb.png", 7000, 7000, bit_depth=16)  # 49 MP, ~430 KB on disk
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="7000x7000 = 49,000,000 pixels exceeds the limit of 40,000,000") as e:
        load_image(bomb)
    assert e.value.code == "image_too_large" and "bomb.png" in str(e.value)


def test_long_strip_is_refused_before_decoding(tmp_path, no_png_decode):
    strip = F.blank_png(tmp_path / "strip.png", 80_000_000, 1)  # under Pillow's own 89.5 MP limit
    with pytest.raises(ImageError, match="exceeds the limit") as e:
        load_image(strip)
    assert e.value.code == "image_too_large"
    narrow = F.blank_png(tmp_path / "narrow.png", 20_000, 2)  # 40,000 pixels, but one side over 16,384
    with pytest.raises(ImageError, match="a side over the limit of 16,384") as e:
        load_image(narrow)
    assert e.value.code == "image_too_large"


def test_limits_are_configurable(tmp_path):
    narrow = F.blank_png(tmp_path / "narrow.png", 20_000, 2)
    assert load_image(narrow, limits=ImageLimits(max_side=20_000)).size == (20_000, 2)
    with pytest.raises(ImageError, match="limit of 100"):
        load_image(narrow, max_pixels=100)
    assert ImageLimits.from_options(max_pixels=5, max_image_mb=1.5) == ImageLimits(max_pixels=5,
                                                                                 max_bytes=1_572_864)
    with pytest.raises(VeloraError, match="max_side must be positive"):
        ImageLimits(max_side=0)


def _jpeg(size: tuple[int, int]) -> bytes:
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None]
    pixels = np.stack([np.broadcast_to(x, (size[1], size[0])), np.broadcast_to(y, (size[1], size[0])),
                       (x + y) / 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_large_jpegs_decode_at_reduced_scale():
    big = _jpeg((3000, 2800))
    drafted = load_image(big)
    assert drafted.size == (1500, 1400)  # 1/2 scale: both sides stay >= 1,344
    assert load_image(big, limits=ImageLimits(draft_side=256)).size == (375, 350)  # 1/8
    assert load_image(_jpeg((2000, 2000))).size == (2000, 2000)  # under twice draft_side: full size
    # what the model sees is the same picture
    full = Image.open(io.BytesIO(big)).convert("RGB").resize((480, 480), Image.BICUBIC)
    seen = drafted.resize((480, 480), Image.BICUBIC)
    assert np.abs(np.asarray(full, dtype=int) - np.asarray(seen, dtype=int)).mean() < 2


def test_16bit_images_convert_without_a_float64_copy():
    values = (np.arange(2000 * 2000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 2000)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    tracemalloc.start()
    try:
        image = load_image(buffer.getvalue())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.size == (2000, 2000) and image.mode == "RGB"
    assert peak < 10 * values.size  # a float64 copy alone is 8 bytes a pixel, and the old code made four
    expected = np.clip(np.rint(values[::97, ::89] / 257), 0, 255)
    assert (np.asarray(image)[::97, ::89, 0] == expected).all()


def test_at_most_n_decodes_run_at_once(monkeypatch):
    monkeypatch.setattr(images, "DECODE_SLOTS", threading.BoundedSemaphore(2))
    original, lock, active, peak = images._decode_fully, threading.Lock(), [0], [0]

    def slow_decode(img, name):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.2)  # hold the slot a while
        with lock:
            active[0] -= 1
        original(img, name)

    monkeypatch.setattr(images, "_decode_fully", slow_decode)
    data = _jpeg((32, 32))
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= peak[0] <= 2


class _FastClock:
    """A clock that moves 1 s each time it is read."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_time_limits(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "_now", _FastClock())
    with pytest.raises(ImageError, match="decoding took longer than 3 s") as e:
        load_image(_jpeg((64, 64)), limits=ImageLimits(timeout_s=3))
    assert e.value.code == "decode_timeout"
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg((64, 64)))
    with pytest.raises(ImageError, match="reading took longer than 0.5 s") as e:
        read_image_file(path, ImageLimits(timeout_s=0.5))
    assert e.value.code == "read_timeout"


@pytest.mark.timeout(60)
def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")  # reading it never ends
    (tmp_path / "dir.jpg").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.jpg"))
    try:
        for name in ("fifo.jpg", "zero.jpg", "dir.jpg", "sock.jpg"):
            with pytest.raises(ImageError) as e:
                load_image(tmp_path / name)
            assert e.value.code == "not_a_file" and name in str(e.value)
    finally:
        server.close()


def test_file_size_limit(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg((64, 64)) + b"\0" * 2_000_000)
    with pytest.raises(ImageError, match="over the limit of 1,048,576 bytes") as e:
        load_image(path, limits=ImageLimits(max_bytes=1 << 20))
    assert e.value.code == "file_too_large"
    assert load_image(path).size == (64, 64)  # within the default 10 MB


def test_error_codes_are_typed_and_survive_pickling():
    assert VeloraError("plain").code is None
    error = pickle.loads(pickle.dumps(ImageError("x.jpg: not an image", "not_an_image")))
    assert isinstance(error, ImageError) and error.code == "not_an_image" and str(error) == "x.jpg: not an image"
    with pytest.raises(ImageError) as e:
        load_image(b"this is not an image")
    assert e.value.code == "not_an_image"
