"""`velora train`: LoRA fine-tuning of OFA visual entailment, a recipe to read top to bottom.

    setup:  arguments -> base model (frozen, BatchNorm in eval) -> LoRA adapter -> data (+ ResNet features computed
            once) -> collator -> metrics -> Trainer
    train:  baseline evaluation at step 0 (the base model), evaluation every eval_steps, checkpoints every
            save_steps (atomic: a cut-off save never looks complete), resumable after kill -9
    save:   the best adapter by macro-F1 in PEFT layout, plus what `velora predict --model_path OUT` needs
    report: metrics.json (baseline vs final), training_curve.png, trainer_state.json, TensorBoard events

Loss: cross-entropy over the three answer logits (" yes", " no", " maybe") at the answer position, the official
constrained loss; optional class weights for imbalanced data.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from velora.bundle import ModelBundle
from velora.convert import convert
from velora.data import load_training_splits
from velora.errors import VeloraError
from velora.labels import LABELS
from velora.train_args import RunArguments, TrainArguments, parse_train_args
from velora.train_data import ImageStore, VECollator, build_split
from velora.train_report import (VeloraLogCallback, TrainerStateFileCallback, compute_eval_metrics,
                                 plot_training_curve, write_json_atomic)

COMPLETE_MARKER = "velora_checkpoint_complete.json"
RUN_FILE = "velora_run.json"


# ----------------------------------------------------------------------------------------------------------------
# Trainer: the loss, and checkpoints that are either complete or visibly not


class VETrainer(Trainer):
    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = model(**inputs)  # (B, 3): entailment, contradiction, neutral
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = F.cross_entropy(logits.float(), labels, weight=weight)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once this checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            _sync_tree(checkpoint)
            write_json_atomic(checkpoint / COMPLETE_MARKER, {"global_step": self.state.global_step})
            rotate_checkpoints(str(run_dir), limit, self.state.best_model_checkpoint)


def _sync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def complete_checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / COMPLETE_MARKER).exists()), key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(output_dir: Path, resume: str | None, remove_partial: bool = True) -> str | None:
    """`auto`: the newest complete checkpoint (None if there is none); a path must be complete. Checkpoints cut off
    by a kill are removed, so nothing can mistake them for complete ones."""
    if not resume:
        return None
    complete = complete_checkpoints(output_dir) if output_dir.exists() else []
    partials = set(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")) - set(complete) if output_dir.exists() else set()
    for partial in partials if remove_partial else ():
        print(f"Removing {partial}: its save was cut off before completing")
        shutil.rmtree(partial, ignore_errors=True)
    if resume == "auto":
        return str(complete[-1]) if complete else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).exists():
        later = f"; complete ones: {', '.join(p.name for p in complete)}" if complete else ""
        raise VeloraError(f"--resume_from_checkpoint {resume}: not a complete checkpoint{later}")
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Setup, in dependency order


def check_output_dir(output_dir: Path, run: RunArguments, resuming: bool) -> None:
    holds_run = output_dir.exists() and any(
        (output_dir / name).exists() for name in ("adapter_config.json", RUN_FILE)) or any(
        output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    if holds_run and not resuming and not run.overwrite_output_dir:
        raise VeloraError(f"--output_dir {output_dir} already holds a training run; pass --overwrite_output_dir to "
                          "replace it, or --resume_from_checkpoint auto to continue it")
    if holds_run and run.overwrite_output_dir and not resuming:
        shutil.rmtree(output_dir)


def load_base(model_path: str, lora, image_size: int | None = None) -> tuple:
    """The base model's bundle, the frozen model and a fresh LoRA adapter on it."""
    from peft import LoraConfig, get_peft_model

    bundle = ModelBundle.resolve_base(model_path, image_size=image_size, flag="--model_name_or_path",
                                      advice="train from its base model (or merge it first with `velora merge`)")
    model = bundle.load_model()
    targets = [t.strip() for t in lora.lora_target_modules.split(",") if t.strip()]
    config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=targets, bias="none")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise VeloraError(f"--lora_target_modules {lora.lora_target_modules}: {e}") from None
    peft_model.peft_config["default"].base_model_name_or_path = bundle.base_reference
    return bundle, model, peft_model


def load_data(args: TrainArguments, output_dir: Path):
    """The converted dataset: --dataset_name DIR, or --train_file converted now into OUTPUT/dataset."""
    data = args.data
    if data.train_file:
        target = output_dir / "dataset"
        if not target.exists():
            print(f"Converting {data.train_file} -> {target}")
            report = convert(data.train_file, target, image_root=data.image_root, val_ratio=data.val_ratio,
                             seed=args.training.seed, progress=True)
            print(report.summary() if hasattr(report, "summary") else "")
        path = target
    elif data.dataset_name:
        path = Path(data.dataset_name)
    else:
        raise VeloraError("no training data: pass --dataset_name DIR (made by `velora convert`) or --train_file CSV")
    return load_training_splits(path)


