"""The `velora` command line: one subcommand per pipeline stage, each a thin shell over its stage's Python API.

- A command's module is imported when the command runs (they import torch, transformers...), so `velora --help`
  answers at once: COMMANDS names where each lives and what it does.
- Every flag takes both spellings, `--model_path` and `--model-path` (click's token_normalize_func), and the
  guide's script names work as commands (ALIASES).
- A user error (VeloraError) prints as one line naming what is wrong and exits with code 2, never a traceback.
"""

from __future__ import annotations

import importlib

import click

from velora import __version__
from velora.errors import VeloraError

# name: (module, attribute, one-line summary), in pipeline order
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("velora.train.cli", "init_command", "write the commented LoRA config and an example CSV"),
    "validate": ("velora.cli.data", "validate_command", "check a CSV/JSONL and its images, report only"),
    "convert": ("velora.cli.data", "convert_command", "CSV/JSONL + images -> a checked dataset"),
    "train": ("velora.train.cli", "train_command", "LoRA fine-tuning"),
    "sweep": ("velora.sweep.cli", "sweep_command", "compare LoRA ranks / learning rates...: train, validate, pick"),
    "distill": ("velora.distill.cli", "distill_command", "a smaller student taught by a fine-tuned teacher (edge)"),
    "predict": ("velora.cli.scoring", "predict_command", "one image + premise + hypothesis"),
    "eval": ("velora.cli.scoring", "eval_command", "metrics on a labelled test set"),
    "mine": ("velora.cli.scoring", "mine_command", "low-confidence / likely-mislabelled examples"),
    "review": ("velora.cli.review", "review_command", "review examples on a web page; --apply writes the result"),
    "merge": ("velora.cli.deploy", "merge_command", "fold LoRA into the base weights"),
    "export": ("velora.cli.deploy", "export_group", "ONNX export"),
    "serve": ("velora.cli.deploy", "serve_command", "HTTP service + web page"),
    "demo": ("velora.cli.demo", "demo_command", "the whole job end to end on a built-in example"),
}

# Other names for a command: the guide's scripts (scripts/convert_to_hf.py, finetune_lora.py...) and old spellings.
# Written with underscores: command names are normalised like flags before they are looked up.
ALIASES = {
    "convert_to_hf": "convert", "finetune_lora": "train", "test_finetuned": "predict", "eval_finetuned": "eval",
    "evaluate": "eval", "collect_hard_examples": "mine", "merge_lora": "merge",
}


def normalize_token(token: str) -> str:
    """`model-path` and `model_path` (flag names without their dashes, and command names) are one spelling."""
    return token.replace("-", "_")


class VeloraGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = normalize_token(cmd_name.removesuffix(".py"))
        name = ALIASES.get(name, name)
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS, without importing every command's module."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, _, summary) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VeloraError as e:
            err = click.ClickException(str(e))
            err.exit_code = 2
            raise err from None


@click.group(cls=VeloraGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "token_normalize_func": normalize_token})
@click.version_option(__version__, prog_name="velora")
def cli() -> None:
    """velora: adapt OFA visual entailment to your own image-text pairs with LoRA.

    \b
    The guide's flow:
      velora convert --csv_path ./data/my_ve_data.csv --output_dir ./data/hf_dataset
      velora train --dataset_name ./data/hf_dataset --output_dir ./lora_finetuned
      velora predict --model_path ./lora_finetuned --image x.jpg --premise ... --hypothesis ...
      velora serve --model_path ./lora_finetuned

    `velora COMMAND --help` for each command's flags and examples.
    """
