"""int8 inference on CPU that keeps its answers.

A `QuantizationPlan` says which layer groups run in int8 and which stay in fp32. It is chosen by measurement
(`choose_plan`), not by guess: on a calibration set, each group is quantized alone and its effect on the three
probabilities measured; then, starting from every group in int8, groups are put back to fp32 (the most harm per
multiply-add first, so the cheap sensitive ones go first) until the largest probability change is within the
tolerance (`velora.int8_calibration`). `quantize_model(model, plan)` applies a plan: the Linear groups with torch's dynamic quantization
(weights int8 per output channel, activations quantized per call; 7-bit on CPUs without VNNI, where 8-bit products
would saturate), the ResNet ("resnet") with static int8 convolutions whose activation scales were measured on the
calibration images and are stored in the plan.
A plan is JSON (`save` / `load`), so a choice can be repeated exactly; `DEFAULT_PLAN` is the one chosen on the
OFA-base-size benchmark (bench/quantize.py, bench/RESULTS.md), used when a model folder has no plan of its own.

    plan = velora.int8_calibration.calibrate("./merged_model", "data/calibration.csv")  # writes int8_plan.json
    model = quantize_model(model, plan)                                                  # what --quantize int8 does
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping, per_channel_dynamic_qconfig, quantize_dynamic
from torch.ao.quantization.observer import FixedQParamsObserver, ObserverBase
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from velora.errors import VeloraError

PLAN_FILE = "int8_plan.json"  # beside a model (or adapter): the plan `--quantize int8` uses for it
PLAN_FORMAT = "velora-int8-plan/1"

# Layer groups: a Linear belongs to the first group whose pattern matches its full name. Not listed, so never
# quantized: the position projections (their outputs feed every layer's attention bias, and the encoder caches
# them only while they are plain Linears) and the output projection (the tied embedding; only three rows are read).
LAYER_GROUPS: dict[str, str] = {
    "image_proj": r"encoder\.image_proj",  # ResNet features -> d_model, on every image token
    "encoder.attention": r"encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",
    "encoder.ffn": r"encoder\.layers\.\d+\.fc[12]",
    "decoder.cross_kv": r"decoder\.layers\.\d+\.cross_attn\.[kv]_proj",  # over every encoder token: costly
    "decoder": r"decoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|cross_attn\.(q|out)_proj|fc[12])",  # text only
}
RESNET = "resnet"  # the image stem's convolutions: static int8, activation scales from the calibration images
GROUPS = [RESNET, *LAYER_GROUPS]
ENGINE = "onednn"  # torch's quantized kernels: the fastest here for both kinds (bench/RESULTS.md); x86/fbgemm also work


def group_of(name: str) -> str | None:
    """The layer group of the Linear layer called `name` (its name in OFAModel), None if it is never quantized."""
    return next((group for group, pattern in LAYER_GROUPS.items() if re.fullmatch(pattern, name)), None)


def linear_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group name -> names of the model's Linear layers in it (groups with none are left out)."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        group = group_of(name) if type(module) is nn.Linear else None
        if group is not None:
            groups.setdefault(group, []).append(name)
    return groups


@dataclass
class QuantizationPlan:
    int8_groups: list[str]  # run in int8
    fp32_groups: list[str] = field(default_factory=list)  # measured to move the probabilities too much
    method: str = "torch dynamic: weights int8 per output channel, activations per call"
    tolerance: float | None = None  # the largest |probability change| the plan was chosen for
    engine: str = ENGINE
    resnet_activations: list | None = None  # with "resnet": [observer, scale, zero_point, qmin, qmax] each
    calibration: dict | None = None  # what the choice measured (examples, per-group effects, the result)
    format: str = PLAN_FORMAT

    def __post_init__(self) -> None:
        unknown = sorted(set(self.int8_groups) - set(GROUPS))
        if unknown:
            raise VeloraError(f"int8 plan names unknown layer group(s) {', '.join(unknown)}; "
                              f"known: {', '.join(GROUPS)}")
        if RESNET in self.int8_groups and not self.resnet_activations:
            raise VeloraError("int8 plan quantizes the resnet without its activation scales (resnet_activations): "
                              "choose the plan with velora.quantize.choose_plan on calibration images")

    def describe(self) -> str:
        kept = f"; fp32: {', '.join(self.fp32_groups)}" if self.fp32_groups else ""
        return f"int8: {', '.join(self.int8_groups) or 'nothing'}{kept}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "QuantizationPlan":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != PLAN_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {PLAN_FORMAT!r}")
            return cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise VeloraError(f"{path}: not a velora int8 plan ({e})") from None


# Chosen by bench/quantize.py on the OFA-base-size benchmark (see bench/RESULTS.md, "int8").
DEFAULT_PLAN = QuantizationPlan(int8_groups=["image_proj", "encoder.attention", "encoder.ffn", "decoder.cross_kv"],
                                fp32_groups=["decoder"], tolerance=0.005)


def plan_for(*folders: Path | None) -> QuantizationPlan:
    """The plan saved in the first of `folders` that has one (an adapter's, then its base's), else DEFAULT_PLAN."""
    for folder in folders:
        if folder is not None and (folder / PLAN_FILE).is_file():
            return QuantizationPlan.load(folder / PLAN_FILE)
    return DEFAULT_PLAN


def quantize_model(model: nn.Module, plan: QuantizationPlan, inplace: bool = True) -> nn.Module:
    """`model` with the plan's int8 groups quantized (CPU only): Linear groups dynamic, the ResNet static."""
    model = model if inplace else copy.deepcopy(model)
    groups = linear_groups(model)
    names = [name for group in plan.int8_groups for name in groups.get(group, [])]
    with _engine(plan.engine):
        if names:
            quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                             inplace=True)
        if RESNET in plan.int8_groups:
            model.encoder.embed_images = Int8ResNet(_prepared_resnet(model.encoder.embed_images, plan.engine),
                                                    plan.resnet_activations)
    return model


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    """torch's quantized engine while weights are packed (packed weights then run whatever the global setting),
    with torch.ao's deprecation notices silenced: its kernels are what CPUs run int8 with today."""
    if name not in torch.backends.quantized.supported_engines:
        raise VeloraError(f"int8 plan wants torch's {name!r} quantized engine, which this torch build lacks "
                          f"(it has {', '.join(torch.backends.quantized.supported_engines)})")
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = name
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


