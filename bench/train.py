"""Training-step speed and peak memory on CPU, OFA-base size (d 768, 6+6 layers, 12 heads, resnet101, 480 px):

  velora LoRA (q_proj,v_proj r=8) with ResNet features computed once   <- what `velora train` does
  velora LoRA without the feature cache (the frozen ResNet runs every step)
  velora full fine-tuning (every parameter trains)
  velora LoRA with cached features under bf16 autocast (`velora train --bf16 true` on a CPU with AVX-512 BF16/AMX)
  the reference implementation wrapped with PEFT LoRA (shared/oracle venv), fp32 and under bf16 autocast

    python bench/train.py [--batch 4] [--steps 3]

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
from common import ORACLE_PYTHON, REPO, SHARED, markdown_table, reference_checkpoint  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", choices=VELORA_CONFIGS)
    args = parser.parse_args()
    model_dir = reference_checkpoint()
    if args.worker:
        print(json.dumps(worker(args.worker, model_dir, args.batch, 480, args.steps)))
        return
    results = {config: run(config, model_dir, args) for config in CONFIGS}
    reference, full = results["reference_peft"], results["full"]
    rows = [[name, f"{r['samples_per_second']:.3f}", f"{r['seconds_per_step']:.2f}",
             f"{r['peak_mb_above_weights']:.0f}",
             f"{r['samples_per_second'] / reference['samples_per_second']:.2f}x",
             f"{r['peak_mb_above_weights'] / full['peak_mb_above_weights']:.2f}x"] for name, r in results.items()]
    print(f"batch {args.batch}, 480 px, {torch.get_num_threads()} threads, {args.steps} timed steps after 1 warm-up")
    print(markdown_table(["configuration", "samples/s", "s/step", "peak MB above weights", "speed vs reference+PEFT",
                          "memory vs full FT"], rows))


if __name__ == "__main__":
    main()
