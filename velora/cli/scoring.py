"""`velora predict`, `velora eval`, `velora mine`: a model scores examples (one, a labelled set, a set to review)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from velora.bundle import ModelBundle
from velora.cli.options import load_predictor, model_options, resolve_bundle
from velora.errors import VeloraError
from velora.evaluate import check_output_paths, evaluate
from velora.images import load_image
from velora.mine import check_output, check_settings, mine
from velora.ofa.processor import TextError
from velora.predict import predict


def check_texts(bundle: ModelBundle, premise: str | None, hypothesis: str) -> None:
    """The texts against the model's processor, before its weights load (the message names the flag)."""
    try:
        bundle.processor.encode_text(hypothesis, premise)
    except TextError as e:
        raise VeloraError(f"--{e}") from None


@click.command("predict")
@model_options
@click.option("--image", required=True, help="Image file (any format Pillow reads).")
@click.option("--premise", default=None, help="Text premise describing the image (optional).")
@click.option("--hypothesis", required=True, help="Statement to check against image + premise.")
@click.option("--compare_base", is_flag=True, help="Also score with the adapter switched off and show both.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with all three probabilities.")
def predict_command(model, image, premise, hypothesis, compare_base, as_json):
    """Say whether IMAGE (+ PREMISE) entails, contradicts or is neutral to HYPOTHESIS.

    \b
    Examples:
      velora predict --model_path ./lora_finetuned --image data/test_product.jpg \\
          --premise "A stainless steel coffee maker on a kitchen counter" \\
          --hypothesis "This appliance brews hot beverages" --compare_base
      velora predict --model_path ./merged_model --image a.jpg --hypothesis "there are two birds." --json
    """
    bundle = resolve_bundle(model)
    check_texts(bundle, premise, hypothesis)
    pixels = load_image(image)
    predictor = load_predictor(model, bundle)
    result = predict(predictor, pixels, premise, hypothesis, compare_base=compare_base, name=image)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(f"Model: {predictor.description}")
        click.echo(result.to_text())


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
def eval_command(model, test_file, split, output_report, output_json, plot, compare_base, batch_size, overwrite):
    """Accuracy, per-class precision / recall / F1 and the confusion matrix on a labelled test set.

    \b
    Examples:
      velora eval --model_path ./lora_finetuned --test_file ./data/test_set.csv \\
          --output_report ./eval_report.txt
      velora eval --model_path ./lora_finetuned --test_file ./data/hf_dataset --compare_base \\
          --output_json eval.json --plot confusion.png
    """
    check_output_paths(output_report, output_json, plot, overwrite)
    predictor = load_predictor(model)
    result = evaluate(predictor, test_file, split=split, compare_base=compare_base, batch_size=batch_size,
                      progress=True)
    click.echo(result.to_text())
    for path, save in ((output_report, result.save_text), (output_json, result.save_json), (plot, result.plot)):
        if path:
            click.echo(f"Wrote {save(path)}", err=True)


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
def mine_command(model, data_dir, output_file, confidence_threshold, mislabel_confidence, no_mislabeled, strategy,
                 top_k, split, batch_size, overwrite):
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
    mislabel = None if no_mislabeled else mislabel_confidence
    check_settings(confidence_threshold, strategy, top_k, mislabel)
    check_output(Path(output_file), overwrite)
    predictor = load_predictor(model)
    result = mine(predictor, data_dir, output_file, confidence_threshold=confidence_threshold, strategy=strategy,
                  top_k=top_k, mislabel_confidence=mislabel, split=split, batch_size=batch_size,
                  overwrite=overwrite, progress=True)
    click.echo(result.summary())
