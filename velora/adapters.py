"""LoRA adapters in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`): which base they belong to,
whether they fit it, and attaching them. `velora.bundle` and the Predictor (so predict, eval, mine, serve, merge and
export) all come through here, so an adapter trained on another base is refused the same way everywhere."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

from velora.errors import VeloraError
from velora.hub import resolve_model_dir
from velora.ofa.model import OFAModel


def read_adapter_config(adapter_dir: Path) -> dict:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VeloraError(f"{adapter_dir / 'adapter_config.json'}: unreadable adapter config ({e})") from None


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def base_dir_for(adapter_dir: Path, base_model: str | None = None) -> Path:
    """The base model directory: `base_model` if given, else the one the adapter names."""
    recorded = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if base_model is None and not recorded:
        raise VeloraError(f"{adapter_dir}: adapter_config.json names no base model; pass --base_model")
    base = resolve_model_dir(base_model or recorded, flag="--base_model")
    if is_adapter_dir(base):
        raise VeloraError(f"--base_model {base}: is a LoRA adapter, not a base model; pass the model it was "
                          "trained on")
    return base


def adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """Saved LoRA weight name -> shape, without loading the tensors (safetensors) where possible."""
    path = adapter_dir / "adapter_model.safetensors"
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    path = adapter_dir / "adapter_model.bin"
    if not path.exists():
        raise VeloraError(f"{adapter_dir}: no adapter_model.safetensors or adapter_model.bin")
    return {k: tuple(v.shape) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def _mismatch(adapter_dir: Path, base_dir: Path, what: str) -> VeloraError:
    return VeloraError(f"adapter {adapter_dir} does not fit {base_dir}: {what}; it was trained on another base "
                       "model: pass that one with --base_model")


def check_adapter_fits(adapter_dir: Path, base_dir: Path, base: OFAModel) -> None:
    """Every saved LoRA weight must belong to a Linear of the base with matching sizes (PEFT's own error names
    none of that)."""
    modules = dict(base.named_modules())
    for key, shape in adapter_shapes(adapter_dir).items():
        name, _, part = key.removeprefix("base_model.model.").partition(".lora_")
        if not part:
            continue  # modules_to_save copies and the like: PEFT checks those
        module = modules.get(name)
        if module is None:
            raise _mismatch(adapter_dir, base_dir, f"it has LoRA weights for {name}, which the base does not have")
        if isinstance(module, torch.nn.Linear) and part[0] in "AB":
            size, wanted = (shape[1], module.in_features) if part[0] == "A" else (shape[0], module.out_features)
            if size != wanted:
                raise _mismatch(adapter_dir, base_dir, f"{key} has shape {list(shape)} but {name} is "
                                                       f"{module.in_features} -> {module.out_features}")


def check_adapter_complete(peft_model, name: str, adapter_dir: Path, base_dir: Path) -> None:
    """PEFT only warns when base layers it targets have no saved weights (a deeper base than the adapter's)."""
    saved = set(adapter_shapes(adapter_dir))
    loaded = {k.replace(f".{name}.", ".") for k in peft_model.state_dict() if ".lora_" in k and f".{name}." in k}
    missing = sorted(loaded - saved)
    if missing:
        raise _mismatch(adapter_dir, base_dir, f"no weights for {missing[0]} ({len(missing)} in all)")


def attach_adapter(model: OFAModel, adapter_dir: Path, name: str, base_dir: Path, peft_model=None):
    """Load the adapter in `adapter_dir` onto `model` (frozen, for inference) as `name`; returns the PeftModel.
    With `peft_model`, the adapter is added beside the ones it already holds."""
    from peft import PeftModel  # deferred: peft takes ~2 s to import and only adapter users need it

    check_adapter_fits(adapter_dir, base_dir, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's missing-keys warning: check_adapter_complete makes it an error
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name,
                                                       is_trainable=False)
            else:
                peft_model.load_adapter(str(adapter_dir), adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as e:
            raise _mismatch(adapter_dir, base_dir, str(e).splitlines()[0][:200]) from None
    check_adapter_complete(peft_model, name, adapter_dir, base_dir)
    return peft_model
