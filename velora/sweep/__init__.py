"""`velora sweep` as a Python API: the guide's rank and learning-rate experiments (sections 5.2-5.3), each
configuration a `velora train` run (per seed), compared on validation macro-F1 with the training-split score beside
it (the overfitting gap).

    from velora.sweep import sweep
    result = sweep({"model_name_or_path": "iic/ofa_visual-entailment_snli-ve_large_en",
                    "dataset_name": "data/hf_dataset", "output_dir": "sweep"},
                   {"lora_r": [4, 8, 16, 32], "learning_rate": [1e-4, 2e-4], "lora_alpha": "2r"}, seeds=3)
    result.best, result.reason, result.best_dir      # best/ loads with `velora predict --model_path sweep/best`

Modules: space (what varies), features (the ResNet's features once per sweep), trial (a configuration's runs,
pruning, the training-split score), results (table, choice, best/), plot (sweep.png), run (the sweep), cli.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"sweep": "run", "SweepResult": "run"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The exports, imported on first use: optuna, transformers and torch take seconds to import."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'velora.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(f"velora.sweep.{_EXPORTS[name]}"), name)
