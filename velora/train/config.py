"""The one configuration of `velora train`: `TrainConfig`, every `transformers.TrainingArguments` field plus
velora's own (model, data, LoRA) with the guide's defaults, assembled in one place by `load_config`:

    defaults  <  JSON config file (`--config`, the guide's keys, read with `HfArgumentParser.parse_dict`)
              <  $VELORA_MODEL (the model only)  <  explicit values (command-line flags, a Python dict)

Every value a flag overrides in the config file is reported, and so is where the base model came from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import HfArgumentParser, TrainingArguments

from velora.errors import VeloraError
from velora.hub import DEFAULT_MODEL_ID

BASE_LEARNING_RATE, BASE_BATCH = 2e-4, 4  # the guide's rule: 2e-4 at an effective batch of 4, linear in the batch
LEARNING_RATE_TOLERANCE = 1.5  # how far off the rule a learning rate may be before the run says so

# The guide's config keys and velora's names for them.
CONFIG_ALIASES = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                  "target_modules": "lora_target_modules", "lr": "learning_rate", "epochs": "num_train_epochs",
                  "batch_size": "per_device_train_batch_size", "model": "model_name_or_path",
                  "model_path": "model_name_or_path"}
DATA_PATH_KEYS = ("train_file", "dataset_name", "image_root")  # relative to the config file when not found here


class LearningRate(float):
    """A learning rate, or `auto`: the guide's rule for the run's effective batch, filled in by TrainConfig.
    HfArgumentParser calls a field's type on the flag's text, so `--learning_rate auto` parses as one of these; so
    does `"learning_rate": "auto"` in a config file."""

    auto: bool

    def __new__(cls, value: float | str = BASE_LEARNING_RATE) -> "LearningRate":
        is_auto = isinstance(value, str) and value.strip().lower() == "auto"
        try:
            rate = super().__new__(cls, BASE_LEARNING_RATE if is_auto else value)
        except (TypeError, ValueError):
            raise ValueError(f"learning rate {value!r}: give a number such as 2e-4, or auto") from None
        rate.auto = is_auto or getattr(value, "auto", False)
        return rate


def rule_learning_rate(effective_batch: int) -> float:
    return BASE_LEARNING_RATE * effective_batch / BASE_BATCH


def _comma_list(value: str | list | tuple) -> str:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return ",".join(str(item).strip() for item in items if str(item).strip())


@dataclass
class TrainConfig(TrainingArguments):
    """Everything one `velora train` run needs. Fields not listed here are TrainingArguments' own."""

    # -- model ---------------------------------------------------------------------------------------------------
    model_name_or_path: str = field(default=DEFAULT_MODEL_ID, metadata={
        "aliases": ["--model_path", "--model-path"],
        "help": "Base OFA model: hub id or local directory in the hub layout (default: $VELORA_MODEL, else the "
                "ModelScope VE model)."})
    image_size: int | None = field(default=None, metadata={
        "help": "Image size in px (default: the model's configuration.json, else 480). Smaller is faster."})
    # -- data ----------------------------------------------------------------------------------------------------
    dataset_name: str | None = field(default=None, metadata={
        "help": "Dataset directory made by `velora convert`; several as A,B (a later one wins on a duplicate row)."})
    train_file: str | None = field(default=None, metadata={
        "help": "CSV/JSONL (image_path,premise,hypothesis,label) converted now into OUTPUT_DIR/dataset; several as "
                "A,B."})
    image_root: str | None = field(default=None, metadata={"help": "Image folder for --train_file paths."})
    val_ratio: float = field(default=0.2, metadata={"help": "Validation share when converting --train_file."})
    class_weights: str = field(default="none", metadata={
        "help": "Loss weights per label: none, balanced (inverse frequency) or three numbers e,c,n."})
    cache_image_features: bool = field(default=True, metadata={
        "help": "Compute the frozen ResNet's features once per image instead of every step."})
    # -- LoRA ----------------------------------------------------------------------------------------------------
    lora_r: int = field(default=8, metadata={"help": "LoRA rank; higher adds capacity and memory (guide: 8 best)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={
        "help": "Comma-separated module names: q_proj,v_proj covers encoder self-attention and decoder self- and "
                "cross-attention."})
    # -- the run -------------------------------------------------------------------------------------------------
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace a previous run in OUTPUT_DIR (only the files velora wrote there are removed)."})
    # -- TrainingArguments with the guide's defaults ---------------------------------------------------------------
    output_dir: str = field(default="./lora_finetuned", metadata={"help": "Where the adapter and logs go."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "auto (newest complete checkpoint in OUTPUT_DIR; none yet: start from step 0) or a checkpoint "
                "directory."})
    learning_rate: LearningRate = field(default=LearningRate(BASE_LEARNING_RATE), metadata={
        "help": "Peak learning rate, or auto: 2e-4 x effective batch / 4 (the guide's rule)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Examples per step and device."})
    per_device_eval_batch_size: int = 8
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the training split."})
    logging_steps: float = field(default=20, metadata={"help": "Log the loss every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Save a checkpoint every N steps."})
    eval_steps: float | None = field(default=None, metadata={"help": "Evaluate every N steps (default: save_steps)."})
    eval_strategy: str = "steps"
    save_strategy: str = "steps"
    save_total_limit: int | None = field(default=3, metadata={
        "help": "Checkpoints kept (the best is always kept); older complete ones are removed."})
    load_best_model_at_end: bool = True
    metric_for_best_model: str = "macro_f1"
    greater_is_better: bool = True
    warmup_steps: float = 0.06  # the official recipe warms up over 6% of training
    weight_decay: float = 0.01
    remove_unused_columns: bool = False
    dataloader_num_workers: int = 0
    seed: int = field(default=42, metadata={"help": "Seed of the LoRA initialisation and the data order."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "tensorboard (events in OUTPUT_DIR/runs), none, or other integrations."})
    # None: decided by the hardware in __post_init__
    use_cpu: bool | None = None  # default: true without CUDA (makes torchrun on a CPU data-parallel with gloo)
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision (default: on with a GPU that has it; on a CPU, autocast when set)."})
    fp16: bool | None = None  # default: on with a GPU without bf16
    dataloader_pin_memory: bool | None = None  # default: with CUDA only

    def __post_init__(self) -> None:
        if self.dataset_name and self.train_file:
            raise VeloraError("--dataset_name and --train_file are mutually exclusive")
        self.learning_rate = LearningRate(self.learning_rate)
        self.lora_target_modules = _comma_list(self.lora_target_modules)
        self.dataset_name = _comma_list(self.dataset_name) or None if self.dataset_name else None
        self.train_file = _comma_list(self.train_file) or None if self.train_file else None
        if self.eval_steps is None:  # evaluate where checkpoints are saved, so the best one can be kept
            self.eval_steps = self.save_steps
        cuda = torch.cuda.is_available()
        self.use_cpu = (not cuda) if self.use_cpu is None else self.use_cpu
        if self.bf16 is None and self.fp16 is None and cuda:  # mixed precision on a GPU
            self.bf16, self.fp16 = torch.cuda.is_bf16_supported(), not torch.cuda.is_bf16_supported()
        self.bf16, self.fp16 = bool(self.bf16), bool(self.fp16)
        self.dataloader_pin_memory = cuda if self.dataloader_pin_memory is None else self.dataloader_pin_memory
        self.label_names = ["labels"]
        super().__post_init__()
        if self.learning_rate.auto:
            self.learning_rate = LearningRate(rule_learning_rate(self.effective_batch))
            self.learning_rate.auto = True
            print(f"--learning_rate auto: {self.learning_rate:.2e} for an effective batch of {self.effective_batch}")

    @property
    def effective_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def data_sources(self) -> list[str]:
        """--dataset_name's folders, or --train_file's files, in order (a later one wins on a duplicate row)."""
        return (self.dataset_name or self.train_file or "").split(",") if (self.dataset_name or self.train_file) \
            else []

    @property
    def target_modules(self) -> list[str]:
        return self.lora_target_modules.split(",")

    def learning_rate_advice(self) -> str | None:
        """One line when the learning rate is more than 1.5x off the guide's rule for this effective batch."""
        rule = rule_learning_rate(self.effective_batch)
        ratio = float(self.learning_rate) / rule
        if self.learning_rate.auto or 1 / LEARNING_RATE_TOLERANCE <= ratio <= LEARNING_RATE_TOLERANCE:
            return None
        return (f"Note: --learning_rate {float(self.learning_rate):g} is {ratio:.2g}x the guide's rule for an "
                f"effective batch of {self.effective_batch} ({rule:.1e}); --learning_rate auto applies the rule")


