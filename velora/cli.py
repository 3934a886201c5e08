"""The `velora` command line: one subcommand per pipeline stage.

Every command is a thin shell over the Python API of its stage module; user errors (VeloraError) print as one line
and exit with code 2.
"""

from __future__ import annotations

import functools

import click

from velora import __version__
from velora.errors import VeloraError
from velora.train.cli import init_command, train_command


# The guide's script names (scripts/convert_to_hf.py, finetune_lora.py, ...) work as hidden command names.
GUIDE_NAMES = {
    "convert_to_hf": "convert", "convert-to-hf": "convert",
    "finetune_lora": "train", "finetune-lora": "train",
    "test_finetuned": "predict", "test-finetuned": "predict",
    "eval_finetuned": "eval", "eval-finetuned": "eval", "evaluate": "eval",
    "collect_hard_examples": "mine",
    "merge_lora": "merge", "merge-lora": "merge",
}


class VeloraGroup(click.Group):
    """Turns VeloraError into a one-line message with exit code 2, never a traceback; knows the guide's names."""

    def get_command(self, ctx: click.Context, cmd_name: str):
        return super().get_command(ctx, GUIDE_NAMES.get(cmd_name.removesuffix(".py"), cmd_name))

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


# ---------------------------------------------------------------------------------------------------------------
# convert / validate


