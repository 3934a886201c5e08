"""Throughput of `velora convert`: rows/s for a CSV of N rows with small JPEGs, 1 vs 2 image-check processes.

    python bench/convert.py [--csv_rows 20000] [--rows-per-image 1] [--size 64] [--procs 1 2] [--workdir DIR]

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

from common import Report, add_report_arguments
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


COLUMNS = ["processes", "check only: s", "check rows/s", "convert: s", "convert rows/s", "convert speed-up",
           "CPU capacity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv_rows", type=int, default=20_000, help="rows in the CSV")
    parser.add_argument("--rows-per-image", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=None)
    pre = argparse.ArgumentParser(add_help=False)  # the row names depend on --procs
    pre.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    procs_levels = pre.parse_known_args()[0].procs
    add_report_arguments(parser, [f"procs-{p}" for p in procs_levels])
    args = parser.parse_args()
    report = Report("convert", COLUMNS, args)

    with tempfile.TemporaryDirectory(prefix="velora-bench-convert-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        csv_path = make_corpus(work, args.csv_rows, args.rows_per_image, args.size)
        n_images = -(-args.csv_rows // args.rows_per_image)
        mean_kb = sum(p.stat().st_size for p in (work / "images").iterdir()) / n_images / 1024
        report.note(f"corpus: {args.csv_rows:,} rows, {n_images:,} JPEGs {args.size}x{args.size} (~{mean_kb:.1f} KiB),"
                    f" made in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, Python "
                    f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
        base_total = None
        for procs in [p for p in procs_levels if report.wanted(f"procs-{p}")]:
            capacity = cpu_capacity(procs) if procs > 1 else 1.0  # measured now, beside the row it qualifies
            t = time.perf_counter()
            checked = check_input(csv_path, num_proc=procs)
            check_s = time.perf_counter() - t
            assert checked.report.kept == args.csv_rows, checked.report.summary()
            t = time.perf_counter()
            kept = convert(csv_path, work / f"out_{procs}", num_proc=procs, overwrite=True).kept
            total_s = time.perf_counter() - t
            assert kept == args.csv_rows
            base_total = base_total or total_s
            report.row(f"procs-{procs}", {
                "processes": procs, "check only: s": f"{check_s:.1f}", "check rows/s": f"{args.csv_rows / check_s:,.0f}",
                "convert: s": f"{total_s:.1f}", "convert rows/s": f"{args.csv_rows / total_s:,.0f}",
                "convert speed-up": f"{base_total / total_s:.2f}x", "CPU capacity": f"{capacity:.2f}x"})
        report.note("CPU capacity: pure-CPU tasks in N processes vs 1, measured just before the row (an idle machine "
                    f"gives ~N); load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