def _prepared_resnet(resnet: nn.Module, engine: str) -> nn.Module:
    """The ResNet stem traced with observers on every activation (torch.fx), BatchNorm folded into the convolutions."""
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2,
                         resnet.layer3).eval()
    example = torch.zeros(1, 3, 64, 64)
    return prepare_fx(copy.deepcopy(stem), get_default_qconfig_mapping(engine), example_inputs=(example,))


def _observers(prepared: nn.Module) -> list[tuple[str, ObserverBase]]:
    return [(name, m) for name, m in prepared.named_modules() if isinstance(m, ObserverBase)]


class Int8ResNet(nn.Module):
    """The ResNet stem with int8 convolutions, its activation scales fixed from `activations` (see resnet_scales)."""

    def __init__(self, prepared: nn.Module, activations: list):
        super().__init__()
        observers = _observers(prepared)
        if [name for name, _ in observers] != [a[0] for a in activations]:
            raise VeloraError(f"int8 plan's resnet scales ({len(activations)}) do not fit this model's ResNet "
                              f"({len(observers)} activations): choose the plan on this model")
        for (name, observer), (_, scale, zero_point, qmin, qmax) in zip(observers, activations):
            setattr(prepared, name, FixedQParamsObserver(scale, zero_point, dtype=observer.dtype, quant_min=qmin,
                                                         quant_max=qmax))
        self.stem = convert_fx(prepared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)  # (B, 1024, H/16, W/16) float

    def fuse_for_inference_(self) -> "Int8ResNet":
        return self  # BatchNorm is already folded


def resnet_scales(model: nn.Module, pixels: Sequence[torch.Tensor], engine: str = ENGINE) -> list:
    """Each activation's int8 scale and zero point of the ResNet stem, observed on calibration images (each
    (1, 3, H, W), normalised): what a plan stores so the int8 ResNet is rebuilt identically."""
    with _engine(engine):
        prepared = _prepared_resnet(model.encoder.embed_images, engine)
        with torch.inference_mode():
            for x in pixels:
                prepared(x)
        return [[name, float(scale), int(zero_point), observer.quant_min, observer.quant_max]
                for name, observer in _observers(prepared) for scale, zero_point in [observer.calculate_qparams()]]
