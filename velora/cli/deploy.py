"""`velora merge`, `velora export onnx`, `velora serve`: a trained model made into what runs elsewhere, and served."""

from __future__ import annotations

import click

from velora.cli.options import model_options, open_translator, translate_options
from velora.export import OPSET, export_onnx
from velora.merge import merge_lora
from velora.serve import ServeSettings, parse_adapter_specs
from velora.serve.app import load_predictor
from velora.serve.run import ensure_port_free, serve


@click.command("merge")
@click.option("--base_model", default=None,
              help="Base model dir or hub id (default: the one named in the adapter's adapter_config.json).")
@click.option("--lora_path", "--model_path", "lora_path", required=True,
              help="LoRA adapter folder from `velora train`.")
@click.option("--output_dir", required=True, help="Folder for the merged model.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Storage dtype of the merged weights (the merge itself is done in float32).")
@click.option("--device", default="cpu", show_default=True, help="Where to merge and run the self-check.")
@click.option("--overwrite", is_flag=True, help="Replace a model already in --output_dir.")
def merge_command(base_model, lora_path, output_dir, dtype, device, overwrite):
    """Fold a LoRA adapter into its base model and save one plain model (no PEFT needed to load it), in the base
    checkpoint's own layout, so any OFA loader reads it.

    The result is checked before it is written: on a few examples it must give the adapter's probabilities.

    \b
    Examples:
      velora merge --base_model iic/ofa_visual-entailment_snli-ve_large_en \\
          --lora_path ./lora_finetuned --output_dir ./merged_model
      velora merge --lora_path ./lora_finetuned --output_dir ./merged_fp16 --dtype float16
    """
    click.echo(f"Merging {lora_path} ...", err=True)
    result = merge_lora(lora_path, output_dir, base_model=base_model, dtype=dtype, device=device,
                        overwrite=overwrite)
    click.echo(result.summary())


@click.group("export")
def export_group() -> None:
    """Export a model for other runtimes."""


@export_group.command("onnx")
@click.option("--model_path", envvar="VELORA_MODEL", required=True,
              help="Model directory, LoRA adapter directory (merged first), or hub id [env VELORA_MODEL].")
@click.option("--base_model", default=None,
              help="Base model for an adapter (default: the one named in its adapter_config.json).")
@click.option("--output", required=True, help="The .onnx file to write.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Write an int8 graph (dynamic quantization of the Linear layers) to --output; the fp32 one "
                   "stays beside it as <name>.fp32.onnx.")
@click.option("--eval_file", default=None,
              help="Labelled CSV/JSONL or converted dataset: report the accuracy of the exported graph(s).")
@click.option("--split", default="validation", show_default=True, help="Split of a converted --eval_file.")
@click.option("--image_size", type=int, default=None, help="Image size baked into the graph (default: the model's).")
@click.option("--opset", type=click.IntRange(17), default=OPSET, show_default=True)
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True,
              help="torch.export-based exporter, or the legacy TorchScript one.")
@click.option("--batch_size", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Batch size for --eval_file.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
def export_onnx_command(model_path, base_model, output, quantize, eval_file, split, image_size, opset, exporter,
                        batch_size, overwrite):
    """Export the scoring graph (image + token ids -> three probabilities) to ONNX and check it with onnxruntime.

    Beside the .onnx go <name>.json (image size, mean/std, prompt templates, answer ids, label order) and the
    tokenizer files; `velora.export.OnnxPredictor.from_file(PATH)` runs it from Python.

    \b
    Examples:
      velora export onnx --model_path ./merged_model --output model.onnx
      velora export onnx --model_path ./lora_finetuned --output model_int8.onnx --quantize int8 \\
          --eval_file ./data/hf_dataset
    """
    click.echo(f"Exporting {model_path} ...", err=True)
    result = export_onnx(model_path, output, base_model=base_model, quantize=quantize, eval_file=eval_file,
                         split=split, image_size=image_size, opset=opset, exporter=exporter, batch_size=batch_size,
                         overwrite=overwrite, progress=True)
    click.echo(result.summary())


@click.command("serve")
@model_options
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=PATH",
              help="Another LoRA adapter on the same base, picked per request with adapter=NAME (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--api_key", envvar="VELORA_API_KEY", default=None,
              help="Require this key on /check and /check_batch (header X-API-Key or Authorization: Bearer) "
                   "[env VELORA_API_KEY].")
@click.option("--max_batch_size", type=click.IntRange(1, 512), default=16, show_default=True,
              help="Examples per model call; 1 turns micro-batching off.")
@click.option("--max_wait_ms", type=click.FloatRange(0, 10_000), default=10.0, show_default=True,
              help="How long a request waits for others to share its model call.")
@click.option("--max_upload_mb", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Largest request body accepted; bigger gets 413.")
@click.option("--header_timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds for a request's line and headers to arrive, else 408.")
@click.option("--body_timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="Seconds for a body to arrive (+1 s per 16 KB received), else 408.")
@click.option("--keep_alive_timeout", default=5.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--limit_concurrency", type=click.IntRange(0), default=256, show_default=True,
              help="Open connections or requests in progress before new requests get 503 (0: no cap).")
@click.option("--log_level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="One line per request at info.")
@translate_options
def serve_command(model, adapters, host, port, api_key, max_batch_size, max_wait_ms, max_upload_mb, header_timeout,
                  body_timeout, keep_alive_timeout, limit_concurrency, log_level, translate):
    """Serve the model over HTTP: POST /check, a web page at /, /metrics, API docs at /docs.

    With --translate, Chinese premises and hypotheses are translated before scoring and each answer's
    `translation` carries the English texts scored; without it, such a request's answer carries `warnings`.

    \b
    Examples:
      velora serve --model_path ./lora_finetuned
      velora serve --model_path ./lora_finetuned --adapter strict=./lora_strict --api_key s3cret
      velora serve --model_path ./lora_finetuned --translate ./opus-mt-zh-en --glossary terms.csv
      curl -F image=@data/test_product.jpg -F premise="A coffee maker on a counter" \\
          -F hypothesis="This appliance brews hot beverages" http://127.0.0.1:8000/check
    """
    settings = ServeSettings(**model, adapters=parse_adapter_specs(adapters), api_key=api_key,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb,
                             header_timeout=header_timeout, body_timeout=body_timeout,
                             keep_alive_timeout=keep_alive_timeout, limit_concurrency=limit_concurrency or None,
                             **translate)
    settings.check_paths()
    if settings.translate:  # a wrong back-end, glossary or cache fails now, before the model loads
        open_translator(translate, model["device"], progress=False).close()
    ensure_port_free(host, port)
    click.echo(f"Loading {settings.model_path} ...", err=True)
    predictor = load_predictor(settings)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"Serving {predictor.description} at {url}/ (API docs {url}/docs, metrics {url}/metrics)"
               + ("; API key required" if api_key else ""), err=True)
    serve(settings, host, port, predictor, log_level)
