"""Out-of-fold probabilities: what confident learning needs to doubt a label. A model scores its own training rows
too well (it has learnt their labels, wrong ones included), so each row is scored by an adapter that never saw it:
the rows are cut into k folds (stratified by label, grouped by image), and k fresh LoRA adapters are trained, each on
the other folds, with the settings of the run being mined.

The base model is loaded and the frozen ResNet's features are computed once for all folds; a fold only trains the
LoRA weights (transformers' Trainer, no evaluation or checkpoints) and is then unloaded from the base.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from sklearn.model_selection import StratifiedGroupKFold
from transformers import set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from velora.bundle import ModelBundle
from velora.errors import VeloraError
from velora.train.config import TrainConfig, load_config
from velora.train.data import TrainingData, VECollator, build_training_data, class_weights
from velora.train.outputs import read_run_file
from velora.train.recipe import VETrainer

# The settings of a training run that a fold repeats (velora_run.json's "config"); the rest are the run's own.
FOLD_KEYS = ("image_size", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate",
             "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
             "warmup_steps", "weight_decay", "lr_scheduler_type", "class_weights", "seed", "bf16", "use_cpu")


def fold_config(run_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The TrainConfig a fold trains with: the settings of the `velora train` run in `run_dir` (its
    velora_run.json), on the base model that run started from."""
    run = read_run_file(Path(run_dir))
    if run is None:
        raise VeloraError(f"{run_dir}: no velora_run.json, so the settings it was trained with are unknown; "
                          "out-of-fold mining repeats a `velora train` run (or use --method model)")
    settings = {k: v for k, v in run.get("config", {}).items() if k in FOLD_KEYS and v is not None}
    if settings.get("max_steps") == -1:
        settings.pop("max_steps")
    base = run.get("run", {}).get("base_model") or run.get("config", {}).get("model_name_or_path")
    return load_config({**settings, "model_name_or_path": base, "report_to": "none", **overrides})


def out_of_fold_probabilities(config: TrainConfig | Mapping[str, Any], dataset, *, folds: int = 4,
                              batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """(N, 3) probabilities in LABELS order for every row of `dataset` (a datasets.Dataset with velora's columns),
    each from a LoRA adapter trained with `config` on the other `folds - 1` folds."""
    from datasets import DatasetDict  # deferred: datasets takes ~1 s to import

    config = load_config(config)
    bundle = ModelBundle.resolve_base(config.model_name_or_path, image_size=config.image_size,
                                      flag="--model_name_or_path", advice="give the base model of the run")
    data = build_training_data(DatasetDict({"train": dataset}), bundle.processor, "mined rows")
    model = bundle.load_model().to(config.device)
    data.store.cache_features(model, config.device)
    probs = torch.full((len(data.train), 3), float("nan"))
    for number, (train_rows, held_rows) in enumerate(split_folds(data, folds, config.seed), start=1):
        if progress:
            print(f"Fold {number}/{folds}: training on {len(train_rows)} rows, scoring the {len(held_rows)} others")
        set_seed(config.seed + number)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.target_modules, bias="none")
        peft_model = get_peft_model(model, lora)
        train_fold(peft_model, config, data, train_rows)
        probs[held_rows] = score_rows(peft_model, data, held_rows, batch_size, config.device)
        model = peft_model.unload()  # the base again, LoRA layers removed
    return probs


def split_folds(data: TrainingData, folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(training rows, held-out rows) per fold: stratified by label, no picture in two folds."""
    groups = np.asarray(data.train.images)
    if folds < 2:
        raise VeloraError(f"--folds {folds}: at least 2")
    if len(set(groups.tolist())) < folds:
        raise VeloraError(f"out-of-fold scores need at least {folds} distinct pictures (one per fold); these rows "
                          f"have {len(set(groups.tolist()))}: lower --folds or use --method model")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = np.asarray(data.train.labels)
    return [(a.tolist(), b.tolist()) for a, b in splitter.split(np.zeros(len(labels)), labels, groups)]


def train_fold(peft_model, config: TrainConfig, data: TrainingData, rows: list[int]) -> None:
    """The run's training on `rows` only: no evaluation, no checkpoints, nothing written outside a temp folder."""
    args = copy.copy(config)
    args.eval_strategy, args.save_strategy, args.load_best_model_at_end = "no", "no", False
    args.learning_rate = float(config.learning_rate)
    args.report_to, args.disable_tqdm, args.save_total_limit = [], True, None
    with tempfile.TemporaryDirectory(prefix="velora-fold-") as work:
        args.output_dir = work
        subset = torch.utils.data.Subset(data.train, rows)
        trainer = VETrainer(model=peft_model, args=args, train_dataset=subset, data_collator=VECollator(data.store),
                            class_weights=class_weights(config.class_weights, [data.train.labels[i] for i in rows]))
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train()


@torch.inference_mode()
def score_rows(model, data: TrainingData, rows: list[int], batch_size: int, device) -> torch.Tensor:
    model.eval()
    collate = VECollator(data.store)
    out = []
    for start in range(0, len(rows), batch_size):
        inputs = collate([data.train[i] for i in rows[start:start + batch_size]])
        inputs.pop("labels")
        logits = model(**{name: value.to(device) if value is not None else None for name, value in inputs.items()})
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out)
