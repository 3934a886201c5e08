"""Resource attacks on velora (issue 10 items 2, 3 and 5), measured on real processes, as ratios against the same
process at rest measured in the same run.

- images: `velora serve` (small random checkpoint) gets 8 worst-case images at once (16-bit 9400x9400 PNG,
  80,000,000x1 PNG, 9000x9000 JPEG; 0.2 to 1.5 MB) plus one normal 256x256 JPEG request, for several rounds, each
  after one normal request alone: the server's peak RSS vs its idle RSS, the normal request's latency under attack
  vs alone (medians), RSS left afterwards.
- convert: `velora convert` on a CSV with two good rows plus one row pointing at /dev/zero or at a FIFO: wall time
  and peak RSS vs the two good rows alone (a run over --guard seconds is killed and reported as hung).
- loris: N slow-loris connections (half send headers a byte a second, half a body a byte a second) against
  `velora serve --max_wait_ms 2000`: how many are held and how long, and a lone request's latency (and status)
  while they are open vs idle.

    python bench/attack.py                        # everything, 300 slow-loris connections
    python bench/attack.py --only loris --loris 100 300
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image
from serve import camera_images, checkpoint, start_server

ROWS: list[list[str]] = []
HEADER = ["attack", "measure", "at rest", "under attack", "ratio"]


def row(attack: str, measure: str, rest: str, under: str, ratio: str = "") -> None:
    ROWS.append([attack, measure, rest, under, ratio])
    print("| " + " | ".join(ROWS[-1]) + " |", flush=True)


# -- files an attacker sends -----------------------------------------------------------------------------------------

def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def zero_png(width: int, height: int, bit_depth: int, color_type: int, channels: int) -> bytes:
    """A PNG of zeros, built row by row (never the whole raw image in memory unless it is one row)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    line = b"\0" + bytes(width * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(line) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def big_jpeg(side: int = 9000) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.add.outer(ramp, ramp) / 2
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def worst_images() -> list[tuple[str, bytes]]:
    kinds = [("16bit-9400.png", zero_png(9400, 9400, 16, 0, 1)), ("80M-by-1.png", zero_png(80_000_000, 1, 8, 2, 3)),
             ("9000.jpg", big_jpeg())]
    for name, data in kinds:
        print(f"  {name}: {len(data) / 1024:.0f} KB", flush=True)
    return [kinds[i % len(kinds)] for i in range(8)]


# -- measuring a process ---------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """RSS of a process and its children, MB."""
    try:
        parent = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


class PeakRSS:
    """Samples a process tree's RSS every 20 ms in a thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


# -- 2: images -------------------------------------------------------------------------------------------------------

async def timed_check(client: httpx.AsyncClient, name: str, data: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    response = await client.post("/check", files={"image": (name, data)},
                                 data={"premise": "a product", "hypothesis": "the product is scratched."})
    return (time.perf_counter() - start) * 1000, response.status_code


async def normal_latency(url: str, image: bytes, n: int = 7) -> float:
    """Median latency of `n` sequential normal requests (after 2 unmeasured ones)."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return statistics.median([(await timed_check(client, "normal.jpg", image))[0] for _ in range(n + 2)][2:])


async def image_rounds(url: str, attack: list[tuple[str, bytes]], image: bytes,
                       rounds: int) -> tuple[list, list, list]:
    """Each round: one normal request alone, then the 8 attack uploads and one normal request at once, so that the
    machine's other load hits both alike. (latencies alone, latencies under attack, attack statuses)."""
    alone, under, statuses = [], [], []
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for _ in range(rounds):
            alone.append((await timed_check(client, "normal.jpg", image))[0])
            answers = await asyncio.gather(*(timed_check(client, name, data) for name, data in attack),
                                           timed_check(client, "normal.jpg", image))
            under.append(answers[-1][0])
            statuses += [status for _, status in answers[:-1]]
    return alone, under, statuses


def bench_images(model_dir: Path, logs: Path, rounds: int) -> None:
    attack, image = worst_images(), camera_images(1)[0]
    process, url = start_server(model_dir, 16, 10.0, logs / "images.log")
    try:
        asyncio.run(normal_latency(url, image, 3))  # warm
        idle_rss = rss_mb(process.pid)
        with PeakRSS(process.pid) as peak:
            alone, latencies, statuses = asyncio.run(image_rounds(url, attack, image, rounds))
        idle_latency = statistics.median(alone)
        time.sleep(3)
        after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(60)
    name = "8 worst-case images at once"
    counts = ", ".join(f"{statuses.count(s)}x {s}" for s in sorted(set(statuses)))
    row(name, "server RSS MB (peak)", f"{idle_rss:.0f}", f"{peak.peak:.0f}", ratio(peak.peak, idle_rss))
    row(name, f"normal request ms (median of {rounds})", f"{idle_latency:.0f}", f"{statistics.median(latencies):.0f}",
        ratio(statistics.median(latencies), idle_latency))
    row(name, "server RSS MB 3 s after", f"{idle_rss:.0f}", f"{after:.0f}", ratio(after, idle_rss))
    row(name, "answers to the attack uploads", "", counts)


# -- 3: convert ------------------------------------------------------------------------------------------------------

def convert_run(folder: Path, name: str, extra_row: str | None, guard: float) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, what happened) for `velora convert` on two good rows plus `extra_row`."""
    rows = ["image_path,premise,hypothesis,label", "good0.jpg,a box,there is a box.,entailment",
            "good1.jpg,a box,there is a cat.,contradiction"] + ([f"{extra_row},a box,a box.,neutral"] if extra_row
                                                              else [])
    csv = folder / f"{name}.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = folder / f"out-{csv.stem}"
    help_text = subprocess.run([sys.executable, "-c", "from velora.cli import cli; cli()", "convert", "--help"],
                               capture_output=True, text=True).stdout
    flags = ["--allow_outside_paths"] if "--allow_outside_paths" in help_text else []
    command = [sys.executable, "-c", "from velora.cli import cli; cli()", "convert", "--csv_path", str(csv),
               "--output_dir", str(out), "--val_ratio", "0.5", *flags]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakRSS(process.pid) as peak:
        try:
            output, _ = process.communicate(timeout=guard)
            outcome = f"exit {process.returncode}"
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            output, _ = process.communicate()
            outcome = f"hung: killed after {guard:.0f} s"
    seconds = time.perf_counter() - start
    report = out / "conversion_report.json"
    if extra_row and report.exists():
        text = json.dumps(json.loads(report.read_text()))
        codes = [c for c in ("not_a_file", "file_too_large", "read_timeout", "outside_image_root", "not_an_image",
                             "image_too_large", "empty_file", "bad_image") if f'"{c}"' in text]
        outcome += f", row dropped: {'/'.join(codes) or 'see report'}"
    elif process.returncode not in (0, None) and "hung" not in outcome:
        outcome += ": " + (output.strip().splitlines() or [""])[-1][:80]
    return seconds, peak.peak, outcome


def bench_convert(guard: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="velora-bench-attack-convert-"))
    for i, data in enumerate(camera_images(2)):
        (folder / f"good{i}.jpg").write_bytes(data)
    os.mkfifo(folder / "fifo.jpg")
    convert_run(folder, "warm-up", None, guard)  # imports and disk caches warm, as for the runs below
    base_s, base_rss, _ = convert_run(folder, "good", None, guard)
    row("convert, 2 good rows", "wall s / peak RSS MB", "", f"{base_s:.1f} s / {base_rss:.0f} MB")
    for label, path in (("/dev/zero", "/dev/zero"), ("a FIFO", "fifo.jpg")):
        seconds, rss, outcome = convert_run(folder, path.strip("/").replace("/", "-"), path, guard)
        row(f"convert, + a row at {label}", "wall s", f"{base_s:.1f}", f"{seconds:.1f}", ratio(seconds, base_s))
        row(f"convert, + a row at {label}", "peak RSS MB", f"{base_rss:.0f}", f"{rss:.0f}", ratio(rss, base_rss))
        row(f"convert, + a row at {label}", "outcome", "", outcome)


# -- 5: slow loris ---------------------------------------------------------------------------------------------------

async def until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def loris(host: str, port: int, body: bool, started: float, window: float) -> float:
    """One slow client, a byte a second; seconds until the server closed it (`window` if it never did)."""
    reader, writer = await asyncio.open_connection(host, port)
    head = b"POST /check HTTP/1.1\r\nHost: x\r\n"
    if body:  # complete headers, then an image part that never ends
        head += (b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n"
                 b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n')
    else:
        head += b"X-A: "
    writer.write(head)
    closed = asyncio.ensure_future(until_closed(reader))
    try:
        while time.perf_counter() - started < window:
            done, _ = await asyncio.wait({closed}, timeout=1.0)
            if done:
                return time.perf_counter() - started
            writer.write(b"a")
            await writer.drain()
        return window
    except OSError:
        return time.perf_counter() - started
    finally:
        closed.cancel()
        writer.close()


async def loris_attack(url: str, n: int, image: bytes, window: float) -> tuple[list[float], list, int]:
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    clients = [asyncio.ensure_future(loris(host, int(port), i % 2 == 1, started, window)) for i in range(n)]
    await asyncio.sleep(3)  # all connected and trickling
    probes = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(3):
            probes.append(await timed_check(c, "lone.jpg", image))
        held = sum(not task.done() for task in clients)
    return list(await asyncio.gather(*clients)), probes, held


def bench_loris(model_dir: Path, logs: Path, levels: list[int], window: float) -> None:
    image = camera_images(1)[0]
    for n in levels:
        process, url = start_server(model_dir, 16, 2000.0, logs / f"loris-{n}.log")
        try:
            idle = asyncio.run(normal_latency(url, image))
            holds, probes, held = asyncio.run(loris_attack(url, n, image, window))
        finally:
            process.terminate()
            process.wait(60)
        name = f"{n} slow-loris connections"
        header_holds, body_holds = holds[0::2], holds[1::2]
        lone = statistics.median(ms for ms, _ in probes)
        statuses = ", ".join(str(status) for _, status in probes)
        row(name, "connections held 3 s in", "", f"{held} of {n}")
        row(name, f"s held, headers / body trickle (max; window {window:.0f} s)", "",
            f"{max(header_holds):.1f} / {max(body_holds):.1f}")
        row(name, "still open at the window's end", "", f"{sum(h >= window for h in holds)}")
        row(name, f"lone request ms (statuses {statuses}; --max_wait_ms 2000)", f"{idle:.0f}", f"{lone:.0f}",
            ratio(lone, idle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["images", "convert", "loris"],
                        default=["images", "convert", "loris"])
    parser.add_argument("--rounds", type=int, default=9, help="image attack rounds")
    parser.add_argument("--loris", type=int, nargs="+", default=[300], help="slow-loris connection counts")
    parser.add_argument("--window", type=float, default=60.0, help="longest a slow-loris run lasts, s")
    parser.add_argument("--guard", type=float, default=60.0, help="a convert run longer than this is killed, s")
    parser.add_argument("--model_dir", type=Path, help="serve this checkpoint instead of bench/serve.py's 'small'")
    args = parser.parse_args()
    model_dir = args.model_dir or checkpoint("small")
    logs = Path(tempfile.mkdtemp(prefix="velora-bench-attack-logs-"))
    print(f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GB; server logs in {logs}",
          flush=True)
    print("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER), flush=True)
    if "images" in args.only:
        bench_images(model_dir, logs, args.rounds)
    if "convert" in args.only:
        bench_convert(args.guard)
    if "loris" in args.only:
        bench_loris(model_dir, logs, args.loris, args.window)
    print("\n" + "\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
                           + ["| " + " | ".join(r) + " |" for r in ROWS]))


if __name__ == "__main__":
    main()
