"""Helpers for the serve tests: images (good and bad) and a real uvicorn server on a free localhost port."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import uvicorn
from PIL import Image

from velora.serve.run import uvicorn_config

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


def image_bytes(seed: int = 0, size: tuple[int, int] = (80, 60), fmt: str = "PNG") -> bytes:
    """A random-noise RGB image (width, height); different seeds give clearly different model inputs."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def truncated_png(seed: int = 0) -> bytes:
    data = image_bytes(seed, size=(96, 96))
    return data[: len(data) // 2]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few dozen bytes that claim to be a width x height RGB PNG (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


@contextmanager
def live_server(app, timeout: float = 120.0) -> Iterator[str]:
    """Run `app` under a real uvicorn on 127.0.0.1 (a free port) in a thread, configured as `velora serve` runs
    it (velora's protocol, keep-alive timeout); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"uvicorn did not start within {timeout}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def keyed_client(url: str, key: str) -> httpx.Client:
    """An httpx client for a live server that sends `key` as X-API-Key."""
    return httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout guards against a hang)."""
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers in lower case, body) of one raw HTTP/1.1 answer."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def multipart_body(fields: dict[str, str], image: bytes, boundary: str = "velora-test") -> tuple[bytes, str]:
    """A multipart/form-data body (text fields + an `image` file part) and its Content-Type."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