# ----------------------------------------------------------------------------------------------------------------
# Assembling a config


def _canonical_keys(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The guide's keys renamed to velora's; keys starting with '_' are comments."""
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        if key.startswith("_"):
            continue
        name = CONFIG_ALIASES.get(key, key)
        if name in out:
            raise VeloraError(f"{where}: {given_as[name]!r} and {key!r} both set {name}; keep one")
        out[name], given_as[name] = value, key
    return out


def _resolve_data_path(value: str, config_file: Path) -> str:
    """A relative data path: as given if it exists, else beside the config file, its parent, or their data/."""
    if not value or Path(value).expanduser().exists() or Path(value).is_absolute():
        return value
    folders = (config_file.parent, config_file.parent.parent)
    for candidate in [folder / value for folder in folders] + [folder / "data" / value for folder in folders]:
        if candidate.exists():
            return str(candidate)
    return value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON config with the guide's keys, as TrainConfig field values."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VeloraError(f"--config {path}: file not found; `velora init` writes a commented one "
                          "(configs/lora_config.json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VeloraError(f"--config {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise VeloraError(f"--config {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(values, dict):
        raise VeloraError(f"--config {path}: expected a JSON object of settings")
    values = _canonical_keys(values, f"--config {path}")
    for key in DATA_PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and key == "image_root":
            values[key] = _resolve_data_path(value, path)
        elif isinstance(value, (str, list)):  # one path, "a,b", or ["a", "b"]
            values[key] = ",".join(_resolve_data_path(str(item).strip(), path)
                                   for item in (value.split(",") if isinstance(value, str) else value))
    return values


def _shown(value: Any) -> str:
    """A value as typed: 5 rather than the 5.0 a float flag parses to."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _choose_model(file_values: dict, explicit: dict, env: Mapping[str, str]) -> tuple[str, str]:
    """The base model and where it came from: a flag (or a setting given in Python) beats $VELORA_MODEL, which
    beats the config file, which beats the default."""
    candidates = {"--model_name_or_path": explicit.get("model_name_or_path"), "$VELORA_MODEL": env.get("VELORA_MODEL"),
                  "the config file": file_values.get("model_name_or_path")}
    given = [(where, value) for where, value in candidates.items() if value]
    if not given:
        return DEFAULT_MODEL_ID, "the default; set --model_name_or_path or $VELORA_MODEL"
    (where, model), *others = given
    beaten = [f"{other} {value}" for other, value in others if value != model]
    return model, f"from {where}" + (f", over {' and '.join(beaten)}" if beaten else "")


def load_config(source: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                env: Mapping[str, str] = os.environ) -> TrainConfig:
    """The run's TrainConfig from `source` (a TrainConfig, returned as is; a dict of settings; or the path of a JSON
    config file) and `overrides` (command-line flags), reporting what the flags override and where the model came
    from. Raises VeloraError on an unknown key or an inconsistent setting."""
    if isinstance(source, TrainConfig):
        return source
    from_file = isinstance(source, (str, os.PathLike))
    where = f"--config {source}" if from_file else "train config"
    file_values = read_config_file(source) if from_file else {}
    given = {} if from_file else _canonical_keys(source or {}, where)
    explicit = {**given, **_canonical_keys(overrides or {}, "flags")}
    for name, value in explicit.items():
        if name in file_values and file_values[name] != value:
            print(f"note: --{name} {_shown(value)} overrides the config's {_shown(file_values[name])}")
    model, origin = _choose_model(file_values, explicit, env)
    print(f"Base model: {model} ({origin})")
    values = {**file_values, **explicit, "model_name_or_path": model}
    return parse_settings(TrainConfig, values, where, "velora train")


def parse_settings(config_class: type, values: dict[str, Any], where: str, command: str):
    """`config_class` (a TrainingArguments dataclass) from settings already merged; unknown names and
    TrainingArguments' own consistency checks become one-line errors naming `where`."""
    unknown = sorted(set(values) - {f.name for f in fields(config_class) if f.init})
    if unknown:
        raise VeloraError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}; `{command} --help-all` "
                          "lists every one")
    try:
        (config,) = HfArgumentParser(config_class).parse_dict(values)
    except ValueError as e:  # TrainingArguments' own consistency checks
        raise VeloraError(str(e).splitlines()[0]) from None
    except TypeError as e:
        raise VeloraError(f"{where}: {e}") from None
    return config
