"""Arguments of `velora train`: the guide's flags, LoRA settings and every `transformers.TrainingArguments` flag,
parsed by `HfArgumentParser`. A JSON config (`--config configs/lora_config.json`, the guide's keys) gives defaults;
command-line flags override it, and each override is reported.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from velora.errors import VeloraError
from velora.hub import DEFAULT_MODEL_ID

BASE_LEARNING_RATE, BASE_BATCH = 2e-4, 4  # the guide's rule: 2e-4 at an effective batch of 4, linear in the batch


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=DEFAULT_MODEL_ID, metadata={
        "help": "Base OFA model: hub id or local directory in the hub layout (default: $VELORA_MODEL, else the "
                "ModelScope VE model)."})
    image_size: int | None = field(default=None, metadata={
        "help": "Image size in px (default: the model's configuration.json, else 480). Smaller is faster."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset directory made by `velora convert`."})
    train_file: str | None = field(default=None, metadata={
        "help": "CSV/JSONL (image_path,premise,hypothesis,label) converted now into OUTPUT_DIR/dataset."})
    image_root: str | None = field(default=None, metadata={"help": "Image folder for --train_file paths."})
    val_ratio: float = field(default=0.2, metadata={"help": "Validation share when converting --train_file."})
    class_weights: str = field(default="none", metadata={
        "help": "Loss weights per label: none, balanced (inverse frequency) or three numbers e,c,n."})
    cache_image_features: bool = field(default=True, metadata={
        "help": "Compute the frozen ResNet's features once per image instead of every step."})


@dataclass
class LoraArguments:
    lora_r: int = field(default=8, metadata={"help": "LoRA rank; higher adds capacity and memory (guide: 8 best)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={
        "help": "Comma-separated module names: q_proj,v_proj covers encoder self-attention and decoder self- and "
                "cross-attention."})


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a previous run in OUTPUT_DIR."})


@dataclass
class VeloraTrainingArguments(TrainingArguments):
    """TrainingArguments with the guide's defaults."""

    output_dir: str = field(default="./lora_finetuned", metadata={"help": "Where the adapter and logs go."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "auto (newest complete checkpoint in OUTPUT_DIR) or a checkpoint directory."})
    learning_rate: float = field(default=BASE_LEARNING_RATE, metadata={
        "help": "Peak learning rate, or `auto`: 2e-4 x effective batch / 4."})
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    num_train_epochs: float = 3.0
    logging_steps: float = 20
    save_steps: float = 100
    eval_steps: float | None = None  # default: save_steps
    eval_strategy: str = "steps"
    save_strategy: str = "steps"
    save_total_limit: int | None = 3
    load_best_model_at_end: bool = True
    metric_for_best_model: str = "macro_f1"
    greater_is_better: bool = True
    warmup_steps: float = 0.06  # the official recipe warms up over 6% of training
    weight_decay: float = 0.01
    remove_unused_columns: bool = False
    dataloader_num_workers: int = 0
    seed: int = 42


@dataclass
class TrainArguments:
    model: ModelArguments
    data: DataArguments
    lora: LoraArguments
    run: RunArguments
    training: VeloraTrainingArguments


PARSER_CLASSES = (ModelArguments, DataArguments, LoraArguments, RunArguments, VeloraTrainingArguments)

# The guide's config keys and their flag names.
CONFIG_ALIASES = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                  "target_modules": "lora_target_modules", "lr": "learning_rate", "epochs": "num_train_epochs",
                  "batch_size": "per_device_train_batch_size", "model": "model_name_or_path"}


def _flag_names() -> set[str]:
    return {f.name for cls in PARSER_CLASSES for f in fields(cls) if f.init}


