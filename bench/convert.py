"""Throughput of `velora convert`: rows/s for a CSV of N rows with small JPEGs, 1 vs 2 image-check processes.

    python bench/convert.py [--rows 20000] [--rows-per-image 1] [--size 64] [--procs 1 2] [--workdir DIR]

Writes the images and CSV to a temporary folder (or --workdir, kept), then times, for each process count, the
checking stage alone (`check_input`: parse, resolve, decode every image, hash) and the whole `convert` (checks +
split + embedding the bytes + save_to_disk). The files are in the page cache (just written), so this measures
CPU, not the disk. Also measures how much parallel CPU the machine gives right now (pure-CPU tasks in N processes
vs 1), since a busy machine hides any speed-up. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from velora.convert import check_input, convert

LABELS = ("entailment", "contradiction", "neutral")


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_capacity(procs: int, n: int = 5_000_000) -> float:
    """How much faster `procs` processes finish `procs` equal pure-CPU tasks than one process does, right now:
    ~procs on an idle machine, less when other work holds the cores. Read the convert speed-up against it."""
    import multiprocessing

    from concurrent.futures import ProcessPoolExecutor

    t = time.perf_counter()
    for _ in range(procs):
        _spin(n)
    serial = time.perf_counter() - t
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("forkserver")) as pool:
        list(pool.map(_spin, [1] * procs))  # start the workers
        t = time.perf_counter()
        list(pool.map(_spin, [n] * procs))
        parallel = time.perf_counter() - t
    return serial / parallel


def make_corpus(folder: Path, rows: int, rows_per_image: int, size: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_images = -(-rows // rows_per_image)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(n_images):
        pixels = np.roll(base, i, axis=1)  # distinct content, photo-like JPEG size
        pixels[0, 0] = (i % 256, (i // 256) % 256, (i // 65536) % 256)
        Image.fromarray(pixels).save(images / f"img_{i:06d}.jpg", quality=85)
    csv_path = folder / "pairs.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "premise", "hypothesis", "label"])
        for r in range(rows):
            i = r // rows_per_image
            writer.writerow([f"images/img_{i:06d}.jpg", f"A photo number {i} of a red shoe on a white table",
                             f"Statement {r} about the shoe", LABELS[r % 3]])
    return csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rows-per-image", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="velora-bench-convert-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        csv_path = make_corpus(work, args.rows, args.rows_per_image, args.size)
        n_images = -(-args.rows // args.rows_per_image)
        mean_kb = sum(p.stat().st_size for p in (work / "images").iterdir()) / n_images / 1024
        print(f"corpus: {args.rows:,} rows, {n_images:,} JPEGs {args.size}x{args.size} (~{mean_kb:.1f} KiB), "
              f"made in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, Python {platform.python_version()}")

        capacity = {p: cpu_capacity(p) for p in args.procs if p > 1}
        results = []
        for procs in args.procs:
            t = time.perf_counter()
            checked = check_input(csv_path, num_proc=procs)
            check_s = time.perf_counter() - t
            assert checked.report.kept == args.rows, checked.report.summary()
            out = work / f"out_{procs}"
            t = time.perf_counter()
            report = convert(csv_path, out, num_proc=procs, overwrite=True)
            total_s = time.perf_counter() - t
            assert report.kept == args.rows
            results.append((procs, check_s, total_s))

        base_check, base_total = results[0][1], results[0][2]
        print()
        print("| processes | check only: s | check rows/s | convert: s | convert rows/s | convert speed-up |")
        print("|---:|---:|---:|---:|---:|---:|")
        for procs, check_s, total_s in results:
            print(f"| {procs} | {check_s:.1f} | {args.rows / check_s:,.0f} | {total_s:.1f} "
                  f"| {args.rows / total_s:,.0f} "
                  f"| {base_total / total_s:.2f}x |")
        print("\ncheck-only speed-up: " + ", ".join(f"{p} procs {base_check / c:.2f}x" for p, c, _ in results))
        print("CPU capacity measured in this run (pure-CPU tasks, N processes vs 1; an idle machine gives ~N): "
              + ", ".join(f"{p} procs {c:.2f}x" for p, c in capacity.items()))
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
