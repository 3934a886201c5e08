"""`velora train` and `velora init` on the command line.

`velora train`'s options are TrainConfig's fields, turned into flags by HfArgumentParser's own field-to-flag
mapping (so every transformers TrainingArguments flag works, dashed spellings and `--no_X` complements included)
and made into click options on first use (transformers takes seconds to import). `--help` lists velora's flags by
stage; `--help-all` adds every TrainingArguments flag. Only the flags given on the command line reach
`load_config`, where they beat `--config` and $VELORA_MODEL.
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

import click
from click.core import ParameterSource

HELP_SECTIONS = {
    "Model": ["model_name_or_path", "image_size"],
    "Data": ["dataset_name", "train_file", "image_root", "val_ratio", "class_weights", "cache_image_features"],
    "LoRA": ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"],
    "Training (the guide's flags)": [
        "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
        "learning_rate", "logging_steps", "save_steps", "eval_steps", "save_total_limit", "resume_from_checkpoint",
        "overwrite_output_dir", "seed", "bf16", "report_to"],
}
HELP_ALL = "velora.help_all"
NEGATED = "no_"  # click name of a `--no_X` flag: X set to false
REPEATABLE = ("dataset_name", "train_file")  # several sources: `--dataset_name A --dataset_name B` = A,B
INIT_LAYOUT = {"lora_config.json": "configs", "example_ve_data.csv": "data"}  # velora/templates/ (package data)


class _ArgparseType(click.ParamType):
    """A field type HfArgumentParser calls on the flag's text (LearningRate, a union...) as a click type."""

    def __init__(self, convert, name: str):
        self.to_value, self.name = convert, name

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.to_value(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            self.fail(f"{value!r}: {e}", param, ctx)


class _FieldOption(click.Option):
    """Help lists a flag's underscore spelling (the guide's) and its aliases, not every dashed twin."""

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        shown = [o for o in self.opts if not ("-" in o[2:] and "--" + o[2:].replace("-", "_") in self.opts)]
        return " / ".join(shown) + ("" if self.is_flag else " " + self.make_metavar(ctx)), record[1]


def _click_type(action: argparse.Action) -> click.ParamType:
    if action.choices:
        return click.Choice([str(c) for c in action.choices])
    known = {int: click.INT, float: click.FLOAT, str: click.STRING}
    if getattr(action.type, "__name__", "") == "string_to_bool":
        return click.BOOL
    if action.type in known:
        return known[action.type]
    return _ArgparseType(action.type, "RATE|auto" if action.dest == "learning_rate" else "VALUE")


def _default_text(default) -> str:
    return f"  [default: {default}]" if isinstance(default, (str, int, float, bool)) else ""


def _option(action: argparse.Action) -> click.Option:
    """One click option with the flag names, type, choices and help of HfArgumentParser's argparse action."""
    names = list(action.option_strings)
    if action.nargs == 0:  # --no_X: the complement of a true-by-default boolean
        return _FieldOption([*names, f"{NEGATED}{action.dest}"], is_flag=True, flag_value=False, default=None,
                            help=f"Set --{action.dest} to false.")
    kwargs: dict = {"type": _click_type(action)}
    if action.nargs == "+" or action.dest in REPEATABLE:
        kwargs["multiple"] = True
    if action.nargs == "?" or kwargs["type"] is click.BOOL:  # `--flag` alone means true
        kwargs.update(is_flag=False, flag_value=True if action.const is None else action.const)
    return _FieldOption([*names, action.dest], default=None, help=(action.help or "") + _default_text(action.default),
                        **kwargs)


def config_options(config_class: type | None = None) -> list[click.Option]:
    """Click options of TrainConfig's fields (or of `config_class`'s, a TrainConfig subclass: velora distill's)."""
    from transformers import HfArgumentParser  # deferred: transformers takes seconds to import

    from velora.train.config import TrainConfig  # deferred: imports transformers

    parser = HfArgumentParser(config_class or TrainConfig)
    return [_option(action) for action in parser._actions if action.option_strings and action.dest != "help"]


class TrainCommand(click.Command):
    """A click command whose TrainConfig options are made the first time click asks for them."""

    lead_sections: dict[str, list[str]] = {}  # help sections listed before the training flags (velora sweep's)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not any(p.name == "output_dir" for p in self.params):
            self.params.extend(config_options())
        return super().get_params(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = {p.name: p for p in self.get_params(ctx)}
        first = {name for names in self.lead_sections.values() for name in names}
        layout = {**self.lead_sections,
                  **{title: [n for n in names if n not in first] for title, names in HELP_SECTIONS.items()}}
        listed = {name for names in layout.values() for name in names}
        sections = {title: [params[n] for n in names] for title, names in layout.items()}
        sections["Options"] = [params["config"], params["help_all"], self.get_help_option(ctx)]
        others = [p for name, p in params.items() if name not in listed and p not in sections["Options"]]
        if ctx.meta.get(HELP_ALL):
            sections["transformers TrainingArguments (all work here)"] = others
        for title, section in sections.items():
            with formatter.section(title):
                formatter.write_dl([r for r in (p.get_help_record(ctx) for p in section if p is not None) if r])
        if not ctx.meta.get(HELP_ALL):
            formatter.write_paragraph()
            formatter.write_text(f"Every transformers TrainingArguments flag works too ({len(others)} more: "
                                 "--activation_checkpointing, --warmup_steps, --weight_decay...): "
                                 f"{_own_command_path(ctx, self.name)} --help-all")


def _own_command_path(ctx: click.Context, name: str | None) -> str:
    """`velora train` even when run by an alias of the guide's (`velora finetune_lora`)."""
    return " ".join(filter(None, [ctx.parent.command_path if ctx.parent else None, name]))


def _show_help_all(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        ctx.meta[HELP_ALL] = True
        click.echo(ctx.get_help())
        ctx.exit()


config_option = click.option(
    "--config", "config", type=click.Path(dir_okay=False), default=None,
    help="JSON file of settings with the guide's keys (`velora init` writes a commented one); flags override it.")
help_all_option = click.option(
    "--help-all", "--help_all", "help_all", is_flag=True, expose_value=False, is_eager=True, callback=_show_help_all,
    help="Show every flag, transformers TrainingArguments' included, and exit.")


@click.command("train", cls=TrainCommand)
@config_option
@help_all_option
@click.pass_context
def train_command(ctx: click.Context, config: str | None, **values):
    """LoRA fine-tuning of OFA visual entailment: the guide's flags plus any transformers TrainingArguments flag.

    Prints the guide's log lines; OUTPUT_DIR gets the adapter (PEFT layout), a model card, metrics.json,
    training_curve.png, trainer_state.json (follow it with tail -f) and checkpoint-N/ folders.

    \b
    Examples:
      velora train --model_name_or_path iic/ofa_visual-entailment_snli-ve_large_en \\
          --dataset_name ./data/hf_dataset --output_dir ./lora_finetuned \\
          --per_device_train_batch_size 4 --num_train_epochs 3 --save_steps 100 --logging_steps 20
      velora train --config configs/lora_config.json --num_train_epochs 5
      velora train --train_file data/my_ve_data.csv --output_dir ./lora_finetuned --learning_rate auto
      velora train ... --resume_from_checkpoint auto      # after an interruption
      torchrun --nproc_per_node 2 -m velora train ...     # data-parallel (gloo on CPU)
    """
    from velora.train.recipe import train  # deferred: transformers, peft and datasets take seconds to import

    return train(config_from_context(ctx, config, values))


def config_from_context(ctx: click.Context, config: str | None, values: dict):
    """The run's TrainConfig: --config, then only the flags given on the command line."""
    from velora.train.config import load_config  # deferred: transformers takes seconds to import

    return load_config(config, given_flags(ctx, values))


def given_flags(ctx: click.Context, values: dict) -> dict:
    """The TrainConfig values of the flags given on the command line (`--no_X` as X false)."""
    flags = {}
    for name, value in values.items():
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        if name.startswith(NEGATED):  # TrainConfig has no field of that name: it is a `--no_X` flag
            flags[name.removeprefix(NEGATED)] = False
        else:
            flags[name] = list(value) if isinstance(value, tuple) else value
    return flags


def config_from_argv(argv: list[str]):
    """What `velora train ARGV` would run with, without running it."""
    with train_command.make_context("velora train", list(argv)) as ctx:
        params = dict(ctx.params)
        return config_from_context(ctx, params.pop("config"), params)


# ----------------------------------------------------------------------------------------------------------------
# velora init


def init_project(directory: Path) -> tuple[list[Path], list[Path]]:
    """Write the templates into `directory`'s configs/ and data/; files that exist are left as they are. Returns
    (written, kept)."""
    written, kept = [], []
    for name, folder in INIT_LAYOUT.items():
        target = directory / folder / name
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((files("velora") / "templates" / name).read_bytes())
        written.append(target)
    return written, kept


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init_command(directory: str) -> None:
    """Start a project in DIRECTORY (default: here) with the guide's layout: configs/lora_config.json (the training
    settings, commented) and data/example_ve_data.csv (the CSV columns with two example rows).

    \b
    Examples:
      velora init my_project && cd my_project
      velora init .
    """
    written, kept = init_project(Path(directory))
    for path in written:
        click.echo(f"Wrote {path}")
    for path in kept:
        click.echo(f"Kept {path} (it exists)")
    click.echo("\nNext: put your CSV (image_path,premise,hypothesis,label) and its images in data/, set train_file, "
               "num_train_epochs and per_device_train_batch_size in configs/lora_config.json, then:\n"
               "  velora validate data/my_ve_data.csv\n"
               "  velora train --config configs/lora_config.json")
