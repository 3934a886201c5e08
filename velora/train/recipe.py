"""`velora train`: LoRA fine-tuning of OFA visual entailment, a recipe to read top to bottom.

    setup:  output folder (resume point, refusals) -> data (rows indexed in Arrow, fingerprinted) -> base model
            (frozen, BatchNorm in eval) + LoRA adapter -> ResNet features computed once -> collator, metrics,
            callbacks -> Trainer
    train:  baseline evaluation at step 0 (the base model), evaluation every eval_steps, checkpoints every
            save_steps (complete or visibly not), resumable after kill -9 (only by the same run)
    save:   the best adapter by macro-F1 (ties: lower validation loss, then the later step) in PEFT layout, plus
            what `velora predict --model_path OUT` needs, metrics.json, training_curve.png and a README.md model card

Loss: cross-entropy over the three answer logits (" yes", " no", " maybe") at the answer position, the official
constrained loss; optional class weights for imbalanced data.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, set_seed

from velora.bundle import ModelBundle
from velora.convert import convert
from velora.data import load_training_splits
from velora.errors import VeloraError
from velora.io import write_atomic, write_json_atomic
from velora.metrics import trainer_metrics
from velora.train.card import adapter_file, model_card, summary_lines
from velora.train.checkpoints import (CompleteCheckpoints, PRE_DATA_KEYS, check_identity, remove_partial_checkpoints,
                                      resolve_resume, run_identity, saved_identity)
from velora.train.config import TrainConfig, load_config
from velora.train.data import TrainingData, VECollator, build_training_data, class_weights, single_label
from velora.train.outputs import (CONVERTED_DATASET, check_output, clear_previous_run, read_run_file,
                                  write_run_file)
from velora.train.report import (BestCheckpointTieBreak, TrainerStateFile, VeloraLogCallback, plot_training_curve,
                                 selection_reason)

_TIMINGS = ("runtime", "samples_per_second", "steps_per_second")


@dataclass
class TrainResult:
    output_dir: Path
    adapter_file: Path  # the LoRA weights (what the guide calls pytorch_model.bin)
    metrics: dict  # what OUTPUT_DIR/metrics.json holds: baseline, final, gain, best_checkpoint, train_steps...

    @property
    def final(self) -> dict | None:
        return self.metrics.get("final")

    @property
    def baseline(self) -> dict | None:
        return self.metrics.get("baseline")


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


def train(config: TrainConfig | Mapping[str, Any] | str | os.PathLike,
          callbacks: Sequence[TrainerCallback] = ()) -> TrainResult | None:
    """Run the recipe with `config` (a TrainConfig, a dict of settings with the guide's keys, or a JSON config
    file); extra `callbacks` go to the Trainer. Returns the run's metrics and paths (None on the other processes of a
    torchrun)."""
    return LoRARecipe(load_config(config), callbacks).run()


class LoRARecipe:
    def __init__(self, config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()):
        self.config, self.callbacks = config, list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.first = config.process_index == 0  # with torchrun, only the first process touches OUTPUT_DIR's contents

    def run(self) -> TrainResult | None:
        set_seed(self.config.seed)  # the LoRA initialisation too
        with self.config.main_process_first(desc="preparing the output directory and the data"):
            self.setup_output()
            self.setup_data()
        self.setup_model()
        trainer = self.setup_trainer()
        try:
            trainer.train(resume_from_checkpoint=self.resume)
        except torch.OutOfMemoryError:
            raise VeloraError("out of memory: lower --per_device_train_batch_size (and raise "
                              "--gradient_accumulation_steps to keep the effective batch), add "
                              "--activation_checkpointing, or lower --image_size") from None
        return self.save(trainer) if trainer.is_world_process_zero() else None

    # -- setup, in dependency order --------------------------------------------------------------------------------

    def setup_output(self) -> None:
        """The base model's bundle, the resume point and this run's identity; refusals, before anything is written."""
        c, out = self.config, self.output_dir
        self.bundle = ModelBundle.resolve_base(
            c.model_name_or_path, image_size=c.image_size, flag="--model_name_or_path",
            advice="train from its base model (or merge it first with `velora merge`)")
        self.inputs = [("base model", self.bundle.base_dir),
                       *(("dataset", name) for name in (c.data_sources if c.dataset_name else []))]
        self.resume = resolve_resume(out, c.resume_from_checkpoint, remove_partial=False)
        # `auto` on a run cut off before its first complete checkpoint: the same run again, from step 0
        self.restart = c.resume_from_checkpoint == "auto" and self.resume is None and read_run_file(out) is not None
        self.identity = run_identity(c, self.bundle.base_reference, self.bundle.processor.config.image_size)
        self.check_identity(PRE_DATA_KEYS)
        if not self.first:
            return
        if c.train_file and any(out.resolve() == Path(f).resolve().parent for f in c.data_sources):
            raise VeloraError(f"--output_dir {out}: is the folder of --train_file; choose a new folder")
        check_output(out, self.inputs, overwrite=c.overwrite_output_dir, continuing=bool(self.resume or self.restart))
        if c.overwrite_output_dir and not (self.resume or self.restart):
            clear_previous_run(out, self.input_paths)

    @property
    def input_paths(self) -> list[Path]:
        return [Path(path) for _, path in self.inputs if path]

    def check_identity(self, keys: Sequence[str]) -> None:
        """A checkpoint (or a cut-off run being restarted) must be this run's."""
        if self.resume:
            saved, where = saved_identity(self.resume), f"--resume_from_checkpoint: {self.resume}"
        elif self.restart:
            saved, where = read_run_file(self.output_dir).get("run"), f"the run in {self.output_dir}"
        else:
            return
        fix = ("pass the same setting to continue it, or start a new run with another --output_dir (or "
               "--overwrite_output_dir)")
        check_identity(saved, {k: self.identity[k] for k in keys if k in self.identity}, where, fix)

    def setup_data(self) -> None:
        """The converted dataset (--dataset_name, or --train_file converted now into OUTPUT_DIR/dataset), its rows
        indexed and fingerprinted; then the output folder is written, once the data is known to be this run's."""
        c = self.config
        if not c.data_sources:
            raise VeloraError("no training data: pass --dataset_name DIR (made by `velora convert`) or --train_file "
                              "CSV")
        paths = self.convert_train_files() if c.train_file else [Path(name) for name in c.data_sources]
        self.data = build_training_data([(str(path), load_training_splits(path)) for path in paths],
                                        self.bundle.processor)
        if self.data.note:
            print(self.data.note)
        self.identity["dataset"] = self.data.fingerprint
        self.check_identity(["dataset"])
        if self.first:
            self.write_output_dir()

    def convert_train_files(self) -> list[Path]:
        """--train_file converted into OUTPUT_DIR/dataset (several: OUTPUT_DIR/dataset/1, 2...), unless done by
        the run being continued."""
        c, files = self.config, self.config.data_sources
        converted = self.output_dir / CONVERTED_DATASET
        paths = [converted] if len(files) == 1 else [converted / str(n) for n in range(1, len(files) + 1)]
        for file, path in zip(files, paths):
            if path.exists() or not self.first:
                continue
            self.output_dir.mkdir(parents=True, exist_ok=True)  # the run file first: the dataset is velora's
            write_run_file(self.output_dir, self.identity, c, converted=True)
            print(f"Converting {file} -> {path}")
            print(convert(file, path, image_root=c.image_root, val_ratio=c.val_ratio, seed=c.seed,
                          progress=True).summary())
        return paths

    def write_output_dir(self) -> None:
        out = self.output_dir
        remove_partial_checkpoints(out)
        if self.restart:
            print(f"No complete checkpoint in {out} yet: starting this run again from step 0")
            clear_previous_run(out, self.input_paths, keep=(CONVERTED_DATASET,))
        out.mkdir(parents=True, exist_ok=True)
        write_run_file(out, self.identity, self.config, converted=bool(self.config.train_file))

    def setup_model(self) -> None:
        """The frozen base, a fresh LoRA adapter on it, and the ResNet features computed once when nothing in the
        ResNet trains."""
        c = self.config
        self.model = self.bundle.load_model()
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=c.target_modules, bias="none")
        try:
            self.peft_model = get_peft_model(self.model, lora)
        except ValueError as e:
            raise VeloraError(f"--lora_target_modules {c.lora_target_modules}: {e}") from None
        self.peft_model.peft_config["default"].base_model_name_or_path = self.bundle.base_reference
        print(trainable_summary(self.peft_model))
        for hint in (precision_hint(c), c.learning_rate_advice()):
            if hint:
                print(hint)
        if c.cache_image_features and feature_cache_allowed(self.peft_model):
            self.cache_image_features()

    def cache_image_features(self) -> None:
        """The frozen ResNet run once over every distinct image (`velora sweep` shares them across its runs)."""
        self.data.store.cache_features(self.model, self.config.device, progress=not self.config.disable_tqdm)

    def setup_trainer(self) -> VETrainer:
        c, data = self.config, self.data
        args = copy.copy(c)  # the Trainer's view of the config:
        args.save_total_limit = None  # CompleteCheckpoints rotates, once a checkpoint is complete
        args.learning_rate = float(c.learning_rate)  # a plain float in the optimizer and scheduler checkpoints
        args.eval_on_start = data.validation is not None and self.resume is None  # the base model's baseline
        self.selection_note = None
        if data.validation is None:
            print("No validation split: training without evaluation; the last checkpoint is the result")
            args.eval_strategy, args.load_best_model_at_end = "no", False
        elif (label := single_label(data.validation)) and c.metric_for_best_model == "macro_f1":
            self.selection_note = (f"the validation split holds only {label} examples, where macro-F1 cannot tell "
                                   "a better model from a worse one, so validation loss chose")
            print(f"Warning: {self.selection_note}; add examples of every label to the validation split "
                  "(`velora convert` stratifies by label)")
            args.metric_for_best_model, args.greater_is_better = "loss", False
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.output_dir / "runs")
        trainer = self.make_trainer(
            model=self.peft_model, args=args, train_dataset=data.train, eval_dataset=data.validation,
            data_collator=VECollator(data.store), compute_metrics=trainer_metrics,
            class_weights=class_weights(c.class_weights, data.train.labels),
            callbacks=[CompleteCheckpoints(self.identity, keep=c.save_total_limit), TrainerStateFile(self.output_dir),
                       BestCheckpointTieBreak(), *self.callbacks])
        VeloraLogCallback.install(trainer)
        return trainer

    def make_trainer(self, **kwargs) -> VETrainer:
        """The Trainer, given the recipe's model, arguments, data, metrics and callbacks (`velora distill` adds the
        teacher's answers to the data and its loss here)."""
        return VETrainer(**kwargs)

    # -- save ------------------------------------------------------------------------------------------------------

    def save(self, trainer: VETrainer) -> TrainResult:
        """The best adapter (PEFT layout) + tokenizer + preprocessing, then metrics.json, the training curve and the
        model card."""
        out, state = self.output_dir, trainer.state
        trainer.save_model(str(out))  # adapter_config.json + adapter_model.safetensors of the loaded best model
        self.bundle.processor.save_pretrained(out)
        metrics = run_metrics(state.log_history, state.best_model_checkpoint, state.global_step)
        metrics.update(base_model=str(self.bundle.base_dir), image_size=self.bundle.processor.config.image_size,
                       data=self.data.summary(), **({"data_sources": self.data.note} if self.data.note else {}))
        if metrics["final"]:
            metrics["selection"] = selection_reason(state.log_history, metrics["final"]["step"],
                                                    trainer.args.metric_for_best_model, self.selection_note)
        else:
            metrics["selection"] = f"Kept step {state.global_step}, the last (no validation split to choose by)"
        write_json_atomic(out / "metrics.json", metrics)
        plot_training_curve(state.log_history, out / "training_curve.png")
        write_atomic(out / "README.md", model_card(
            out, base_model=self.bundle.base_reference, data_source=self.data.source,
            data_summary=self.data.summary(), config=self.config, metrics=metrics, selection=metrics["selection"]))
        for line in [*summary_lines(out, metrics, metrics["selection"]), *filter(None, [self.data.note])]:
            print(line)
        return TrainResult(out, adapter_file(out), metrics)


