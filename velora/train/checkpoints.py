"""Checkpoints that are either complete or visibly not, and that know which run they belong to.

The Trainer writes `checkpoint-N/`; `CompleteCheckpoints.on_save` then syncs its files and writes the marker
(`velora_checkpoint_complete.json`, holding the run's identity) last, and only then rotates older ones out — so a
kill at any moment leaves the previous complete checkpoint in place, and a cut-off save never looks complete.
On `--resume_from_checkpoint`, the checkpoint's identity (data fingerprint, base model, LoRA settings, image size)
must match this run's; a mismatch names the setting before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from velora.errors import VeloraError
from velora.io import write_json_atomic

COMPLETE_MARKER = "velora_checkpoint_complete.json"
PRE_DATA_KEYS = ("base_model", "data_source", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                 "image_size")  # the identity known before the data is read; "dataset" (its fingerprint) comes after


def run_identity(config, base_model: str, image_size: int, dataset: str | None = None) -> dict:
    """What makes a checkpoint this run's: another value for any of these cannot continue it."""
    source = config.dataset_name or config.train_file
    identity = {"base_model": base_model, "data_source": str(Path(source).resolve()) if source else None,
                "lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
                "lora_target_modules": sorted(config.target_modules), "image_size": image_size}
    return identity if dataset is None else {**identity, "dataset": dataset}


def check_identity(saved: dict | None, current: dict, where: str, fix: str) -> None:
    """Raise VeloraError naming the first setting in which `current` differs from the `saved` identity."""
    for key, value in current.items():
        if saved is None or key not in saved or saved[key] == value:
            continue
        if key == "dataset":
            raise VeloraError(f"{where} was trained on other data than {saved.get('data_source')} holds now (the rows' "
                              f"images, texts or labels differ); {fix}")
        raise VeloraError(f"{where} was trained with {key} {saved[key]}, this run has {key} {value}; {fix}")


def _step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=_step)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    return [p for p in checkpoint_dirs(output_dir) if (p / COMPLETE_MARKER).exists()]


def partial_checkpoints(output_dir: Path) -> list[Path]:
    return [p for p in checkpoint_dirs(output_dir) if not (p / COMPLETE_MARKER).exists()]


def remove_partial_checkpoints(output_dir: Path) -> None:
    for partial in partial_checkpoints(output_dir):
        print(f"Removing {partial}: its save was cut off before completing")
        shutil.rmtree(partial, ignore_errors=True)


def resolve_resume(output_dir: Path, resume: str | None, remove_partial: bool = True) -> str | None:
    """`auto`: the newest complete checkpoint (None if there is none); a path must be complete. With
    `remove_partial`, checkpoints cut off by a kill are removed, so nothing can mistake them for complete ones."""
    if not resume:
        return None
    complete = complete_checkpoints(output_dir)
    if remove_partial:
        remove_partial_checkpoints(output_dir)
    if resume == "auto":
        return str(complete[-1]) if complete else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).exists():
        later = f"; complete ones: {', '.join(p.name for p in complete)}" if complete else ""
        raise VeloraError(f"--resume_from_checkpoint {resume}: not a complete checkpoint{later}")
    return str(path)


def saved_identity(checkpoint: str | Path) -> dict | None:
    """The run identity a checkpoint's marker holds (None for checkpoints written before velora stored one)."""
    try:
        return json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text(encoding="utf-8")).get("run")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _sync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


class CompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint complete once all of it is on disk, then keeps the `keep` newest complete ones (and the
    best). The Trainer's own rotation must be off (save_total_limit None in its arguments): it would run before the
    marker is written."""

    def __init__(self, identity: dict, keep: int | None):
        self.identity, self.keep = identity, keep

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its part (RNG state) of the checkpoint
        if not args.should_save:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        _sync_tree(checkpoint)
        write_json_atomic(checkpoint / COMPLETE_MARKER, {"global_step": state.global_step, "run": self.identity})
        rotate_checkpoints(str(checkpoint.parent), self.keep, state.best_model_checkpoint)