def _input_options(f):
    """INPUT (positional) or --csv_path/--input, and how rows' images are found and checked: shared by convert and
    validate, which receive the latter as one `checks` dict of keyword arguments for velora.convert."""
    options = [
        click.argument("input_arg", metavar="[INPUT]", required=False, type=click.Path(dir_okay=False)),
        click.option("--csv_path", "--csv-path", "--input", "input_path", type=click.Path(dir_okay=False),
                     help="The CSV (image_path,premise,hypothesis,label) or JSONL file; same as INPUT."),
        click.option("--image_root", "--image-root", "image_root", type=click.Path(file_okay=False), default=None,
                     help="Folder relative image paths start from, and that images may not leave (default: the "
                          "input file's folder; the guide's ./data/x.jpg from the folder above also works)."),
        click.option("--allow_outside_paths", "--allow-outside-paths", "allow_outside_paths", is_flag=True,
                     help="Read images outside --image_root too (absolute, ../ and ~ paths, symlinks leading out)."),
        click.option("--num_proc", "--num-proc", "num_proc", type=click.IntRange(1), default=1, show_default=True,
                     help="Processes that decode images in parallel."),
        click.option("--max_pixels", "--max-pixels", "max_pixels", type=click.IntRange(1), default=None,
                     help="Refuse images declaring more pixels (decompression bombs) [default: 40,000,000]."),
        click.option("--max_side", "--max-side", "max_side", type=click.IntRange(1), default=None,
                     help="Refuse images with a longer side, in pixels [default: 16,384]."),
        click.option("--max_image_mb", "--max-image-mb", "max_image_mb", type=click.FloatRange(0, min_open=True),
                     default=None, help="Refuse image files larger than this [default: 10, the server's upload "
                                        "limit]."),
    ]

    @functools.wraps(f)
    def command(*args, image_root, allow_outside_paths, num_proc, max_pixels, max_side, max_image_mb, **kwargs):
        from velora.images import ImageLimits  # deferred: numpy and Pillow, not needed for `velora --help`

        limits = ImageLimits.from_options(max_pixels=max_pixels, max_side=max_side, max_image_mb=max_image_mb)
        checks = dict(image_root=image_root, allow_outside_paths=allow_outside_paths, num_proc=num_proc,
                      limits=limits, progress=True)
        return f(*args, checks=checks, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def _pick_input(input_arg: str | None, input_path: str | None) -> str:
    if input_arg and input_path and input_arg != input_path:
        raise click.UsageError(f"two inputs given ({input_arg} and --csv_path {input_path}); give one")
    if not (input_arg or input_path):
        raise click.UsageError("give the input file: --csv_path data/my_ve_data.csv (or INPUT)")
    return input_arg or input_path


@cli.command("convert")
@_input_options
@click.option("--output_dir", "--output-dir", "output_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the dataset to (created; must be new, empty, or a dataset with --overwrite).")
@click.option("--val_ratio", "--val-ratio", "val_ratio", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Share of rows for the validation split (0: empty validation split).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the train/validation split.")
@click.option("--strict", is_flag=True, help="Write nothing and exit with code 2 if any row would be dropped.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --output_dir.")
def convert_command(input_arg, input_path, checks, output_dir, val_ratio, seed, strict, overwrite):
    """Check a CSV/JSONL of image-text pairs and write a Hugging Face dataset (train + validation).

    Every row is kept or dropped with a reason (line, field, what to fix) in
    OUTPUT_DIR/conversion_report.json. Relative image paths start from the CSV's folder (or --image_root), and
    images outside it are refused unless --allow_outside_paths; each image is fully decoded within the limits and
    its original bytes are embedded, so OUTPUT_DIR is self-contained. No image is in both splits; the validation
    split has the label mix of the whole.

    \b
    Examples:
      velora convert --csv_path ./data/my_ve_data.csv --output_dir ./data/hf_dataset
      velora convert --input data/pairs.jsonl --output_dir data/hf_dataset --val_ratio 0.1 --num_proc 4
      velora convert --input snli_ve_dev.jsonl --image_root flickr30k_images --output_dir snli_ve_dev --strict
    """
    from velora.convert import convert

    report = convert(_pick_input(input_arg, input_path), output_dir, val_ratio=val_ratio, seed=seed, strict=strict,
                     overwrite=overwrite, **checks)
    click.echo(report.summary())


@cli.command("validate")
@_input_options
@click.option("--report_path", "--report-path", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON report [default: <input>.validation_report.json beside the input].")
@click.pass_context
def validate_command(ctx, input_arg, input_path, checks, report_path):
    """Run every check of `velora convert` and write only the report, with data-quality advice.

    Exit code 0 when every row would be kept, 1 when some would be dropped (their lines and reasons are listed),
    2 when the file itself is unusable (missing columns, not UTF-8...).

    \b
    Examples:
      velora validate data/my_ve_data.csv
      velora validate --input data/pairs.jsonl --report_path checks.json --num_proc 4
    """
    from pathlib import Path

    from velora.convert import validate

    source = Path(_pick_input(input_arg, input_path))
    if report_path is None:
        report_path = source.with_name(f"{source.stem}.validation_report.json")
    report = validate(source, report_path=report_path, **checks)
    click.echo(report.summary())
    if report.dropped:
        ctx.exit(1)


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
@click.option("--header_timeout", "--header-timeout", "header_timeout", type=click.FloatRange(0, min_open=True),
              default=10.0, show_default=True, help="Seconds for a request's line and headers to arrive, else 408.")
@click.option("--body_timeout", "--body-timeout", "body_timeout", type=click.FloatRange(0, min_open=True),
              default=30.0, show_default=True, help="Seconds for a body to arrive (+1 s per 16 KB received), else 408.")
@click.option("--keep_alive_timeout", "--keep-alive-timeout", "keep_alive_timeout", default=5.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds an idle keep-alive connection stays open.")
@click.option("--limit_concurrency", "--limit-concurrency", "limit_concurrency", type=click.IntRange(0), default=256,
              show_default=True, help="Open connections or requests in progress before new requests get 503 "
                                      "(0: no cap).")
@click.option("--log_level", "--log-level", "log_level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="One line per request at info.")
def serve_command(model_path, base_model, device, dtype, image_size, adapters, host, port, api_key, max_batch_size,
                  max_wait_ms, max_upload_mb, header_timeout, body_timeout, keep_alive_timeout, limit_concurrency,
                  log_level):
    """Serve the model over HTTP: POST /check, a web page at /, /metrics, API docs at /docs.

    \b
    Examples:
      velora serve --model_path ./lora_finetuned
      velora serve --model_path ./lora_finetuned --adapter strict=./lora_strict --api_key s3cret
      curl -F image=@data/test_product.jpg -F premise="A coffee maker on a counter" \\
          -F hypothesis="This appliance brews hot beverages" http://127.0.0.1:8000/check
    """
    from velora.serve import ServeSettings, parse_adapter_specs  # deferred: fastapi/uvicorn only for `serve`
    from velora.serve.app import attach_adapters  # deferred: as above
    from velora.serve.run import ensure_port_free, serve  # deferred: as above

    settings = ServeSettings(model_path=model_path, base_model=base_model, device=device, dtype=dtype,
                             image_size=image_size, adapters=parse_adapter_specs(adapters), api_key=api_key,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb,
                             header_timeout=header_timeout, body_timeout=body_timeout,
                             keep_alive_timeout=keep_alive_timeout, limit_concurrency=limit_concurrency or None)
    settings.check_paths()
    ensure_port_free(host, port)
    predictor = attach_adapters(load_predictor(model_path, base_model, device, dtype, image_size), settings.adapters)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"Serving {predictor.description} at {url}/ (API docs {url}/docs, metrics {url}/metrics)"
               + ("; API key required" if api_key else ""), err=True)
    serve(settings, host, port, predictor, log_level)


@cli.command("demo")
@click.option("--output_dir", "--output-dir", "output_dir", default="demo_output", show_default=True,
              help="Where the demo writes its data, models and reports.")
@click.option("--model_path", "--model-path", "model_path", envvar="VELORA_MODEL", default=None,
              help="An OFA checkpoint directory (or hub id) to build on [env: VELORA_MODEL]. Default: the hub "
                   "cache's copy of the default model if there is one, else a small OFA built here.")
@click.option("--small", is_flag=True, help="Build on the small OFA even when a real checkpoint is available.")
@click.option("--quick", is_flag=True, help="A few seconds' version of every stage, to check the install.")
def demo_command(output_dir, model_path, small, quick):
    """Run the main job end to end on a built-in synthetic task, offline: make data, convert it, train LoRA,
    evaluate base vs tuned on held-out pictures, predict one example, print the gain.

    \b
    Examples:
      velora demo
      make demo
      VELORA_MODEL=/models/ofa_visual-entailment_snli-ve_large_en velora demo
    """
    from velora.demo import run_demo

    run_demo(output_dir, quick=quick, model_path=model_path, small=small)


# ---------------------------------------------------------------------------------------------------------------
# eval / mine / merge / export


@cli.command("eval")
@model_options
@click.option("--test_file", "--test-file", "test_file", required=True,
              help="Labelled CSV/JSONL (image_path,premise,hypothesis,label) or a dataset folder from `velora convert`.")
@click.option("--split", default="validation", show_default=True,
              help="Split of a converted dataset: validation, train or all (ignored for a CSV/JSONL).")
@click.option("--output_report", "--output-report", "output_report", default=None,
              help="Also write the text report to this file.")
@click.option("--output_json", "--output-json", "output_json", default=None, help="Write every number as JSON.")
@click.option("--plot", default=None, help="Draw the confusion matrix to this image (.png, .svg, .pdf).")
@click.option("--compare_base", "--compare-base", "compare_base", is_flag=True,
              help="Also score with the adapter switched off; show base, tuned and the deltas.")
@click.option("--batch_size", "--batch-size", "batch_size", type=click.IntRange(1, 1024), default=16,
              show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace report files that already exist.")
def eval_command(model_path, base_model, device, dtype, image_size, test_file, split, output_report, output_json,
                 plot, compare_base, batch_size, overwrite):
    """Accuracy, per-class precision / recall / F1 and the confusion matrix on a labelled test set.

    \b
    Examples:
      velora eval --model_path ./lora_finetuned --test_file ./data/test_set.csv \\
          --output_report ./eval_report.txt
      velora eval --model_path ./lora_finetuned --test_file ./data/hf_dataset --compare_base \\
          --output_json eval.json --plot confusion.png
    """
    from velora.evaluate import check_output_paths, evaluate

    check_output_paths(output_report, output_json, plot, overwrite)
    predictor = load_predictor(model_path, base_model, device, dtype, image_size)
    result = evaluate(predictor, test_file, split=split, compare_base=compare_base, batch_size=batch_size,
                      progress=True)
    click.echo(result.to_text())
    for path, save in ((output_report, result.save_text), (output_json, result.save_json), (plot, result.plot)):
        if path:
            click.echo(f"Wrote {save(path)}", err=True)


@cli.command("mine")
@model_options
@click.option("--data_dir", "--data-dir", "data_dir", required=True,
              help="Dataset folder from `velora convert` (every split unless --split), or a CSV/JSONL.")
@click.option("--output_file", "--output-file", "output_file", required=True,
              help="CSV to write; `velora convert` accepts it as is.")
@click.option("--confidence_threshold", "--confidence-threshold", "confidence_threshold", type=float, default=0.6,
              show_default=True, help="List examples whose top probability is below this (flag: ambiguous).")
@click.option("--mislabel_confidence", "--mislabel-confidence", "mislabel_confidence", type=float, default=0.9,
              show_default=True,
              help="Also list examples predicted as another label with at least this confidence "
                   "(flag: likely_mislabeled).")
@click.option("--no_mislabeled", "--no-mislabeled", "no_mislabeled", is_flag=True,
              help="List only the low-confidence examples.")
@click.option("--strategy", type=click.Choice(["confidence", "margin", "entropy"]), default="confidence",
              show_default=True, help="Orders the ambiguous examples hardest first: lowest top probability, "
                                      "smallest top-two margin, or highest entropy.")
@click.option("--top_k", "--top-k", "top_k", type=click.IntRange(min=1), default=None,
              help="Keep only the K hardest ambiguous examples (likely-mislabelled ones are all kept).")
@click.option("--split", default="all", show_default=True, help="Split of a converted dataset: all, train, validation.")
@click.option("--batch_size", "--batch-size", "batch_size", type=click.IntRange(1, 1024), default=16,
              show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --output_file if it exists.")
def mine_command(model_path, base_model, device, dtype, image_size, data_dir, output_file, confidence_threshold,
                 mislabel_confidence, no_mislabeled, strategy, top_k, split, batch_size, overwrite):
    """Find the examples worth a second look: low confidence (ambiguous) or confidently contradicting their label
    (likely_mislabeled).

    Writes a CSV with each example's fields, the predicted label, the three probabilities, margin, entropy
    (normalised, 0 = certain, 1 = uniform), the flag and its source row; images that exist only inside the
    dataset are saved to <output>_images/. Review the labels, then feed the file back with `velora convert`.

    \b
    Examples:
      velora mine --model_path ./lora_finetuned --data_dir ./data/hf_dataset \\
          --confidence_threshold 0.6 --output_file ./data/hard_examples.csv
      velora mine --model_path ./lora_finetuned --data_dir ./data/my_ve_data.csv \\
          --strategy margin --top_k 100 --output_file hard.csv
    """
    from pathlib import Path

    from velora.mine import check_output, check_settings, mine

    mislabel = None if no_mislabeled else mislabel_confidence
    check_settings(confidence_threshold, strategy, top_k, mislabel)
    check_output(Path(output_file), overwrite)
    predictor = load_predictor(model_path, base_model, device, dtype, image_size)
    result = mine(predictor, data_dir, output_file, confidence_threshold=confidence_threshold, strategy=strategy,
                  top_k=top_k, mislabel_confidence=mislabel, split=split, batch_size=batch_size,
                  overwrite=overwrite, progress=True)
    click.echo(result.summary())


def _alias(command: click.Command, name: str, of: str) -> click.Command:
    import copy

    alias = copy.copy(command)
    alias.name, alias.short_help = name, f"Same as `velora {of}`."
    return alias


cli.add_command(_alias(mine_command, "collect-hard-examples", "mine"))


@cli.command("merge")
@click.option("--base_model", "--base-model", "base_model", default=None,
              help="Base model dir or hub id (default: the one named in the adapter's adapter_config.json).")
@click.option("--lora_path", "--lora-path", "lora_path", required=True, help="LoRA adapter folder from `velora train`.")
@click.option("--output_dir", "--output-dir", "output_dir", required=True, help="Folder for the merged model.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Storage dtype of the merged weights (the merge itself is done in float32).")
@click.option("--device", default="cpu", show_default=True, help="Where to merge and run the self-check.")
@click.option("--overwrite", is_flag=True, help="Replace a model already in --output_dir.")
def merge_command(base_model, lora_path, output_dir, dtype, device, overwrite):
    """Fold a LoRA adapter into its base model and save one plain model (no PEFT needed to load it).

    The result is checked before it is written: on a few examples it must give the adapter's probabilities.

    \b
    Examples:
      velora merge --base_model iic/ofa_visual-entailment_snli-ve_large_en \\
          --lora_path ./lora_finetuned --output_dir ./merged_model
      velora merge --lora_path ./lora_finetuned --output_dir ./merged_fp16 --dtype float16
    """
    from velora.merge import merge_lora

    click.echo(f"Merging {lora_path} ...", err=True)
    result = merge_lora(lora_path, output_dir, base_model=base_model, dtype=dtype, device=device,
                        overwrite=overwrite)
    click.echo(result.summary())


@cli.group("export")
def export_group() -> None:
    """Export a model for other runtimes."""


@export_group.command("onnx")
@click.option("--model_path", "--model-path", "model_path", envvar="VELORA_MODEL", required=True,
              help="Model directory, LoRA adapter directory (merged first), or hub id [env VELORA_MODEL].")
@click.option("--base_model", "--base-model", "base_model", default=None,
              help="Base model for an adapter (default: the one named in its adapter_config.json).")
@click.option("--output", required=True, help="The .onnx file to write.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Write an int8 graph (dynamic quantization of the Linear layers) to --output; the fp32 one "
                   "stays beside it as <name>.fp32.onnx.")
@click.option("--eval_file", "--eval-file", "eval_file", default=None,
              help="Labelled CSV/JSONL or converted dataset: report the accuracy of the exported graph(s).")
@click.option("--split", default="validation", show_default=True, help="Split of a converted --eval_file.")
@click.option("--image_size", "--image-size", "image_size", type=int, default=None,
              help="Image size baked into the graph (default: the model's).")
@click.option("--opset", type=click.IntRange(17), default=17, show_default=True)
@click.option("--batch_size", "--batch-size", "batch_size", type=click.IntRange(1, 1024), default=8,
              show_default=True, help="Batch size for --eval_file.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
def export_onnx_command(model_path, base_model, output, quantize, eval_file, split, image_size, opset, batch_size,
                        overwrite):
    """Export the scoring graph (image + token ids -> three probabilities) to ONNX and check it with onnxruntime.

    Beside the .onnx go <name>.json (image size, mean/std, prompt templates, answer ids, label order) and the
    tokenizer files; `velora.export.OnnxPredictor.from_file(PATH)` runs it from Python.

    \b
    Examples:
      velora export onnx --model_path ./merged_model --output model.onnx
      velora export onnx --model_path ./lora_finetuned --output model_int8.onnx --quantize int8 \\
          --eval_file ./data/hf_dataset
    """
    from velora.export import export_onnx

    click.echo(f"Exporting {model_path} ...", err=True)
    result = export_onnx(model_path, output, base_model=base_model, quantize=quantize, eval_file=eval_file,
                         split=split, image_size=image_size, opset=opset, batch_size=batch_size,
                         overwrite=overwrite, progress=True)
    click.echo(result.summary())


# `velora train` (click options made from TrainConfig) and `velora init` live with the training code
cli.add_command(train_command)
cli.add_command(init_command)
