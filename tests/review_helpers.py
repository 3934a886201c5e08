"""Helpers for the review tests: `velora review` as its own process (killed with SIGKILL to test crashes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def review_process(args: list[str], port: int, cwd: Path, timeout: float = 300.0) -> Iterator[subprocess.Popen]:
    """`velora review ARGS --port PORT` as its own process, until its page answers; killed (SIGKILL) at the end
    unless the caller has killed it already."""
    process = subprocess.Popen([sys.executable, "-m", "velora", "review", *args, "--port", str(port)], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"velora review exited: {process.stdout.read()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/summary", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("velora review did not answer")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
