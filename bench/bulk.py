"""Throughput and memory of `velora predict --input_file` (velora.predict.predict_file), against baselines measured
in the same run.

    python bench/bulk.py [--image_size 256] [--images 12] [--per_image 4] [--loop_rows 8] [--rounds 3]
                         [--threads N] [--rss_rows 10000 100000] [--skip_speed] [--skip_rss]

Speed: the OFA-base-size benchmark model (bench/common.py reference_checkpoint: d 768, 6+6 layers, 12 heads,
resnet101, random weights), CPU fp32 on --threads threads (default: every core; on a machine that other jobs load,
1 keeps torch's threads from spinning against them), images scored at --image_size (256 px by default so that the
run fits in ~10 minutes on 2 cores; 480 px costs ~2.5x more per row and changes no ratio much). The input is a
CSV of --images camera-like 640x480 JPEGs on disk with --per_image hypotheses each (the guide's 6.1: a product
photo, hypotheses generated for it):

    loop           velora.predict.predict, the Python API of `velora predict`, one row at a time (--loop_rows)
    predict_batch  Predictor.predict_batch(batch_size=16) on images decoded and resized beforehand: the model alone
    bulk           predict_file on the CSV (reading, JPEG decoding and resizing in one DataLoader worker, the
                   model, JSONL written, merged and renamed), the whole call timed
    bulk, steady   the same run from its first batch on (as its summary reports it): without the plan and the
                   worker's start (a few seconds, once per run; the command line overlaps it with model loading)

predict_batch and bulk alternate for --rounds rounds (the fastest run of each kept); ratios are against them. Each
run also prints its CPU seconds per row (this process plus the bulk run's worker): steadier than wall time when
other jobs share the machine.

Memory: peak RSS of predict_file in a fresh process for each of --rss_rows rows (a tiny random OFA, d 32, 2+2
layers, resnet18, at 16 px and one thread, so that 100,000 rows take minutes; 64 rows per batch, 8 rows per 64x48
JPEG, labelled), the main process and its decoding worker apart. Constant memory = the same peak at 10,000 and
100,000 rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common import markdown_table, reference_checkpoint
import serve
from serve import camera_images, checkpoint
from velora.bundle import ModelBundle
from velora.images import load_image
from velora.labels import LABELS
from velora.predict import predict, predict_file
from velora.predictor import Predictor

PREMISE = "a stainless steel coffee maker on a kitchen counter"
# The memory part measures the pipeline, not the model: the smallest OFA that still has every part.
TINY = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18")
HYPOTHESES = ["this appliance brews hot beverages", "the machine is switched off and unplugged.",
              "there is a red mug next to it", "it is outdoors", "the counter is made of marble",
              "a person is using it"]


def write_rows(folder: Path, images: int, per_image: int, size: tuple[int, int] = (640, 480)) -> Path:
    """`images` JPEGs under folder/images and a CSV of `per_image` rows per image (labels cycling)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(camera_images(min(images, 256), size=max(size))):
        image = Image.open(io.BytesIO(data)).resize(size)
        image.save(folder / "images" / f"{i}.jpg", quality=85)
    path = folder / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "premise", "hypothesis", "label", "sku"])
        for row in range(images * per_image):
            writer.writerow([f"images/{(row // per_image) % 256}.jpg", PREMISE, HYPOTHESES[row % len(HYPOTHESES)],
                             LABELS[row % 3], f"sku-{row}"])
    return path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the bulk run's decoding worker)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def speed(args: argparse.Namespace, tmp: Path) -> None:
    predictor = Predictor.from_pretrained(reference_checkpoint(), device="cpu", image_size=args.image_size)
    source = write_rows(tmp, args.images, args.per_image)
    rows = read_rows(source)
    paths = [str(tmp / r["image_path"]) for r in rows]
    premises, hypotheses = [r["premise"] for r in rows], [r["hypothesis"] for r in rows]
    processor = predictor.processor
    decoded = {p: processor.resize(load_image(p)) for p in dict.fromkeys(paths)}  # before any timing
    images = [decoded[p] for p in paths]
    print(f"{len(rows)} rows, {len(decoded)} images ({args.per_image} rows each), {args.image_size} px, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    predictor.predict_batch(images[:2], premises[:2], hypotheses[:2])  # warm-up

    results: dict[str, list[tuple[float, float]]] = {"loop": [], "predict_batch": [], "bulk": [], "bulk, steady": []}

    def measure(name: str, n: int, run) -> Any:
        wall, cpu = time.perf_counter(), cpu_seconds()
        out = run()
        report(name, n, time.perf_counter() - wall, cpu_seconds() - cpu)
        return out

    def report(name: str, n: int, seconds: float, cpu: float) -> None:
        results[name].append((n / seconds, cpu / n))
        print(f"  {name:<14} {n:>4} rows {seconds:7.1f} s {n / seconds:7.3f} rows/s, {cpu / n:6.3f} CPU s/row",
              flush=True)

    n = min(args.loop_rows, len(rows))
    measure("loop", n, lambda: [predict(predictor, paths[i], premises[i], hypotheses[i]) for i in range(n)])
    for round_ in range(args.rounds):  # the two alternate, first one then the other first: load hits both alike
        order = ["predict_batch", "bulk"] if round_ % 2 == 0 else ["bulk", "predict_batch"]
        for name in order:
            if name == "predict_batch":
                measure(name, len(rows), lambda: predictor.predict_batch(images, premises, hypotheses, batch_size=16))
                continue
            out = tmp / f"preds-{round_}.jsonl"
            result = measure(name, len(rows), lambda: predict_file(predictor, source, out, num_workers=1,
                                                                   batch_size=16))
            report("bulk, steady", len(rows), result.seconds, results["bulk"][-1][1] * len(rows))

    best = {name: max(values) for name, values in results.items()}  # fastest run of each
    table = [[name, f"{best[name][0]:.3f}", f"{best[name][0] / best['predict_batch'][0]:.2f}x",
              f"{best[name][0] / best['loop'][0]:.2f}x", f"{min(v[1] for v in results[name]):.3f}"]
             for name in results]
    print(markdown_table(["", "rows/s (best)", "vs predict_batch", "vs loop", "CPU s/row (least)"], table),
          flush=True)


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from a parent through fork/exec)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


