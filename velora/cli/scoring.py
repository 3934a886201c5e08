"""`velora predict`, `velora eval`, `velora mine`: a model scores examples (one, a labelled set, a set to review)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from click.core import ParameterSource

from velora.bundle import ModelBundle
from velora.cli.options import (examples_to_score, image_options, load_predictor, model_options, open_translator,
                                resolve_bundle, texts_to_score, translate_options, warn)
from velora.errors import VeloraError
from velora.images import load_image
from velora.mine import METHODS, check_output, check_settings, mine, trained_on
from velora.ofa.processor import TextError
from velora.predict import predict, predict_file


def check_texts(bundle: ModelBundle, premise: str | None, hypothesis: str) -> None:
    """The texts against the model's processor, before its weights load (the message names the flag)."""
    try:
        bundle.processor.encode_text(hypothesis, premise)
    except TextError as e:
        raise VeloraError(f"--{e}") from None


SINGLE_FLAGS = ("image", "premise", "hypothesis", "compare_base")
BULK_FLAGS = ("input_file", "output_file", "image_root", "allow_outside_paths", "max_pixels", "max_side",
              "max_image_mb", "batch_size", "chunk_size", "num_workers", "overwrite")


def _given(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    return [f"--{n}" for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]


def _check_mode(ctx: click.Context) -> bool:
    """True for a file of rows (--input_file), False for one example; mixing the two is refused, naming flags."""
    single, bulk = _given(ctx, SINGLE_FLAGS), _given(ctx, BULK_FLAGS)
    if {"--input_file", "--output_file"} & set(bulk):
        if single:
            raise click.UsageError(f"--input_file scores a file of rows and {', '.join(single)} one example: give "
                                   "one or the other")
        if ctx.params["input_file"] is None or ctx.params["output_file"] is None:
            raise click.UsageError("give both --input_file (rows.csv, .jsonl or .parquet) and --output_file "
                                   "(preds.jsonl, .csv or .parquet)")
        return True
    if bulk:
        raise click.UsageError(f"{', '.join(bulk)} apply to --input_file (a file of rows), not to --image")
    if not (ctx.params["image"] and ctx.params["hypothesis"] is not None):
        raise click.UsageError("give --image and --hypothesis (one example), or --input_file and --output_file (a "
                               "file of rows)")
    return False


@click.command("predict")
@model_options
@click.option("--image", default=None, help="Image file (any format Pillow reads).")
@click.option("--premise", default=None, help="Text premise describing the image (optional).")
@click.option("--hypothesis", default=None, help="Statement to check against image + premise.")
@click.option("--compare_base", is_flag=True, help="Also score with the adapter switched off and show both.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with all three probabilities (or the summary).")
@click.option("--input_file", type=click.Path(dir_okay=False), default=None,
              help="Score every row of this CSV/TSV, JSONL or Parquet file (image_path, hypothesis; premise and "
                   "label optional).")
@click.option("--output_file", type=click.Path(dir_okay=False), default=None,
              help="Predictions for --input_file: .csv, .jsonl or .parquet; every input column + predicted_label, "
                   "confidence, prob_*, error.")
@image_options
@click.option("--batch_size", type=click.IntRange(1, 1024), default=None,
              help="Rows scored together [default: 16 on CPU, 64 on a GPU].")
@click.option("--chunk_size", type=click.IntRange(1), default=512, show_default=True,
              help="Rows per progress file: a run that is stopped loses at most this many rows per process.")
@click.option("--num_workers", type=click.IntRange(0), default=None,
              help="Processes reading and decoding images beside the model [default: 1 on CPU, up to 8 per GPU].")
@click.option("--overwrite", is_flag=True,
              help="Replace --output_file if it exists, and discard another run's unfinished progress.")
@click.option("--verbose", is_flag=True, help="Also say how long loading the model and scoring took (stderr).")
@translate_options
def predict_command(model, image, premise, hypothesis, compare_base, as_json, input_file, output_file, images,
                    batch_size, chunk_size, num_workers, overwrite, verbose, translate):
    """Say whether IMAGE (+ PREMISE) entails, contradicts or is neutral to HYPOTHESIS; or score every row of a
    file.

    With --input_file, rows are read, images decoded (in --num_workers processes) and predictions written in
    chunks, so memory stays flat; a bad row gets an `error` and never stops the run. Stopped (even kill -9),
    the same command resumes from OUTPUT_FILE.progress/. Under torchrun the rows are shared among processes.

    \b
    Examples:
      velora predict --model_path ./lora_finetuned --image data/test_product.jpg \\
          --premise "A stainless steel coffee maker on a kitchen counter" \\
          --hypothesis "This appliance brews hot beverages" --compare_base
      velora predict --model_path ./merged_model --image a.jpg --hypothesis "there are two birds." --json
      velora predict --model_path ./lora_finetuned --input_file catalogue.csv --output_file preds.jsonl
      torchrun --nproc_per_node 4 -m velora predict --model_path ./lora_finetuned \\
          --input_file catalogue.parquet --output_file preds.parquet
    """
    bundle = resolve_bundle(model)
    if _check_mode(click.get_current_context()):
        translator = open_translator(translate, model["device"], progress=False)
        try:
            result = predict_file(bundle, input_file, output_file, device=model["device"], dtype=model["dtype"],
                                  quantize=model["quantize"], **images, batch_size=batch_size, chunk_size=chunk_size,
                                  num_workers=num_workers, overwrite=overwrite, progress=True, translator=translator)
        finally:
            if translator is not None:
                translator.close()
        if result is not None:  # rank 0 reports
            click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())
            warn(result.untranslated_warning())
        return
    (texts,) = texts_to_score(translate, model["device"], [premise], [hypothesis])
    check_texts(bundle, texts.premise, texts.hypothesis)
    pixels = load_image(image)
    predictor = load_predictor(model, bundle, verbose=verbose)
    start = time.perf_counter()
    result = predict(predictor, pixels, texts.premise, texts.hypothesis, compare_base=compare_base, name=image)
    if verbose:
        click.echo(f"Scored in {time.perf_counter() - start:.2f} s", err=True)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), **(texts.to_dict() if texts.translated else {})}, indent=2,
                              ensure_ascii=False))
    else:
        click.echo(f"Model: {predictor.description}")
        click.echo("\n".join(filter(None, [result.to_text(), texts.to_text()])))