def config_to_flags(path: str) -> list[str]:
    """The JSON config as flags; keys starting with '_' are comments; relative data paths resolve from the
    config's folder when they do not exist from the working directory."""
    config_path = Path(path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VeloraError(f"--config {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise VeloraError(f"--config {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    known, flags = _flag_names(), []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        name = CONFIG_ALIASES.get(key, key)
        if name not in known:
            raise VeloraError(f"--config {path}: unknown key {key!r}")
        if name in ("train_file", "dataset_name", "image_root") and value and not Path(value).exists():
            for candidate in (config_path.parent / value, config_path.parent.parent / value, Path("data") / value):
                if candidate.exists():
                    value = str(candidate)
                    break
        if isinstance(value, list):
            value = ",".join(map(str, value))
        flags += [f"--{name}", json.dumps(value) if isinstance(value, bool) else str(value)]
    return flags


def _given(argv: list[str]) -> dict[str, str]:
    given, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            name, _, value = argv[i][2:].partition("=")
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            given[name.replace("-", "_")] = value
        i += 1
    return given


def _pop_auto_learning_rate(argv: list[str]) -> tuple[list[str], bool]:
    """`--learning_rate auto` (the last occurrence wins) is removed here and resolved after parsing."""
    if _given(argv).get("learning_rate") != "auto":
        return argv, False
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--learning_rate":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        elif not arg.startswith("--learning_rate="):
            out.append(arg)
    return out, True


def parse_train_args(argv: list[str]) -> TrainArguments:
    """Config defaults, then command-line flags; `--learning_rate auto`; consistency checks with the fix."""
    argv = list(argv)
    config_flags = []
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise VeloraError("--config needs a path")
        config_flags = config_to_flags(argv[i + 1])
        del argv[i:i + 2]
        overridden = {k: v for k, v in _given(argv).items() if k in _given(config_flags)}
        for name, value in overridden.items():
            print(f"note: --{name} {value} overrides the config's {_given(config_flags)[name]}")
    merged, auto_lr = _pop_auto_learning_rate(config_flags + argv)
    given = _given(merged)
    if "eval_steps" not in given:  # evaluate where checkpoints are saved, so the best one can be kept
        merged += ["--eval_steps", given.get("save_steps", "100")]
    if "use_cpu" not in given and not torch.cuda.is_available():  # makes torchrun on CPU data-parallel (gloo)
        merged += ["--use_cpu", "true"]
    if torch.cuda.is_available() and "bf16" not in given and "fp16" not in given:  # mixed precision on GPU
        merged += ["--bf16" if torch.cuda.is_bf16_supported() else "--fp16", "true"]
    parser = HfArgumentParser(PARSER_CLASSES)
    try:
        model, data, lora, run, training = parser.parse_args_into_dataclasses(args=merged)
    except SystemExit as e:
        if e.code == 0:
            raise
        raise VeloraError("invalid arguments (see above); `velora train -h` lists every flag") from None
    except ValueError as e:  # TrainingArguments' own consistency checks
        raise VeloraError(str(e).splitlines()[0]) from None
    args = TrainArguments(model, data, lora, run, training)
    _finish(args, auto_lr, given)
    return args


def _finish(args: TrainArguments, auto_lr: bool, given: dict[str, str]) -> None:
    t = args.training
    if "model_name_or_path" not in given and os.environ.get("VELORA_MODEL"):
        args.model.model_name_or_path = os.environ["VELORA_MODEL"]
    t.label_names = ["labels"]
    if "dataloader_pin_memory" not in given and not torch.cuda.is_available():
        t.dataloader_pin_memory = False
    if "report_to" not in given:
        t.report_to = ["tensorboard"]
    if auto_lr:
        world = t.world_size
        effective = t.per_device_train_batch_size * t.gradient_accumulation_steps * world
        t.learning_rate = BASE_LEARNING_RATE * effective / BASE_BATCH
        print(f"--learning_rate auto: {t.learning_rate:.2e} for an effective batch of {effective}")
    if args.data.dataset_name and args.data.train_file:
        raise VeloraError("--dataset_name and --train_file are mutually exclusive")


def help_text() -> str:
    parser = HfArgumentParser(PARSER_CLASSES)
    parser.prog = "velora train"
    return parser.format_help()


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print(parse_train_args(sys.argv[1:]))
