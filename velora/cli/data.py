"""`velora convert` and `velora validate`: a user's CSV/JSONL of image-text pairs, checked (and converted)."""

from __future__ import annotations

from pathlib import Path

import click

from velora.cli.options import input_options, open_translator, translate_options
from velora.convert import convert, validate


@click.command("convert")
@input_options
@click.option("--output_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the dataset to (created; must be new, empty, or a dataset with --overwrite).")
@click.option("--val_ratio", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of rows for the validation split (0: empty validation split).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the train/validation split.")
@click.option("--strict", is_flag=True, help="Write nothing and exit with code 2 if any row would be dropped.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --output_dir.")
@translate_options
def convert_command(source, checks, output_dir, val_ratio, seed, strict, overwrite, translate):
    """Check a CSV/JSONL of image-text pairs and write a Hugging Face dataset (train + validation).

    Every row is kept or dropped with a reason (line, field, what to fix) in
    OUTPUT_DIR/conversion_report.json. Relative image paths start from the CSV's folder (or --image_root), and
    images outside it are refused unless --allow_outside_paths; each image is fully decoded within the limits and
    its original bytes are embedded, so OUTPUT_DIR is self-contained. No image is in both splits; the validation
    split has the label mix of the whole. With --translate, Chinese premises and hypotheses are written in English,
    the originals kept in premise_original / hypothesis_original (docs/chinese.md).

    \b
    Examples:
      velora convert --csv_path ./data/my_ve_data.csv --output_dir ./data/hf_dataset
      velora convert --input data/pairs.jsonl --output_dir data/hf_dataset --val_ratio 0.1 --num_proc 4
      velora convert --input snli_ve_dev.jsonl --image_root flickr30k_images --output_dir snli_ve_dev --strict
      velora convert --csv_path data/zh.csv --output_dir data/hf_dataset --translate ./opus-mt-zh-en \
          --glossary terms.csv
    """
    translator = open_translator(translate)
    try:
        report = convert(source, output_dir, val_ratio=val_ratio, seed=seed, strict=strict, overwrite=overwrite,
                         translator=translator, **checks)
    finally:
        if translator is not None:
            translator.close()
    click.echo(report.summary())


@click.command("validate")
@input_options
@click.option("--report_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON report [default: <input>.validation_report.json beside the input].")
@click.pass_context
def validate_command(ctx, source, checks, report_path):
    """Run every check of `velora convert` and write only the report, with data-quality advice.

    Exit code 0 when every row would be kept, 1 when some would be dropped (their lines and reasons are listed),
    2 when the file itself is unusable (missing columns, not UTF-8...).

    \b
    Examples:
      velora validate data/my_ve_data.csv
      velora validate --input data/pairs.jsonl --report_path checks.json --num_proc 4
    """
    source = Path(source)
    if report_path is None:
        report_path = source.with_name(f"{source.stem}.validation_report.json")
    report = validate(source, report_path=report_path, **checks)
    click.echo(report.summary())
    if report.dropped:
        ctx.exit(1)
