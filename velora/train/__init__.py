"""`velora train` as a Python API: `train(TrainConfig | dict | path)` runs the LoRA recipe and returns a
`TrainResult` (metrics and paths).

    from velora.train import train
    result = train({"model_name_or_path": "iic/ofa_visual-entailment_snli-ve_large_en",
                    "dataset_name": "data/hf_dataset", "output_dir": "lora_finetuned", "num_train_epochs": 3})
    result.final["accuracy"], result.adapter_file

Modules, one per stage: config (TrainConfig, load_config), data (rows indexed in Arrow), checkpoints (complete
or visibly not; run identity), outputs (what OUTPUT_DIR may hold), report (logs, trainer_state.json, best step),
card (model card, summary), recipe (the recipe itself), cli (`velora train`, `velora init`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"train": "recipe", "TrainResult": "recipe", "TrainConfig": "config", "LearningRate": "config",
            "load_config": "config"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The exports, imported on first use: transformers takes seconds to import, and `velora --help` (which imports
    velora.train.cli) should not wait for it."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'velora.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"velora.train.{_EXPORTS[name]}"), name)
