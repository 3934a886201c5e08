"""`velora distill` as a Python API: `distill(config | dict | path, **settings)` teaches a smaller OFA student the
behaviour of a fine-tuned teacher on `velora train`'s recipe and returns a `DistillResult` (metrics, paths and the
edge report, student vs teacher).

    from velora.distill import distill
    result = distill(teacher="lora_finetuned", student="ofa_tiny", dataset_name="data/hf_dataset",
                     output_dir="student", unlabeled_file="data/more_pictures.csv")
    result.report["ratios"]

Modules, one per concern: config (DistillConfig), teacher (the teacher's answers, computed once and cached),
unlabeled (--unlabeled_file rows), trainer (the loss inside the Trainer, the student's checkpoints), recipe (the
recipe itself), report (the edge report), card (model card, console summary), cli (`velora distill`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"distill": "recipe", "DistillResult": "recipe", "DistillConfig": "config",
            "load_distill_config": "config", "distillation_loss": "trainer"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The exports, imported on first use: transformers takes seconds to import, and `velora --help` should not
    wait for it."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'velora.distill' has no attribute {name!r}")
    return getattr(importlib.import_module(f"velora.distill.{_EXPORTS[name]}"), name)
