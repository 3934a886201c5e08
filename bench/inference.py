"""Inference speed of `Predictor.predict_batch` vs the reference OFA implementation, on the same random weights
of an OFA-base-size model (d 768, 6+6 layers, 12 heads, resnet101, 480 px), CPU fp32, plus int8.

    python bench/inference.py [--examples 8] [--repeats 3] [--rows ROWS]

Prints the machine's fp32 matmul peak measured in the same run, the FLOPs of one sample (counted with
torch.utils.flop_counter), then each row as it is measured: achieved GFLOP/s and the share of peak, and the
probabilities' max difference (fp32 against the reference; int8 against velora fp32).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from common import (REPO, Report, add_report_arguments, best_time, machine_line, matmul_peak_gflops,
                    reference_checkpoint, run_reference)
from velora.predictor import Predictor

PAIRS = [
    ("a man in a red shirt rides a bike down the street.", "a person is outdoors."),
    ("two dogs play in the snow", "the animals are sleeping inside a warm house near the fire place"),
    ("a woman holds an umbrella.", "it is raining."),
    ("a stainless steel coffee maker on a kitchen counter", "this appliance brews hot beverages"),
]


def make_examples(n: int, distinct_images: int | None = None):
    rng = np.random.default_rng(0)
    pool = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(distinct_images or n)]
    images = [pool[i % len(pool)] for i in range(n)]
    premises = [PAIRS[i % len(PAIRS)][0] for i in range(n)]
    hypotheses = [PAIRS[i % len(PAIRS)][1] for i in range(n)]
    return images, premises, hypotheses


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and PV of the CPU flash-attention kernel, which torch's FlopCounterMode does not count by itself."""
    b, h, t, e = query_shape
    s = key_shape[-2]
    return 4 * b * h * t * s * e


def count_flops(predictor: Predictor, example) -> float:
    """FLOPs (2 per multiply-add) of scoring `example`: every matmul, convolution and attention."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        predictor.probabilities(*example)
    return counter.get_total_flops()


def prepared_tensors(predictor: Predictor, images, premises, hypotheses, path: Path) -> Path:
    """The exact tensors velora scores, for the reference to score too."""
    batch = predictor.processor(images, premises, hypotheses)
    torch.save({"input_ids": batch["input_ids"], "decoder_input_ids": batch["decoder_input_ids"],
                "answer_positions": batch["answer_positions"], "patch_images": batch["patch_images"],
                "answer_ids": predictor.processor.answer_ids}, path)
    return path


ROWS = ["reference-b1", "reference-b4", "fp32-b1", "fp32-b4", "fp32-b4-one-image", "int8-b4"]
COLUMNS = ["run", "samples/s", "s/sample", "GFLOP/s", "% of peak", "max abs Δp vs reference"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true", help="same as leaving the reference-* rows out")
    add_report_arguments(parser, ROWS)
    args = parser.parse_args()
    report = Report("inference", COLUMNS, args)

    torch.manual_seed(0)
    peak = matmul_peak_gflops()
    report.note(f"{machine_line()}; fp32 matmul peak {peak:.1f} GFLOP/s (2048^3, measured now)")
    model_dir = reference_checkpoint()
    predictor = Predictor.from_pretrained(model_dir, device="cpu", dtype="float32")
    example = make_examples(args.examples)
    flops_per_sample = count_flops(predictor, make_examples(1))
    tokens = len(predictor.processor.encode_text(PAIRS[0][1], PAIRS[0][0]))
    report.note(f"FLOPs per sample (one 480 px image, a {tokens}-token prompt; matmuls, convolutions, attention): "
                f"{flops_per_sample / 1e9:.1f} GFLOP")
    velora_probs = predictor.probabilities(*example)
    speeds: dict[str, float] = {}

    def add_row(name: str, label: str, seconds: float, probs_diff: float | None, flops: float = flops_per_sample):
        per_second = args.examples / seconds
        achieved = flops * per_second / 1e9
        speeds[name] = per_second
        report.row(name, {"run": label, "samples/s": f"{per_second:.3f}", "s/sample": f"{seconds / args.examples:.3f}",
                          "GFLOP/s": f"{achieved:.1f}", "% of peak": f"{100 * achieved / peak:.0f}%",
                          "max abs Δp vs reference": "-" if probs_diff is None else f"{probs_diff:.1e}"})

    diff = None
    if report.any_wanted("reference-*") and not args.skip_reference:
        with tempfile.TemporaryDirectory() as tmp:
            tensors = prepared_tensors(predictor, *example, Path(tmp) / "inputs.pt")
            sizes = [int(name.split("-b")[1]) for name in ("reference-b1", "reference-b4") if report.wanted(name)]
            reference = run_reference(REPO / "bench" / "reference_inference.py",
                                      {"model_dir": str(model_dir), "inputs": str(tensors), "batch_sizes": sizes,
                                       "repeats": args.repeats})
        diff = float((velora_probs - torch.tensor(reference["probs"])).abs().max())
        for batch_size, seconds in reference["seconds"].items():
            add_row(f"reference-b{batch_size}", f"reference batch {batch_size}", seconds, 0.0)
    for batch_size in (1, 4):
        if report.wanted(f"fp32-b{batch_size}"):
            seconds = best_time(lambda: predictor.probabilities(*example, batch_size=batch_size), args.repeats)
            add_row(f"fp32-b{batch_size}", f"velora fp32 batch {batch_size}", seconds, diff)
    if report.wanted("fp32-b4-one-image"):
        shared_image = make_examples(args.examples, distinct_images=1)
        seconds = best_time(lambda: predictor.probabilities(*shared_image, batch_size=4), args.repeats)
        add_row("fp32-b4-one-image", "velora fp32 batch 4, one image x 4 hypotheses", seconds, None,
                count_flops(predictor, shared_image) / args.examples)
    if report.wanted("int8-b4"):  # bench/quantize.py measures int8 in depth; this is `--quantize int8` as shipped
        int8 = Predictor.from_pretrained(model_dir, device="cpu", quantize="int8")
        int8_diff = float((int8.probabilities(*example) - velora_probs).abs().max())
        seconds = best_time(lambda: int8.probabilities(*example, batch_size=4), args.repeats)
        add_row("int8-b4", f"velora --quantize int8 batch 4 ({int8.description.split('(', 1)[-1].rstrip(')')})",
                seconds, int8_diff)
    references = [v for k, v in speeds.items() if k.startswith("reference")]
    if references and "fp32-b4" in speeds:
        report.note(f"velora fp32 batch 4 / best reference: {speeds['fp32-b4'] / max(references):.2f}x")
    if "int8-b4" in speeds and "fp32-b4" in speeds:
        report.note(f"int8 / fp32 (batch 4): {speeds['int8-b4'] / speeds['fp32-b4']:.2f}x (int8's max |Δp| is "
                    "against velora fp32)")


if __name__ == "__main__":
    main()
