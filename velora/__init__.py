"""velora: LoRA adaptation of OFA visual entailment, from your data to a served model.

The Python API, one function or class per stage (each is also a `velora` subcommand):

    from velora import convert, train, evaluate, mine, merge, Predictor, OFAProcessor, pipeline

These names are imported on first use: torch and transformers take seconds to import, and neither `velora --help`
nor a script that only converts data should wait for them. `velora.convert`, `velora.train`... are the stage
functions even though modules of the same names exist; import from the modules by their full names
(`from velora.convert import validate`, `from velora.train import TrainConfig`).
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

API: dict[str, tuple[str, str]] = {  # public name: (module, attribute)
    "convert": ("velora.convert", "convert"),
    "train": ("velora.train", "train"),
    "TrainConfig": ("velora.train", "TrainConfig"),
    "evaluate": ("velora.evaluate", "evaluate"),
    "mine": ("velora.mine", "mine"),
    "merge": ("velora.merge", "merge_lora"),
    "distill": ("velora.distill", "distill"),
    "Predictor": ("velora.predictor", "Predictor"),
    "Prediction": ("velora.predictor", "Prediction"),
    "OFAProcessor": ("velora.ofa.processor", "OFAProcessor"),
    "pipeline": ("velora.pipeline", "pipeline"),
}
__all__ = sorted(API)


class _Package(types.ModuleType):
    """velora's module object: resolves API names lazily, and keeps them bound to the API objects when the import
    system would bind a submodule of the same name (importing `velora.train.config` sets `velora.train`)."""

    def __getattr__(self, name: str):
        if name not in API:
            raise AttributeError(f"module 'velora' has no attribute {name!r}")
        module, attribute = API[name]
        value = getattr(importlib.import_module(module), attribute)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *API})


sys.modules[__name__].__class__ = _Package
