"""Latency (batch 1, CPU) and size on disk of the deployable forms of one fine-tuned model, OFA-base size
(d 768, 6+6 layers, 12 heads, ffn 3072, resnet101, 480 px), random weights plus a random LoRA adapter (r 16 on
q_proj/v_proj):

    torch fp32 + LoRA adapter (the baseline: what `velora train` leaves you)
    torch fp32 merged, torch fp16 merged, torch bf16 merged          (`velora merge [--dtype ...]`)
    ONNX fp32, ONNX int8 (dynamic)                                   (`velora export onnx [--quantize int8]`)

    python bench/export.py [--repeats 3] [--rounds 2] [--threads 1] [--image_size 480] [--skip_half]

One example end to end (image preprocessing, prompt encoding, model), each form in fresh processes (--rounds,
interleaved), best of --repeats runs after a warm-up; the speed ratio is against the baseline measured in the same
run. With one thread per runtime (the default) the CPU time is the robust figure on a shared machine and the wall
time equals it on an idle one. fp16 matmuls on a CPU without native fp16 are emulated and slow: that row is a size
figure for GPUs and edge boxes, its CPU latency is reported as measured (once, when over 10 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import markdown_table
from velora.export import OnnxPredictor, export_onnx
from velora.merge import human_size, merge_lora
from velora.bundle import save_model_dir
from velora.ofa.checkpoint import load_pretrained, randomize_
from velora.ofa.config import OFAConfig
from velora.ofa.model import OFAModel
from velora.ofa.processor import OFAProcessor
from velora.predictor import Predictor

SLOW_SECONDS = 10.0
OFA_BASE = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, resnet_type="resnet101")
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
PREMISE, HYPOTHESIS = "a stainless steel coffee maker on a kitchen counter", "this appliance brews hot beverages"


def write_base(directory: Path, image_size: int) -> Path:
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = randomize_(OFAModel(OFAConfig(**OFA_BASE)), seed=0)
    return save_model_dir(model.eval(), OFAProcessor.default(image_size=image_size), directory)


def write_adapter(base_dir: Path, directory: Path, r: int = 16) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(load_pretrained(base_dir), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                                      target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(directory)
    return directory


def files_size(*paths: Path) -> int:
    return sum(p.stat().st_size for path in paths for p in ([path] if path.is_file() else path.rglob("*"))
               if p.is_file())


def latency(form: str, path: Path, repeats: int, threads: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of one example, in this process (see `isolated`). A form slower than
    SLOW_SECONDS is timed once, its first run (one-time costs are small beside it)."""
    torch.set_num_threads(threads)
    if form == "onnx":
        onnx = OnnxPredictor.from_file(path, threads=threads)
        run = lambda: onnx.probabilities([IMAGE], [PREMISE], [HYPOTHESIS], batch_size=1)  # noqa: E731
    else:
        predictor = Predictor.from_pretrained(path, device="cpu", dtype=form)
        run = lambda: predictor.predict(IMAGE, PREMISE, HYPOTHESIS)  # noqa: E731
    times = []
    for i in range(repeats + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
        if i == 0 and times[0][0] > SLOW_SECONDS:
            return times[0]
    return min(t[0] for t in times[1:]), min(t[1] for t in times[1:])


def isolated(form: str, path: Path, repeats: int, threads: int) -> tuple[float, float]:
    """`latency` in a fresh process: no thread pool of another runtime left spinning, no shared caches."""
    out = subprocess.run([sys.executable, __file__, "--time", form, str(path), "--repeats", str(repeats),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per process, after one warm-up.")
    parser.add_argument("--rounds", type=int, default=2, help="Fresh processes per form, interleaved.")
    parser.add_argument("--image_size", type=int, default=480)
    parser.add_argument("--skip_half", action="store_true", help="Skip the fp16/bf16 rows (slow on CPU).")
    parser.add_argument("--threads", type=int, default=1,
                        help="Threads per runtime (1: CPU time is then a fair measure on a busy machine).")
    parser.add_argument("--time", nargs=2, metavar=("FORM", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time:
        print(*latency(args.time[0], Path(args.time[1]), args.repeats, args.threads))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s) per runtime, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="velora-bench-export-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        base = write_base(tmp / "base", args.image_size)
        adapter = write_adapter(base, tmp / "lora")
        print(f"wrote OFA-base-size model + adapter in {time.perf_counter() - start:.0f}s")

        forms = [("torch fp32 + LoRA adapter", "float32", adapter,
                  files_size(base / "model.safetensors", adapter / "adapter_model.safetensors"))]
        for name in ["float32"] + ([] if args.skip_half else ["float16", "bfloat16"]):
            start = time.perf_counter()
            merged = merge_lora(adapter, tmp / f"merged_{name}", dtype=name)
            print(f"merge {name}: {time.perf_counter() - start:.0f}s")
            forms.append((f"torch {name} merged", name, merged.output_dir,
                          files_size(merged.output_dir / "model.safetensors")))

        start = time.perf_counter()
        exported = export_onnx(tmp / "merged_float32", tmp / "onnx" / "model.onnx", quantize="int8")
        print(f"export (torch.export) + int8: {time.perf_counter() - start:.0f}s")
        start = time.perf_counter()
        legacy = export_onnx(tmp / "merged_float32", tmp / "onnx_legacy" / "model.onnx", exporter="torchscript")
        print(f"export (TorchScript exporter): {time.perf_counter() - start:.0f}s")
        forms.append(("ONNX fp32 (torch.export)", "onnx", exported.fp32_path, exported.fp32_size_bytes))
        forms.append(("ONNX fp32 (TorchScript exporter)", "onnx", legacy.output, legacy.size_bytes))
        forms.append(("ONNX int8 (dynamic)", "onnx", exported.output, exported.size_bytes))

        best = {name: (float("inf"), float("inf")) for name, *_ in forms}
        for round_ in range(args.rounds):  # interleaved, so a burst of load elsewhere hits every form alike
            for name, form, path, _ in forms:
                if round_ and best[name][0] > SLOW_SECONDS:
                    continue
                wall, cpu = isolated(form, path, args.repeats, args.threads)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            print(f"round {round_ + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}")
        rows = [[name, *best[name], size] for name, _, _, size in forms]
        baseline = best[forms[0][0]][1]

    table = [[name, f"{wall * 1000:.0f}", f"{cpu * 1000:.0f}", f"{baseline / cpu:.2f}x", human_size(size)]
             for name, wall, cpu, size in rows]
    print(f"\nOFA-base size, {args.image_size} px, batch 1, {args.threads} thread(s), {os.cpu_count()}-CPU machine")
    print(markdown_table(["form", "wall ms", "CPU ms", "speed vs baseline (CPU)", "size on disk"], table))

if __name__ == "__main__":
    main()