def class_weights(choice: str, labels: list[int]) -> torch.Tensor | None:
    """none | balanced (inverse frequency, sklearn's formula) | three comma-separated weights."""
    if choice in ("", "none"):
        return None
    if choice == "balanced":
        counts = torch.bincount(torch.tensor(labels), minlength=len(LABELS)).float()
        return torch.where(counts > 0, len(labels) / (len(LABELS) * counts.clamp(min=1)), torch.zeros(1))
    try:
        weights = [float(w) for w in choice.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(LABELS) or min(weights, default=-1) < 0:
        raise VeloraError(f"--class_weights {choice!r}: use none, balanced, or three weights like 1,1,2 "
                          f"({', '.join(LABELS)})")
    return torch.tensor(weights)


def feature_cache_allowed(peft_model) -> bool:
    """Cached ResNet features are valid only while nothing in the ResNet trains."""
    return not any(p.requires_grad for n, p in peft_model.named_parameters() if ".embed_images." in n)


def trainable_summary(peft_model) -> str:
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)"


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run at about twice the fp32 rate (measured in bench/train.py)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def precision_hint(training) -> str | None:
    """A tip for fp32 training on a CPU that could run bf16 autocast instead."""
    if training.device.type != "cpu" or training.bf16 or training.fp16 or not cpu_has_fast_bf16():
        return None
    return ("Training in fp32 on a CPU with bf16 support: add --bf16 true for bf16 autocast, about 2x faster "
            "(the adapter is still saved in fp32)")


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def train(args: TrainArguments) -> dict:
    """Run the whole recipe; returns the metrics written to OUTPUT/metrics.json."""
    output_dir = Path(args.training.output_dir)
    first = args.training.process_index == 0  # with torchrun, only the first process touches OUTPUT_DIR's contents
    with args.training.main_process_first(desc="preparing the output directory"):
        resume = resolve_resume(output_dir, args.training.resume_from_checkpoint, remove_partial=first)
        if first:
            check_output_dir(output_dir, args.run, resuming=resume is not None)
            output_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "runs")

    set_seed(args.training.seed)  # the LoRA initialisation too
    bundle, model, peft_model = load_base(args.model.model_name_or_path, args.lora, args.model.image_size)
    print(trainable_summary(peft_model))
    if hint := precision_hint(args.training):
        print(hint)

    with args.training.main_process_first(desc="converting the training file"):
        dataset = load_data(args, output_dir)
    store, index = ImageStore(bundle.processor, []), {}
    train_set = build_split(dataset["train"], "train", store, index)
    eval_set = build_split(dataset["validation"], "validation", store, index) \
        if "validation" in dataset and len(dataset["validation"]) else None
    if args.data.cache_image_features and feature_cache_allowed(peft_model):
        store.cache_features(model, args.training.device)
    collator = VECollator(store)
    args.training.eval_on_start = eval_set is not None and resume is None  # the base model's baseline at step 0
    if eval_set is None:
        print("No validation split: training without evaluation; the last checkpoint is the result")
        args.training.eval_strategy = "no"
        args.training.load_best_model_at_end = False

    save_run_file(output_dir, args, bundle)
    trainer = VETrainer(model=peft_model, args=args.training, train_dataset=train_set, eval_dataset=eval_set,
                        data_collator=collator, compute_metrics=compute_eval_metrics,
                        class_weights=class_weights(args.data.class_weights, train_set.labels),
                        callbacks=[TrainerStateFileCallback(output_dir)])
    VeloraLogCallback.install(trainer)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError:
        raise VeloraError("out of memory: lower --per_device_train_batch_size (and raise "
                          "--gradient_accumulation_steps to keep the effective batch), add --gradient_checkpointing, "
                          "or lower --image_size") from None

    if trainer.is_world_process_zero():
        return save_outputs(trainer, output_dir, bundle, args)
    return {}


def save_run_file(output_dir: Path, args: TrainArguments, bundle: ModelBundle) -> None:
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    write_json_atomic(output_dir / RUN_FILE, {
        "base_model": bundle.base_reference,
        "model": asdict(args.model), "data": asdict(args.data), "lora": asdict(args.lora),
        "training": {k: v for k, v in args.training.to_dict().items() if not k.startswith("_")},
    })


def save_outputs(trainer: VETrainer, output_dir: Path, bundle: ModelBundle, args: TrainArguments) -> dict:
    """The best adapter (PEFT layout) + tokenizer + preprocessing, then metrics.json and the training curve."""
    trainer.save_model(str(output_dir))  # adapter_config.json + adapter_model.safetensors of the loaded best model
    bundle.processor.save_pretrained(output_dir)
    history = trainer.state.log_history
    evals = [h for h in history if "eval_accuracy" in h]
    baseline = next((h for h in evals if h.get("step", 0) == 0), None)
    best_step = _step_of(trainer.state.best_model_checkpoint)
    final = next((h for h in evals if h.get("step") == best_step), evals[-1] if evals else None)
    metrics = {
        "base_model": str(bundle.base_dir),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "baseline": _eval_summary(baseline),
        "final": _eval_summary(final),
        "gain": {k: final[f"eval_{k}"] - baseline[f"eval_{k}"] for k in ("accuracy", "macro_f1")}
        if baseline and final else None,
        "train_steps": trainer.state.global_step,
    }
    write_json_atomic(output_dir / "metrics.json", metrics)
    plot_training_curve(history, output_dir / "training_curve.png")
    if baseline and final:
        print(f"Validation accuracy: base {baseline['eval_accuracy']:.1%} -> tuned {final['eval_accuracy']:.1%} "
              f"({100 * metrics['gain']['accuracy']:+.1f} points); macro-F1 {baseline['eval_macro_f1']:.3f} -> "
              f"{final['eval_macro_f1']:.3f}")
    print(f"Adapter saved to {output_dir} (try: velora predict --model_path {output_dir} --image IMG "
          "--premise ... --hypothesis ...)")
    return metrics


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def _eval_summary(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {"step": entry.get("step"), **{k[5:]: v for k, v in entry.items()
                                          if k.startswith("eval_") and isinstance(v, (int, float))
                                          and not math.isnan(v) and not k.endswith(_TIMINGS)}}


_TIMINGS = ("runtime", "samples_per_second", "steps_per_second")


def main(argv: list[str]) -> dict:
    """Entry point of `velora train ARGS...`."""
    return train(parse_train_args(argv))
