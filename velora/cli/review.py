"""`velora review`: the web page that closes the hard-example loop, and `--apply`, which writes its result."""

from __future__ import annotations

import ipaddress

import click
import uvicorn

from velora.cli.options import load_predictor
from velora.data import ALL_SPLITS
from velora.review import DecisionStore, apply_review, decisions_path, load_review
from velora.review.app import create_review_app
from velora.serve.run import ensure_port_free


@click.command("review")
@click.argument("source", type=click.Path(exists=True))
@click.option("--model_path", default=None,
              help="Order a whole dataset by this model's doubt (likely-mislabelled, then least confident); "
                   "without it a dataset is shown in its own order. A mined CSV needs no model.")
@click.option("--split", default=ALL_SPLITS, show_default=True, help="Split of a dataset: all, train, validation.")
@click.option("--batch_size", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--reviewer", default="", help="Your name, stored with each decision (the page can change it).")
@click.option("--decisions", "decisions_file", type=click.Path(dir_okay=False), default=None,
              help="The decisions file [default: SOURCE's name + .decisions.jsonl, beside it].")
@click.option("--apply", "apply", is_flag=True,
              help="Do not serve: write the corrected copy of the data (relabels, edits, drops) beside it.")
@click.option("--data_dir", default=None,
              help="With --apply: the data the review's ids refer to [default: a mined CSV's mined_from, else "
                   "SOURCE].")
@click.option("--output", default=None, help="With --apply: where the corrected copy goes [default: NAME-reviewed "
                                             "beside the data].")
@click.option("--overwrite", is_flag=True, help="With --apply: replace an earlier corrected copy.")
def review_command(source, model_path, split, batch_size, host, port, reviewer, decisions_file, apply, data_dir,
                   output, overwrite):
    """Review examples on a local web page: keep, relabel, edit or drop each, with the keyboard.

    SOURCE is a CSV from `velora mine` (its order kept), or a dataset folder / CSV to review whole (ordered by
    --model_path's doubt when given). Every decision is appended at once, and synced to disk, to
    SOURCE.decisions.jsonl beside it: stop and restart any time, it resumes where it stopped; two tabs or two
    reviewers never lose a decision (the latest one per example counts; undo is a decision too).

    \b
    Examples:
      velora mine --model_path ./lora_finetuned --data_dir ./data/hf_dataset --output_file ./data/hard_examples.csv
      velora review ./data/hard_examples.csv                 # open http://127.0.0.1:8765/
      velora review ./data/hard_examples.csv --apply         # -> ./data/hf_dataset-reviewed
      velora train --dataset_name ./data/hf_dataset-reviewed --output_dir ./lora_round2
      velora review ./data/hf_dataset --model_path ./lora_finetuned --split train
    """
    if apply:
        click.echo(apply_review(source, decisions_file=decisions_file, origin=data_dir, output=output,
                                overwrite=overwrite).summary())
        return
    serve_review(source, model_path, split, batch_size, host, port, reviewer, decisions_file)


def serve_review(source, model_path, split, batch_size, host, port, reviewer, decisions_file) -> None:
    ensure_port_free(host, port)
    predictor = None
    if model_path:
        predictor = load_predictor(dict(model_path=model_path, base_model=None, device="auto", dtype="auto",
                                        image_size=None))
    review = load_review(source, predictor=predictor, split=split, batch_size=batch_size)
    store = DecisionStore(decisions_file or decisions_path(source))
    local = _is_loopback(host)
    app = create_review_app(review, store, reviewer=reviewer, loopback_only=local)
    done = sum(d.done for d in store.current().values())
    for note in review.notes[:5]:
        click.echo(f"note: {note}", err=True)
    if not local:
        click.echo(f"warning: listening on {host}: anyone who can reach it can change these labels", err=True)
    click.echo(f"Reviewing {len(review.items)} examples of {source} ({done} decided already); decisions go to "
               f"{store.path}")
    click.echo(f"Open http://{'127.0.0.1' if local else host}:{port}/ (Ctrl+C stops; every decision is already "
               "saved)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
