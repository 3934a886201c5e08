"""`velora predict`: one image + premise + hypothesis (`predict`), or every row of a file (`predict_file`).

    single    predict: one example through the Predictor, optionally beside the base model
    inputs    the rows of a CSV/TSV, JSONL or Parquet input, streamed in chunks (velora.convert's readers)
    prepare   rows -> prompts and resized images, in DataLoader worker processes
    progress  OUT.progress/: finished chunks, so that a stopped run resumes
    outputs   the output file (CSV, JSONL or Parquet): input columns + predictions + error
    summary   counts, failures by reason, label distributions, metrics, throughput
    bulk      predict_file: the stages above, on one process or under torchrun
"""

from velora.predict.bulk import predict_file
from velora.predict.single import PredictResult, predict
from velora.predict.summary import BulkResult

__all__ = ["BulkResult", "PredictResult", "predict", "predict_file"]
