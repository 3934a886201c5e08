"""The `velora` command line: one subcommand per pipeline stage.

Every command is a thin shell over the Python API of its stage module; user errors (VeloraError) print as one line
and exit with code 2.
"""

from __future__ import annotations

import click

from velora import __version__
from velora.errors import VeloraError


class VeloraGroup(click.Group):
    """Turns VeloraError into a one-line message with exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VeloraError as e:
            err = click.ClickException(str(e))
            err.exit_code = 2
            raise err from None


@click.group(cls=VeloraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="velora")
def cli() -> None:
    """velora: adapt OFA visual entailment to your own image-text pairs with LoRA.

    \b
    Pipeline:
      velora convert   CSV/JSONL + images -> dataset
      velora train     LoRA fine-tuning
      velora predict   one image + premise + hypothesis
      velora eval      metrics on a labelled test set
      velora mine      low-confidence / likely-mislabelled examples
      velora merge     fold LoRA into the base weights
      velora export    ONNX export
      velora serve     HTTP service + web page
      velora demo      the whole job end to end on a built-in example
    """
