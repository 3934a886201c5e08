"""Training-step speed and peak memory on CPU, OFA-base size (d 768, 6+6 layers, 12 heads, resnet101, 480 px):

  velora LoRA (q_proj,v_proj r=8) with ResNet features computed once   <- what `velora train` does
  velora LoRA without the feature cache (the frozen ResNet runs every step)
  velora full fine-tuning (every parameter trains)
  velora LoRA with cached features under bf16 autocast (`velora train --bf16 true` on a CPU with AVX-512 BF16/AMX)
  the reference implementation wrapped with PEFT LoRA (shared/oracle venv), fp32 and under bf16 autocast

    python bench/train.py [--batch 4] [--steps 3] [--rows ROWS]

Rows are printed as each configuration finishes (the reference first, then full fine-tuning: the two the ratios
are taken against). The bf16 rows run only on a CPU with AVX-512 BF16 or AMX; elsewhere a line says they were
skipped (emulated bf16 took over 20 minutes on a 2-core AVX2 CPU).

Each configuration runs in its own process, so its peak RSS is its own; memory is reported as the peak above the
RSS after the model is loaded (weights are the same in every configuration).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ORACLE_PYTHON, REPO, SHARED, Report, add_report_arguments, machine_line,  # noqa: E402
                    native_bf16, reference_checkpoint)

CONFIGS = ["lora_cached", "lora_uncached", "full", "lora_cached_bf16", "reference_peft", "reference_peft_bf16"]
VELORA_CONFIGS = [c for c in CONFIGS if not c.startswith("reference")]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch(batch: int, image: int, tokenizer_dir: Path) -> dict:
    from velora.ofa.processor import OFAProcessor

    processor = OFAProcessor.from_pretrained(tokenizer_dir)
    pairs = [("a man in a red shirt rides a bike down the street.", "a person is outdoors."),
             ("two dogs play in the snow", "the animals are sleeping inside a warm house"),
             ("a woman holds an umbrella.", "it is raining."), ("kids on a beach", "people are outside")]
    text = processor.collate([processor.encode_text(h, p) for p, h in (pairs * batch)[:batch]])
    g = torch.Generator().manual_seed(0)
    return {**text.model_inputs(), "patch_images": torch.rand(batch, 3, image, image, generator=g) * 2 - 1,
            "labels": torch.tensor([0, 1, 2, 0] * batch)[:batch]}


def velora_step_fn(config: str, model_dir: Path, batch: dict):
    from peft import LoraConfig, get_peft_model

    from velora.ofa.checkpoint import load_pretrained
    from velora.ofa.entailment import OFAForVisualEntailment

    model = load_pretrained(model_dir, OFAForVisualEntailment, answer_ids=[4420, 117, 2085])
    baseline = rss_mb()
    if config == "full":
        trainable = model
    else:  # the encoder's image bias cache is used, as in `velora train`: the position weights are frozen
        trainable = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                     target_modules=["q_proj", "v_proj"]))
    trainable.train()
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-4)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if config.startswith("lora_cached"):  # what ImageStore.cache_features does once per image before training
        with torch.inference_mode():
            model.eval()
            inputs["image_features"] = model.image_features(inputs.pop("patch_images")).clone()
            trainable.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.endswith("_bf16")):
            logits = trainable(**inputs)
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, baseline


def worker(config: str, model_dir: Path, batch_size: int, image: int, steps: int) -> dict:
    torch.manual_seed(0)
    batch = make_batch(batch_size, image, model_dir)
    step, baseline = velora_step_fn(config, model_dir, batch)
    step()  # warm-up (allocations, oneDNN kernels)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"seconds_per_step": seconds, "samples_per_second": batch_size / seconds,
            "peak_mb_above_weights": rss_mb() - baseline}


def run(config: str, model_dir: Path, args) -> dict:
    if config.startswith("reference_peft"):
        command = [str(ORACLE_PYTHON), str(REPO / "bench" / "reference_train.py")]
        payload = {"model_dir": str(model_dir), "batch": args.batch, "steps": args.steps,
                   "bf16": config.endswith("_bf16")}
        env_path = str(SHARED / "oracle")
        result = subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True,
                                env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    else:
        command = [sys.executable, __file__, "--worker", config, "--batch", str(args.batch), "--steps",
                   str(args.steps)]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{config} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


LABELS = {"lora_cached": "velora LoRA, ResNet features computed once (what `velora train` does)",
          "lora_uncached": "velora LoRA, ResNet every step", "full": "velora full fine-tuning",
          "lora_cached_bf16": "velora LoRA, features once, bf16 autocast (`--bf16 true`)",
          "reference_peft": "reference + PEFT LoRA, fp32", "reference_peft_bf16": "reference + PEFT LoRA, bf16 autocast"}
ORDER = ["reference_peft", "full", "lora_cached", "lora_uncached", "lora_cached_bf16", "reference_peft_bf16"]
COLUMNS = ["configuration", "samples/s", "s/step", "peak MB above weights", "speed vs reference+PEFT (fp32)",
           "memory vs full FT"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", choices=VELORA_CONFIGS)
    add_report_arguments(parser, CONFIGS)
    args = parser.parse_args()
    model_dir = reference_checkpoint()
    if args.worker:
        print(json.dumps(worker(args.worker, model_dir, args.batch, 480, args.steps)))
        return
    report = Report("train", COLUMNS, args)
    report.note(f"{machine_line()}; batch {args.batch}, 480 px, {args.steps} timed steps after 1 warm-up")
    results: dict[str, dict] = {}
    for config in [c for c in ORDER if report.wanted(c)]:
        if config.endswith("_bf16") and not native_bf16():
            report.skip(config, "bf16 without AVX-512 BF16 or AMX units is emulated (over 20 minutes on a 2-core "
                                "CPU); run on a CPU that has them")
            continue
        r = results[config] = run(config, model_dir, args)
        reference, full = results.get("reference_peft"), results.get("full")
        report.row(config, {
            "configuration": LABELS[config], "samples/s": f"{r['samples_per_second']:.3f}",
            "s/step": f"{r['seconds_per_step']:.2f}", "peak MB above weights": f"{r['peak_mb_above_weights']:.0f}",
            "speed vs reference+PEFT (fp32)":
                f"{r['samples_per_second'] / reference['samples_per_second']:.2f}x" if reference else "-",
            "memory vs full FT": f"{r['peak_mb_above_weights'] / full['peak_mb_above_weights']:.2f}x" if full else "-",
            **r})


if __name__ == "__main__":
    main()
