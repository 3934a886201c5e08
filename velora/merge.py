"""`velora merge`: fold a LoRA adapter into its base weights (in fp32) and save one plain model in the hub layout,
loadable without PEFT by `velora predict`, `serve`, `export` or any OFA loader.

The merge checks itself before the folder appears at --output_dir: the saved model and the adapter must give the
same probabilities on a few synthetic examples (fp32: within 1e-4; a float16/bfloat16 copy: its rounding is
reported and must stay within a looser bound).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from velora.bundle import ModelBundle, save_model_dir
from velora.errors import VeloraError
from velora.io import check_output_dir, staged_dir
from velora.ofa.model import OFAModel
from velora.predictor import BASE, Predictor, pick_dtype

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}  # max |probability difference|
QUANTIZED_DTYPES = {"I8", "U8", "F8_E4M3", "F8_E5M2"}  # safetensors names
QUANTIZED_SUFFIXES = ("_packed_params", ".scale", ".zero_point", ".SCB", ".weight_format", ".absmax", ".quant_map")
CHECK_TEXTS = [  # (premise, hypothesis) for the self-check
    ("a red car parked on a street", "there is a vehicle."),
    (None, "two dogs are playing in the snow."),
    ("a man holding a cup of coffee", "the man is asleep."),
    ("a bowl of apples and pears on a wooden table next to an open kitchen window", "the fruit is fresh."),
]


def check_images(n: int = len(CHECK_TEXTS), size: int = 96, seed: int = 0) -> list[Image.Image]:
    """Smooth random-colour images: different enough to give different predictions, same on every run."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None]
    images = []
    for _ in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = a * (1 - ramp) + b * ramp + rng.normal(0, 12, (size, size, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return images


def check_probabilities(predictor: Predictor, adapter: str | None = None) -> torch.Tensor:
    premises, hypotheses = zip(*CHECK_TEXTS)
    return predictor.probabilities(check_images(), list(premises), list(hypotheses), adapter=adapter)


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def refuse_quantized(base_dir: Path) -> None:
    """Merging adds LoRA deltas to float weights; a quantized checkpoint has none to add to."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("quantization_config"):
        raise VeloraError(f"--base_model {base_dir}: a quantized model (config.json has quantization_config); "
                          "merge into the original float checkpoint, then quantize the merged model")
    suspicious = []
    weights = base_dir / "model.safetensors"
    if weights.exists():
        with safe_open(str(weights), framework="pt") as f:
            suspicious = [k for k in f.keys() if f.get_slice(k).get_dtype() in QUANTIZED_DTYPES]
            suspicious += [k for k in f.keys() if k.endswith(QUANTIZED_SUFFIXES)]
    elif (base_dir / "pytorch_model.bin").exists():
        try:
            state = torch.load(base_dir / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return  # unreadable: loading reports it
        suspicious = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or v.is_quantized
                      or v.dtype in (torch.int8, torch.uint8) or k.endswith(QUANTIZED_SUFFIXES)]
    if suspicious:
        raise VeloraError(f"--base_model {base_dir}: quantized weights ({suspicious[0]}, {len(suspicious)} in all); "
                          "merge into the original float checkpoint, then quantize the merged model")


# ---------------------------------------------------------------------------------------------------------------
# Merge


def merged_model(predictor: Predictor) -> OFAModel:
    """The Predictor's model with its (first) LoRA adapter folded into the weights; the Predictor gives up its
    adapter (its model is the merged one afterwards, scored with the adapter's preprocessing)."""
    if predictor.peft_model is None:
        return predictor.model
    processor = predictor.processor
    model = predictor.peft_model.merge_and_unload()
    predictor.model, predictor.peft_model, predictor.processors = model, None, {BASE: processor}
    with torch.device("meta"):
        expected = set(OFAModel(model.config).state_dict())
    extra, missing = sorted(set(model.state_dict()) - expected), sorted(expected - set(model.state_dict()))
    if extra or missing:
        raise VeloraError(f"adapter could not be merged into plain OFA weights: {(extra + missing)[0]} "
                          f"({len(extra)} extra, {len(missing)} missing keys)")
    return model


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass
class MergeResult:
    output_dir: Path
    base_dir: Path
    adapter_dir: Path
    dtype: str
    max_diff_merged: float  # fp32 merge vs adapter
    max_diff_saved: float  # the saved (possibly fp16/bf16) model vs adapter
    tolerance: float
    size_bytes: int

    def summary(self) -> str:
        lines = [f"Merged {self.adapter_dir} into {self.base_dir}",
                 f"Self-check on {len(CHECK_TEXTS)} examples, max |probability difference| vs the adapter:",
                 f"  fp32 merge:         {self.max_diff_merged:.2e}"]
        if self.dtype != "float32":
            lines.append(f"  saved {self.dtype} copy: {self.max_diff_saved:.2e} (weight rounding; limit "
                         f"{self.tolerance:.0e})")
        lines += [f"Saved {self.dtype} model to {self.output_dir} ({human_size(self.size_bytes)} on disk)",
                  f"Next: velora predict --model_path {self.output_dir} --image IMG --hypothesis TEXT"]
        return "\n".join(lines)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists()


def _copy_task_config(adapter_dir: Path, base_dir: Path, out: Path) -> None:
    """ModelScope's configuration.json: the adapter's when it has one (it was trained with those settings)."""
    for source in (adapter_dir, base_dir):
        if (source / "configuration.json").exists():
            shutil.copyfile(source / "configuration.json", out / "configuration.json")
            return


def merge_lora(lora_path: str | os.PathLike, output_dir: str | os.PathLike, *,
               base_model: str | os.PathLike | None = None, dtype: str = "float32", device: str = "cpu",
               overwrite: bool = False) -> MergeResult:
    """Fold the LoRA adapter at `lora_path` into `base_model` (default: the base named in adapter_config.json),
    in fp32, and save it to `output_dir` in `dtype` ("float32", "float16" or "bfloat16"), after checking it."""
    bundle = ModelBundle.resolve(lora_path, base_model=base_model, flag="--lora_path")
    adapter_dir, base_dir = bundle.adapter_dir, bundle.base_dir
    if adapter_dir is None:
        raise VeloraError(f"--lora_path {lora_path}: no adapter_config.json, so not a LoRA adapter "
                          "(run `velora train` first; a full model directory needs no merging)")
    save_dtype = pick_dtype(dtype, torch.device("cpu"))
    if save_dtype not in TOLERANCE or dtype == "auto":
        raise VeloraError(f"--dtype {dtype}: use float32, float16 or bfloat16")
    output = check_output_dir(output_dir, "--output_dir", overwrite=overwrite, owned=_is_model_dir, what="model",
                              inputs=[("adapter", adapter_dir), ("base model", base_dir)])
    refuse_quantized(base_dir)

    predictor = Predictor.from_bundle(bundle, device=device, dtype=torch.float32, fuse_resnet=False)
    expected = check_probabilities(predictor)
    model = merged_model(predictor)
    diff_merged = (check_probabilities(predictor) - expected).abs().max().item()
    if diff_merged > TOLERANCE[torch.float32]:
        raise VeloraError(f"merged model differs from the adapter by {diff_merged:.2e} (limit 1e-4); nothing saved")

    with staged_dir(output) as staged:
        _copy_task_config(adapter_dir, base_dir, staged)
        save_model_dir(model.to("cpu"), bundle.processor, staged, dtype=save_dtype, like=base_dir)
        del model, predictor
        saved = Predictor.from_pretrained(staged, device=device, dtype=torch.float32)
        diff_saved = (check_probabilities(saved) - expected).abs().max().item()
        del saved
        if diff_saved > TOLERANCE[save_dtype]:
            raise VeloraError(f"saved {dtype} model differs from the adapter by {diff_saved:.2e} "
                              f"(limit {TOLERANCE[save_dtype]:.0e}); nothing saved")
    return MergeResult(output, base_dir, adapter_dir, str(save_dtype).removeprefix("torch."), diff_merged,
                       diff_saved, TOLERANCE[save_dtype], dir_size(output))
