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


@cli.command("serve")
@model_options
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=PATH",
              help="Another LoRA adapter on the same base, picked per request with adapter=NAME (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--api_key", "--api-key", "api_key", envvar="VELORA_API_KEY", default=None,
              help="Require this key on /check and /check_batch (header X-API-Key or Authorization: Bearer) "
                   "[env VELORA_API_KEY].")
@click.option("--max_batch_size", "--max-batch-size", "max_batch_size", type=click.IntRange(1, 512), default=16,
              show_default=True, help="Examples per model call; 1 turns micro-batching off.")
@click.option("--max_wait_ms", "--max-wait-ms", "max_wait_ms", type=click.FloatRange(0, 10_000), default=10.0,
              show_default=True, help="How long a request waits for others to share its model call.")
@click.option("--max_upload_mb", "--max-upload-mb", "max_upload_mb", type=click.FloatRange(0, min_open=True),
              default=10.0, show_default=True, help="Largest request body accepted; bigger gets 413.")
@click.option("--log_level", "--log-level", "log_level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="One line per request at info.")
def serve_command(model_path, base_model, device, dtype, image_size, adapters, host, port, api_key, max_batch_size,
                  max_wait_ms, max_upload_mb, log_level):
    """Serve the model over HTTP: POST /check, a web page at /, /metrics, API docs at /docs.

    \b
    Examples:
      velora serve --model_path ./lora_finetuned
      velora serve --model_path ./lora_finetuned --adapter strict=./lora_strict --api_key s3cret
      curl -F image=@data/test_product.jpg -F premise="A coffee maker on a counter" \\
          -F hypothesis="This appliance brews hot beverages" http://127.0.0.1:8000/check
    """
    from velora.serve import ServeSettings, parse_adapter_specs
    from velora.serve.app import attach_adapters
    from velora.serve.run import ensure_port_free, serve

    settings = ServeSettings(model_path=model_path, base_model=base_model, device=device, dtype=dtype,
                             image_size=image_size, adapters=parse_adapter_specs(adapters), api_key=api_key,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb)
    settings.check_paths()
    ensure_port_free(host, port)
    predictor = attach_adapters(load_predictor(model_path, base_model, device, dtype, image_size), settings.adapters)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"Serving {predictor.description} at {url}/ (API docs {url}/docs, metrics {url}/metrics)"
               + ("; API key required" if api_key else ""), err=True)
    serve(settings, host, port, predictor, log_level)


@cli.command("demo")
@click.option("--output_dir", "--output-dir", "output_dir", default="demo_output", show_default=True,
              help="Where the demo writes its data, model and reports.")
def demo_command(output_dir):
    """Run the main job end to end on a built-in example, offline.

    \b
    Examples:
      velora demo
      make demo
    """
    from velora.demo import run_demo

    run_demo(output_dir)
