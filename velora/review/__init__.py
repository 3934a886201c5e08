"""`velora review`: the hard-example loop closed. A local web page shows the examples worth a look (a `velora mine`
CSV, or a whole dataset ordered by a model's doubt); every decision (keep, relabel, edit, drop, skip, undo) is
appended at once to a decisions file beside the data; `--apply` writes the corrected dataset beside the original.

    items   what is reviewed, in order, and the images it may show
    store   the append-only decisions file (fsync, flock, per-decision ids, last writer wins, undo as an event)
    app     the FastAPI app: the static page and its JSON API
    apply   decisions -> a corrected copy of the data, with a report

    from velora.review import apply_review, load_review
    report = apply_review("data/hard_examples.csv")      # after reviewing it with `velora review`
"""

from __future__ import annotations

import importlib

_EXPORTS = {"apply_review": "apply", "ApplyReport": "apply", "load_review": "items", "ReviewSet": "items",
            "DecisionStore": "store", "decisions_path": "store", "create_review_app": "app"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The exports, imported on first use: the store alone needs neither torch nor datasets."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'velora.review' has no attribute {name!r}")
    return getattr(importlib.import_module(f"velora.review.{_EXPORTS[name]}"), name)
