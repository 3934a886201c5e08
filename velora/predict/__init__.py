"""`velora predict`: one image + premise + hypothesis (`predict`), or every row of a file (`predict_file`).

    single    predict: one example through the Predictor, optionally beside the base model
    inputs    the rows of a CSV/TSV, JSONL or Parquet input, streamed in chunks (velora.convert's readers)
    prepare   rows -> prompts and resized images, in DataLoader worker processes
    progress  OUT.progress/: finished chunks, so that a stopped run resumes
    outputs   the output file (CSV, JSONL or Parquet): input columns + predictions + error
    summary   counts, failures by reason, label distributions, metrics, throughput
    bulk      predict_file: the stages above, on one process or under torchrun

The names below are imported on first use: a decoding worker imports velora.predict.prepare alone, not the model
code and scikit-learn that the rest needs (seconds per worker).
"""

from __future__ import annotations

import importlib

API = {"predict": "velora.predict.single", "PredictResult": "velora.predict.single",
       "predict_file": "velora.predict.bulk", "BulkResult": "velora.predict.summary"}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'velora.predict' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value
    return value
