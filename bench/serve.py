"""`velora serve` under load: requests/s and p50/p95 latency at several concurrencies, micro-batching on vs off.

Two real servers (the `velora serve` command, same build) on one random-weight checkpoint: --max_batch_size 16
(batched) and --max_batch_size 1 (unbatched). Both stay up; at each concurrency they are measured in ABBA order
(batched, unbatched, unbatched, batched) so drifting machine load hits both alike. Clients are httpx async, each
request a distinct 256x256 JPEG, a premise and a hypothesis, sent as multipart like a camera would.
Besides req/s and latency it prints, from the servers' /metrics and /proc, the mean model batch, the share of wall
time spent in model calls, and the server's CPU ms per request (steadier than wall time on a shared machine).

    python bench/serve.py                       # the default preset, concurrency 1 16 64
    python bench/serve.py --preset small --requests 64
    python bench/serve.py --rows 'c16-*'        # one concurrency (both servers are always measured, ABBA)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Report, add_report_arguments, machine_line  # noqa: E402

# Presets: OFA-base's shape (d 768, 6+6 layers, resnet101, 480 px) scaled down until a 2-core CPU finishes the
# whole run in a few minutes. "cpu" is compute-bound on CPU (the ResNet dominates); "small" is closer to how a
# GPU sees a big model at batch 1 (per-call overhead dominates).
PRESETS = {
    "cpu": (dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, resnet_type="resnet50"), 256),
    "small": (dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, resnet_type="resnet18"), 128),
}


def checkpoint(preset: str) -> Path:
    import torch

    from velora.bundle import save_model_dir
    from velora.ofa.checkpoint import randomize_
    from velora.ofa.config import OFAConfig
    from velora.ofa.model import OFAModel
    from velora.ofa.processor import OFAProcessor

    out = Path(tempfile.gettempdir()) / "velora-bench-serve" / preset
    if not (out / "config.json").exists():
        config, image_size = PRESETS[preset]
        torch.manual_seed(0)
        model = randomize_(OFAModel(OFAConfig(**config)), seed=0).eval()
        save_model_dir(model, OFAProcessor.default(image_size=image_size), out)
    return out


def camera_images(n: int, size: int = 256) -> list[bytes]:
    """Distinct JPEGs with some structure (shapes on a gradient), ~10 KB each."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        base = np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1) * rng.uniform(0.3, 1.0, 3)
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, size - 40, 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rectangle([int(x), int(y), int(x) + 40, int(y) + 30], fill=color)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        images.append(out.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, max_batch_size: int, max_wait_ms: float, log: Path,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`velora serve` on a free port (`extra`: more flags); (process, base URL) once /readyz answers."""
    port = free_port()
    command = [sys.executable, "-c", "from velora.cli import cli; cli()", "serve", "--model_path", str(model_dir),
               "--port", str(port), "--max_batch_size", str(max_batch_size), "--max_wait_ms", str(max_wait_ms),
               *extra]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited during startup; see {log}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.terminate()
    sys.exit(f"server not ready after 300 s; see {log}")


async def load(url: str, images: list[bytes], concurrency: int, requests: int) -> tuple[float, list[float]]:
    """`requests` POST /check from `concurrency` clients in closed loop; (wall seconds, latencies in ms)."""
    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                start = time.perf_counter()
                response = await client.post("/check", files={"image": (f"{i}.jpg", images[i % len(images)])},
                                             data={"premise": "a product on the assembly line",
                                                   "hypothesis": f"the product has {i % 7} scratches"})
                response.raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def model_counters(url: str) -> tuple[float, float, float]:
    """(examples scored, model calls, seconds in model calls) so far, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
              for s in family.samples if not s.labels}
    return (values.get("velora_batch_size_sum", 0.0), values.get("velora_batch_size_count", 0.0),
            values.get("velora_batch_seconds_sum", 0.0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): less sensitive to other load than wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


COLUMNS = ["concurrency", "batching", "req/s", "p50 ms", "p95 ms", "mean batch", "model busy", "server CPU ms/req"]
MODES = ("batched", "unbatched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=48, help="per round, at least 2x concurrency (4 rounds)")
    parser.add_argument("--max_wait_ms", type=float, default=10.0)
    parser.add_argument("--max_batch_size", type=int, default=16, help="of the batched server")
    pre = argparse.ArgumentParser(add_help=False)  # the row names depend on --concurrency
    pre.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    levels = pre.parse_known_args()[0].concurrency
    add_report_arguments(parser, [f"c{c}-{mode}" for c in levels for mode in MODES])
    args = parser.parse_args()
    report = Report(f"serve-{args.preset}", COLUMNS, args)

    model_dir = checkpoint(args.preset)
    config, image_size = PRESETS[args.preset]
    images = camera_images(32)
    logs = Path(tempfile.mkdtemp(prefix="velora-bench-serve-logs-"))
    report.note(f"preset {args.preset}: {config}, image {image_size} px; {machine_line()}; server logs in {logs}")
    servers = {}
    results: dict[tuple[int, str], dict] = {}
    try:
        for mode, size in zip(MODES, (args.max_batch_size, 1)):
            servers[mode] = start_server(model_dir, size, args.max_wait_ms, logs / f"{mode}.log")
        for concurrency in [c for c in levels if report.any_wanted(f"c{c}-*")]:
            measure_level(servers, images, concurrency, max(args.requests, 2 * concurrency), results)
            for mode in MODES:
                if report.wanted(f"c{concurrency}-{mode}"):
                    report.row(f"c{concurrency}-{mode}", row_values(results[(concurrency, mode)], concurrency, mode,
                                                                    args.max_batch_size))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)
    summary(results, levels)


def measure_level(servers: dict, images: list[bytes], concurrency: int, n: int, results: dict) -> None:
    """Both servers at one concurrency, in ABBA order after a warm-up, accumulated into `results`."""
    for mode in MODES:  # warm-up at this concurrency
        asyncio.run(load(servers[mode][1], images, concurrency, concurrency))
    for mode in ("batched", "unbatched", "unbatched", "batched"):
        process, url = servers[mode]
        before, cpu_before = model_counters(url), cpu_seconds(process.pid)
        seconds, latencies = asyncio.run(load(url, images, concurrency, n))
        moved = [b - a for a, b in zip(before, model_counters(url))]
        row = results.setdefault((concurrency, mode), {"wall": 0.0, "lat": [], "model": [0.0, 0.0, 0.0], "cpu": 0.0})
        row["cpu"] += cpu_seconds(process.pid) - cpu_before
        row["wall"] += seconds
        row["lat"] += latencies
        row["model"] = [x + y for x, y in zip(row["model"], moved)]


def row_values(row: dict, concurrency: int, mode: str, max_batch_size: int) -> dict:
    lat, (examples, calls, model_seconds) = row["lat"], row["model"]
    return {"concurrency": concurrency, "batching": f"on ({max_batch_size})" if mode == "batched" else "off (1)",
            "req/s": f"{len(lat) / row['wall']:.1f}", "p50 ms": f"{percentile(lat, 50):.0f}",
            "p95 ms": f"{percentile(lat, 95):.0f}", "mean batch": f"{examples / max(calls, 1):.1f}",
            "model busy": f"{100 * model_seconds / row['wall']:.0f}%",
            "server CPU ms/req": f"{1000 * row['cpu'] / len(lat):.0f}"}


def summary(results: dict, levels: list[int]) -> None:
    measured = [c for c in levels if (c, "batched") in results]
    if not measured:
        return
    rps = {key: len(r["lat"]) / r["wall"] for key, r in results.items()}
    single = statistics.median(results[(measured[0], "unbatched")]["lat"])
    for concurrency in measured:
        print(f"concurrency {concurrency}: batched / unbatched throughput = "
              f"{rps[(concurrency, 'batched')] / rps[(concurrency, 'unbatched')]:.2f}x; batched p95 / single-request "
              f"p50 (concurrency {measured[0]}, unbatched) = "
              f"{percentile(results[(concurrency, 'batched')]['lat'], 95) / single:.2f}x", flush=True)


if __name__ == "__main__":
    main()
