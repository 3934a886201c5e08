"""What a sweep varies: the six settings of the guide's sections 5.2-5.3, each a list of values (a grid point per
combination) or, with `--trials N`, a range LOW:HIGH that Optuna's TPE sampler searches.

    --lora_r 4,8,16,32 --learning_rate 1e-4,2e-4       8 configurations, in this order (the last flag varies fastest)
    --lora_alpha 2r                                      alpha follows each rank (scale alpha/r stays 2)
    --learning_rate auto                                 the guide's rule for each run's effective batch
    --lora_target_modules q_proj,v_proj --lora_target_modules q_proj,k_proj,v_proj,out_proj   (one set per flag)
    --trials 12 --learning_rate 5e-5:5e-4 --lora_r 4,8,16,32                                   (TPE)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from velora.errors import VeloraError

# setting -> (kind of value, short name in run folder names); order = grid order, the last one varies fastest
SWEPT = {"lora_r": ("int", "r"), "lora_alpha": ("alpha", "a"), "learning_rate": ("rate", "lr"),
         "num_train_epochs": ("float", "ep"), "per_device_train_batch_size": ("int", "bs"),
         "lora_target_modules": ("modules", "tm")}
LOG_SCALE = {"lora_r", "lora_alpha", "learning_rate", "per_device_train_batch_size"}  # ranges searched in log space
DEFAULT_SEARCH = {"lora_r": "4,8,16,32", "learning_rate": "5e-5:5e-4"}  # --trials without any swept setting
EXAMPLES = {"lora_r": "4,8,16,32", "lora_alpha": "16 or 2r", "learning_rate": "1e-4,2e-4 or auto",
            "num_train_epochs": "3,5", "per_device_train_batch_size": "2,4",
            "lora_target_modules": "q_proj,v_proj"}
ALPHA_PER_RANK = re.compile(r"^(\d+(?:\.\d+)?)r$")


@dataclass(frozen=True)
class Dimension:
    """One setting's values: `values` (choices), or a range `low`..`high` (only with --trials)."""

    name: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    @property
    def varies(self) -> bool:
        return self.is_range or len(self.values) > 1

    def distribution(self) -> BaseDistribution:
        if not self.is_range:
            return CategoricalDistribution(self.values)
        log = self.name in LOG_SCALE
        if SWEPT[self.name][0] in ("int", "alpha"):
            return IntDistribution(int(self.low), int(self.high), log=log)
        return FloatDistribution(self.low, self.high, log=log)

    def to_json(self) -> dict:
        return {"low": self.low, "high": self.high} if self.is_range else {"values": list(self.values)}

    def text(self) -> str:
        return f"{self.low:g}:{self.high:g}" if self.is_range else ",".join(shown(v) for v in self.values)


def shown(value: Any) -> str:
    """A value as a person types it: 0.0002 -> 2e-4 is left to the user; 4.0 -> 4."""
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def _one_value(name: str, text: str) -> Any:
    kind = SWEPT[name][0]
    text = text.strip()
    try:
        if kind == "modules":
            return ",".join(m.strip() for m in text.split(",") if m.strip())
        if kind == "alpha" and ALPHA_PER_RANK.match(text):
            return text
        if kind == "rate" and text.lower() == "auto":
            return "auto"
        value = int(text) if kind in ("int", "alpha") else float(text)
    except ValueError:
        raise VeloraError(f"--{name} {text!r}: not a value; e.g. --{name} {EXAMPLES[name]}") from None
    if value <= 0:
        raise VeloraError(f"--{name} {text!r}: must be above 0")
    return value


def _range(name: str, text: str) -> Dimension:
    low_text, high_text = text.split(":", 1)
    kind = SWEPT[name][0]
    if kind not in ("int", "alpha", "float", "rate"):
        raise VeloraError(f"--{name} {text!r}: a range works for numbers only; list the values instead")
    low, high = _one_value(name, low_text), _one_value(name, high_text)
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low >= high:
        raise VeloraError(f"--{name} {text!r}: a range is LOW:HIGH with LOW below HIGH, e.g. 5e-5:5e-4")
    return Dimension(name, low=low, high=high)


def parse_dimension(name: str, texts: Sequence[str]) -> Dimension:
    """A setting's command-line values: each flag's text is a comma list (target modules: one set per flag), or one
    range LOW:HIGH."""
    if name not in SWEPT:
        raise VeloraError(f"{name!r} cannot be swept; these can: {', '.join(SWEPT)}")
    texts = [t for t in texts if str(t).strip()]
    if len(texts) == 1 and ":" in texts[0]:
        return _range(name, texts[0])
    if any(":" in t for t in texts):
        raise VeloraError(f"--{name}: give one range LOW:HIGH, or a list of values, not both")
    items = texts if SWEPT[name][0] == "modules" else [item for t in texts for item in str(t).split(",")]
    values = [_one_value(name, item) for item in items if item.strip()]
    if not values:
        raise VeloraError(f"--{name}: no value given; e.g. --{name} {EXAMPLES[name]}")
    return Dimension(name, values=tuple(dict.fromkeys(values)))


def space_from_mapping(space: Mapping[str, Any]) -> dict[str, Dimension]:
    """The Python API's space: {"lora_r": [4, 8], "learning_rate": (5e-5, 5e-4), "lora_alpha": "2r"}: a list is the
    values, a (low, high) tuple a range, a string is read like the flag."""
    dimensions = {}
    for name, value in space.items():
        if isinstance(value, tuple) and len(value) == 2 and name != "lora_target_modules":
            dimensions[name] = parse_dimension(name, [f"{value[0]}:{value[1]}"])
        elif isinstance(value, (list, tuple)):
            texts = [",".join(v) if isinstance(v, (list, tuple)) else str(v) for v in value]
            dimensions[name] = parse_dimension(name, texts)
        else:
            dimensions[name] = parse_dimension(name, [str(value)])
    return {name: dimensions[name] for name in SWEPT if name in dimensions}


def grid(space: Mapping[str, Dimension]) -> list[dict[str, Any]]:
    """Every combination of the varying settings' values, the last setting varying fastest."""
    ranges = [d for d in space.values() if d.is_range]
    if ranges:
        raise VeloraError(f"--{ranges[0].name} {ranges[0].text()} is a range: add --trials N to search it, or list "
                          "values for a grid")
    varying = [d for d in space.values() if d.varies]
    return [dict(zip([d.name for d in varying], combo)) for combo in itertools.product(*(d.values for d in varying))]


def fixed_settings(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """The settings given one value: the same in every run."""
    return {d.name: d.values[0] for d in space.values() if not d.varies}


def run_settings(params: Mapping[str, Any], space: Mapping[str, Dimension], base_rank: int) -> dict[str, Any]:
    """`velora train` settings of one configuration: alpha `Nr` becomes N x the run's rank."""
    settings = {**fixed_settings(space), **params}
    alpha = settings.get("lora_alpha")
    if isinstance(alpha, str):
        rank = settings.get("lora_r", base_rank)
        settings["lora_alpha"] = max(1, round(float(ALPHA_PER_RANK.match(alpha).group(1)) * rank))
    return settings


def run_name(params: Mapping[str, Any], seed: int) -> str:
    """A folder name saying what varies: r8_lr0.0002_seed42."""
    parts = [SWEPT[name][1] + shown(value).replace(",", "+") for name, value in params.items()]
    return re.sub(r"[^A-Za-z0-9.+_-]", "-", "_".join([*parts, f"seed{seed}"]))


def describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {shown(value)}" for name, value in params.items()) or "the one configuration"
