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


# ---------------------------------------------------------------------------------------------------------------
# shared options

def model_options(f):
    """--model_path / --base_model / --device / --dtype / --image_size, shared by every command that loads a model."""
    from velora.hub import DEFAULT_MODEL_ID

    options = [
        click.option("--model_path", "--model-path", "model_path", envvar="VELORA_MODEL", default=DEFAULT_MODEL_ID,
                     show_default=True, help="Model directory, LoRA adapter directory, or hub id [env VELORA_MODEL]."),
        click.option("--base_model", "--base-model", "base_model", default=None,
                     help="Base model for an adapter (default: the one named in its adapter_config.json)."),
        click.option("--device", default="auto", show_default=True, help="auto (cuda if present), cpu, cuda, cuda:1..."),
        click.option("--dtype", default="auto", show_default=True,
                     help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, bfloat16, float16."),
        click.option("--image_size", "--image-size", "image_size", type=int, default=None,
                     help="Override the model's image size (default: its configuration.json, else 480)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_predictor(model_path: str, base_model: str | None, device: str, dtype: str, image_size: int | None,
                   quantize: str | None = None):
    from velora.predictor import Predictor

    click.echo(f"Loading {model_path} ...", err=True)
    return Predictor.from_pretrained(model_path, base_model=base_model, device=device, dtype=dtype,
                                     image_size=image_size, quantize=quantize)


@cli.command("predict")
@model_options
@click.option("--image", required=True, help="Image file (any format Pillow reads).")
@click.option("--premise", default=None, help="Text premise describing the image (optional).")
@click.option("--hypothesis", required=True, help="Statement to check against image + premise.")
@click.option("--compare_base", "--compare-base", "compare_base", is_flag=True,
              help="Also score with the adapter switched off and show both.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with all three probabilities.")
def predict_command(model_path, base_model, device, dtype, image_size, image, premise, hypothesis, compare_base,
                    as_json):
    """Say whether IMAGE (+ PREMISE) entails, contradicts or is neutral to HYPOTHESIS.

    \b
    Examples:
      velora predict --model_path ./lora_finetuned --image data/test_product.jpg \\
          --premise "A stainless steel coffee maker on a kitchen counter" \\
          --hypothesis "This appliance brews hot beverages" --compare_base
      velora predict --model_path ./merged_model --image a.jpg --hypothesis "there are two birds." --json
    """
    import json

    from velora.images import load_image
    from velora.predict import predict

    if not hypothesis.strip():
        raise VeloraError("--hypothesis is empty: give the statement to check against the image")
    pixels = load_image(image)
    predictor = load_predictor(model_path, base_model, device, dtype, image_size)
    result = predict(predictor, pixels, premise, hypothesis, compare_base=compare_base, name=image)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(f"Model: {predictor.description}")
        click.echo(result.to_text())