def run_metrics(history: list[dict], best_checkpoint: str | None, global_step: int) -> dict:
    """Baseline (step 0, the base model) vs final (the kept checkpoint) validation results."""
    evals = [h for h in history if "eval_accuracy" in h]
    baseline = next((h for h in evals if h.get("step", 0) == 0), None)
    best_step = int(best_checkpoint.rsplit("-", 1)[-1]) if best_checkpoint else None
    final = next((h for h in evals if h.get("step") == best_step), evals[-1] if evals else None)
    return {
        "best_checkpoint": best_checkpoint,
        "baseline": _eval_summary(baseline),
        "final": _eval_summary(final),
        "gain": {k: final[f"eval_{k}"] - baseline[f"eval_{k}"] for k in ("accuracy", "macro_f1")}
        if baseline and final else None,
        "train_steps": global_step,
    }


def _eval_summary(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {"step": entry.get("step"), **{k[5:]: v for k, v in entry.items()
                                          if k.startswith("eval_") and isinstance(v, (int, float))
                                          and not math.isnan(v) and not k.endswith(_TIMINGS)}}


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


def precision_hint(config: TrainConfig) -> str | None:
    """A tip for fp32 training on a CPU that could run bf16 autocast instead."""
    if config.device.type != "cpu" or config.bf16 or config.fp16 or not cpu_has_fast_bf16():
        return None
    return ("Training in fp32 on a CPU with bf16 support: add --bf16 true for bf16 autocast, about 2x faster "
            "(the adapter is still saved in fp32)")