def rss_child(model: str, source: str, output: str) -> None:
    """One predict_file run in this fresh process; prints its peak RSS and its worker's (sampled twice a second:
    VmHWM is a peak, so a sample just before the worker exits holds it)."""
    import psutil  # deferred: only this child samples its workers

    workers: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            for child in psutil.Process().children(recursive=True):
                workers[child.pid] = max(workers.get(child.pid, 0.0), peak_rss_mb(child.pid))

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    result = predict_file(ModelBundle.resolve(model, image_size=16), source, output, device="cpu", batch_size=64,
                          num_workers=1, chunk_size=1024)
    done.set()
    print(json.dumps({"rows": result.rows, "seconds": time.perf_counter() - start, "main_mb": peak_rss_mb(),
                      "worker_mb": max(workers.values(), default=0.0)}))


def memory(args: argparse.Namespace, tmp: Path) -> None:
    serve.PRESETS.setdefault("bulk-tiny", (TINY, 16))
    model = checkpoint("bulk-tiny")
    found = []
    for n in args.rss_rows:
        source = write_rows(tmp / f"rss-{n}", n // 8, 8, size=(64, 48))
        out = subprocess.run([sys.executable, __file__, "--rss_child", str(model), str(source),
                              str(tmp / f"rss-{n}" / "preds.jsonl")], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        found.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = found[-1]
        print(f"  {r['rows']:>7,} rows {r['seconds']:7.1f} s: main peak {r['main_mb']:7.1f} MB, worker peak "
              f"{r['worker_mb']:7.1f} MB", flush=True)
    first = found[0]
    print(markdown_table(["rows", "s", "rows/s", "main peak RSS MB", "worker peak RSS MB", "main vs first"],
                         [[f"{r['rows']:,}", f"{r['seconds']:.0f}", f"{r['rows'] / r['seconds']:.0f}",
                           f"{r['main_mb']:.1f}", f"{r['worker_mb']:.1f}", f"{r['main_mb'] / first['main_mb']:.3f}x"]
                          for r in found]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--per_image", type=int, default=4)
    parser.add_argument("--loop_rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the speed part [every core]")
    parser.add_argument("--rss_rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--skip_rss", action="store_true")
    parser.add_argument("--rss_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="velora-bench-bulk-") as tmp:
        if not args.skip_speed:
            speed(args, Path(tmp))
        if not args.skip_rss:
            memory(args, Path(tmp))


if __name__ == "__main__":
    main()