@click.command("eval")
@model_options
@click.option("--test_file", required=True,
              help="Labelled CSV/JSONL (image_path,premise,hypothesis,label) or a dataset folder from `velora convert`.")
@click.option("--split", default="validation", show_default=True,
              help="Split of a converted dataset: validation, train or all (ignored for a CSV/JSONL).")
@click.option("--output_report", default=None, help="Also write the text report to this file.")
@click.option("--output_json", default=None, help="Write every number as JSON.")
@click.option("--plot", default=None, help="Draw the confusion matrix to this image (.png, .svg, .pdf).")
@click.option("--compare_base", is_flag=True,
              help="Also score with the adapter switched off; show base, tuned and the deltas.")
@click.option("--batch_size", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace report files that already exist.")
@translate_options
def eval_command(model, test_file, split, output_report, output_json, plot, compare_base, batch_size, overwrite,
                 translate):
    """Accuracy, per-class precision / recall / F1 and the confusion matrix on a labelled test set.

    \b
    Examples:
      velora eval --model_path ./lora_finetuned --test_file ./data/test_set.csv \\
          --output_report ./eval_report.txt
      velora eval --model_path ./lora_finetuned --test_file ./data/hf_dataset --compare_base \\
          --output_json eval.json --plot confusion.png
    """
    from velora.evaluate import check_output_paths, evaluate  # deferred: scikit-learn + matplotlib, seconds

    check_output_paths(output_report, output_json, plot, overwrite)
    examples = examples_to_score(test_file, split, translate, model["device"])
    predictor = load_predictor(model)
    result = evaluate(predictor, examples, compare_base=compare_base, batch_size=batch_size, progress=True)
    click.echo(result.to_text())
    for path, save in ((output_report, result.save_text), (output_json, result.save_json), (plot, result.plot)):
        if path:
            click.echo(f"Wrote {save(path)}", err=True)


def mining_run(model_path: str, data: str, split: str, method: str) -> str | None:
    """The training run whose settings the out-of-fold adapters repeat, or None to mine with the model itself."""
    trained = trained_on(model_path, data) and split in ("all", "train")
    if method == "out_of_fold" and not Path(model_path, "velora_run.json").exists():
        raise VeloraError(f"--method out_of_fold: {model_path} is not a `velora train` output (no velora_run.json), "
                          "so there are no training settings to repeat; use --method model")
    if method == "out_of_fold" or (method == "auto" and trained):
        click.echo(f"Scoring with out-of-fold adapters (the settings of {model_path})" +
                   (": the model was trained on these rows, so its own scores would trust their labels" if trained
                    else ""), err=True)
        return model_path
    return None


@click.command("mine")
@model_options
@click.option("--data_dir", required=True,
              help="Dataset folder from `velora convert` (every split unless --split), or a CSV/JSONL.")
@click.option("--output_file", required=True, help="CSV to write; `velora convert` accepts it as is.")
@click.option("--confidence_threshold", type=float, default=0.6, show_default=True,
              help="List examples whose top probability is below this (flag: ambiguous).")
@click.option("--mislabel_confidence", type=float, default=0.9, show_default=True,
              help="Also list examples predicted as another label with at least this confidence "
                   "(flag: likely_mislabeled).")
@click.option("--no_mislabeled", is_flag=True, help="List only the low-confidence examples.")
@click.option("--strategy", type=click.Choice(["confidence", "margin", "entropy"]), default="confidence",
              show_default=True, help="Orders the ambiguous examples hardest first: lowest top probability, "
                                      "smallest top-two margin, or highest entropy.")
@click.option("--top_k", type=click.IntRange(min=1), default=None,
              help="Keep only the K hardest ambiguous examples (likely-mislabelled ones are all kept).")
@click.option("--split", default="all", show_default=True, help="Split of a converted dataset: all, train, validation.")
@click.option("--batch_size", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --output_file if it exists.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="Whose probabilities: model (the model's own), out_of_fold (--folds LoRA runs with the model's "
                   "training settings, each scoring rows it did not train on; cleanlab flags likely label errors), "
                   "auto (out_of_fold for rows the model was trained on, else model).")
@click.option("--folds", type=click.IntRange(2, 20), default=4, show_default=True,
              help="Folds of --method out_of_fold.")
@translate_options
def mine_command(model, data_dir, output_file, confidence_threshold, mislabel_confidence, no_mislabeled, strategy,
                 top_k, split, batch_size, overwrite, method, folds, translate):
    """Find the examples worth a second look: low confidence (ambiguous) or confidently contradicting their label
    (likely_mislabeled).

    Writes a CSV with each example's fields, the predicted label, the three probabilities, margin, entropy
    (normalised, 0 = certain, 1 = uniform), the flag and its source row; images that exist only inside the
    dataset are saved to <output>_images/ (named after the original file and the row). Then `velora review
    OUTPUT_FILE` shows them on a web page, and `velora review OUTPUT_FILE --apply` writes the corrected dataset.
    Rows the model was trained on are scored out of fold (see --method): its own scores trust their labels.

    \b
    Examples:
      velora mine --model_path ./lora_finetuned --data_dir ./data/hf_dataset \\
          --confidence_threshold 0.6 --output_file ./data/hard_examples.csv
      velora mine --model_path ./lora_finetuned --data_dir ./data/my_ve_data.csv \\
          --strategy margin --top_k 100 --output_file hard.csv
    """
    mislabel = None if no_mislabeled else mislabel_confidence
    check_settings(confidence_threshold, strategy, top_k, mislabel)
    check_output(Path(output_file), overwrite)
    translator = open_translator(translate, model["device"])
    out_of_fold = mining_run(model["model_path"], data_dir, split, method)
    predictor = load_predictor(model) if out_of_fold is None else None
    try:
        result = mine(predictor, data_dir, output_file, confidence_threshold=confidence_threshold, strategy=strategy,
                      top_k=top_k, mislabel_confidence=mislabel, split=split, batch_size=batch_size,
                      overwrite=overwrite, progress=True, translator=translator, out_of_fold=out_of_fold,
                      folds=folds)
    finally:
        if translator is not None:
            translator.close()
    click.echo(result.summary())
