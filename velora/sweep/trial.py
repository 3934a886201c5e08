"""One configuration of a sweep: a `velora train` run per seed, each in SWEEP/runs/NAME, with the sweep's shared
image features, its validation macro-F1 reported to Optuna as it trains (the pruner may stop a losing run), and,
once trained, the training split scored in eval mode (the guide's overfitting signal: train vs validation).

A run folder is an ordinary `velora train` output. Its last file, sweep_run.json, says the run finished and holds
its scores; a folder without it is a run cut off, continued from its newest complete checkpoint next time.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import optuna
from transformers import TrainerCallback

from velora.io import write_json_atomic
from velora.train.checkpoints import checkpoint_dirs, complete_checkpoints
from velora.train.config import load_config
from velora.train.recipe import LoRARecipe, TrainResult, VETrainer
from velora.sweep.features import SharedImageFeatures

RESULT_FILE = "sweep_run.json"
SCORES = ("macro_f1", "accuracy", "loss")


class PruneLosingRuns(TrainerCallback):
    """Reports each validation macro-F1 to the Optuna trial and stops training when the pruner says the run is
    losing. The step reported is the number of training examples seen, so runs with other batch sizes are compared
    at the same point; step 0 (the base model, the same for every run) is not reported."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step == 0 or not metrics or "eval_macro_f1" not in metrics:
            return
        examples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.trial.report(metrics["eval_macro_f1"], state.global_step * examples_per_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True
            print(f"Pruned at step {state.global_step}: validation macro-F1 {metrics['eval_macro_f1']:.3f} is below "
                  "the median of the finished configurations at this point")


class TrialRecipe(LoRARecipe):
    """`velora train`'s recipe, with the sweep's image features and the training split scored after training."""

    def __init__(self, config, features: SharedImageFeatures, pruning: PruneLosingRuns | None):
        super().__init__(config, [pruning] if pruning else [])
        self.features, self.pruning = features, pruning

    def cache_image_features(self) -> None:
        self.features.fill(self.data.store, self.model, self.config.device, self.data.fingerprint)

    def save(self, trainer: VETrainer) -> TrainResult:
        result = super().save(trainer)
        if self.pruning is None or self.pruning.pruned_at is None:  # a pruned run is not worth scoring
            scores = trainer.predict(self.data.train, metric_key_prefix="train_split").metrics
            result.metrics["train_split"] = {k: scores[f"train_split_{k}"] for k in SCORES}
            write_json_atomic(self.output_dir / "metrics.json", result.metrics)
            print(f"Training split (eval mode): accuracy {scores['train_split_accuracy']:.1%}, macro-F1 "
                  f"{scores['train_split_macro_f1']:.3f}")
        return result


@dataclass
class RunSource:
    """Where every run's settings come from: a config file or dict, then the flags, then the run's own values."""

    config: str | Mapping[str, Any] | None
    flags: dict[str, Any] = field(default_factory=dict)

    def load(self, **values: Any):
        return load_config(self.config, {**self.flags, **values})


def run_seed(source: RunSource, settings: Mapping[str, Any], run_dir: Path, seed: int,
             features: SharedImageFeatures, pruning: PruneLosingRuns | None) -> dict:
    """One `velora train` run of a configuration (or its record, when it finished before)."""
    marker = run_dir / RESULT_FILE
    if marker.exists():
        print(f"{run_dir.name}: finished earlier in this sweep, its result reused")
        return json.loads(marker.read_text(encoding="utf-8"))
    if complete_checkpoints(run_dir):
        print(f"{run_dir.name}: cut off earlier; continuing from {complete_checkpoints(run_dir)[-1].name}")
    config = source.load(**settings, output_dir=str(run_dir), seed=seed, resume_from_checkpoint="auto",
                         overwrite_output_dir=False)
    started = time.monotonic()
    recipe = TrialRecipe(config, features, pruning)
    metrics = recipe.run().metrics
    record = {"seed": seed, "run": run_dir.name, "steps": metrics["train_steps"],
              "pruned_at_step": pruning.pruned_at if pruning else None,
              "validation": {k: metrics["final"].get(k) for k in SCORES},
              "validation_examples": sum(metrics["data"].get("validation", {}).values()),
              "train": metrics.get("train_split"), "seconds": round(time.monotonic() - started, 1)}
    write_json_atomic(marker, record)
    for checkpoint in checkpoint_dirs(run_dir):  # only needed to continue a run cut off; this one finished
        shutil.rmtree(checkpoint)
    return record


def run_configuration(trial: optuna.Trial, source: RunSource, settings: Mapping[str, Any], names: list[str],
                      seeds: list[int], runs_dir: Path, features: SharedImageFeatures, pruner_on: bool) -> list[dict]:
    """A run per seed, the first one reporting to the pruner; stops after a pruned run."""
    records = []
    for seed, name in zip(seeds, names):
        pruning = PruneLosingRuns(trial) if pruner_on and not records else None
        records.append(run_seed(source, settings, runs_dir / name, seed, features, pruning))
        if records[-1]["pruned_at_step"] is not None:
            break
    return records
