"""`velora predict --input_file`: every row scored (or failed with a reason naming the field), in input order, with
its input columns; CSV, JSONL and Parquet in and out, read back by the tools users have; the same probabilities as
the Predictor; clear refusals. In-process (no worker processes) for speed: tests/test_predict_bulk_runs.py runs
workers, kill -9 and torchrun."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

import data_fixtures as F
from eval_helpers import noise_image, read_csv_rows, write_labelled_csv
from velora.cli import cli
from velora.convert import read_input
from velora.convert.reading import open_input
from velora.errors import VeloraError
from velora.labels import LABELS
from velora.predict import predict_file
from velora.predict.progress import Progress, progress_folder
from velora.predictor import Predictor

PREDICTIONS = ["predicted_label", "confidence", *(f"prob_{label}" for label in LABELS), "error"]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir, device="cpu")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def score(predictor, source, output, **options):
    return predict_file(predictor, source, output, num_workers=0, **options)


def run(*args: str):
    return CliRunner().invoke(cli, ["predict", *args])


def test_rows_scored_as_the_predictor_scores_them_in_input_order(predictor, tmp_path):
    source = write_labelled_csv(tmp_path, rows=11, images=3)  # rows share images; one premise in four is empty
    result = score(predictor, source, tmp_path / "preds.jsonl", chunk_size=4, batch_size=3)
    rows = read_jsonl(tmp_path / "preds.jsonl")
    given = read_csv_rows(source)
    assert [{k: r[k] for k in given[0]} for r in rows] == given  # every input column, every row once, in order
    assert all(list(r)[-len(PREDICTIONS):] == PREDICTIONS and r["error"] is None for r in rows)
    expected = predictor.predict_batch([str(tmp_path / r["image_path"]) for r in given],
                                       [r["premise"] for r in given], [r["hypothesis"] for r in given])
    for row, want in zip(rows, expected):
        assert row["predicted_label"] == want.label
        assert [row[f"prob_{label}"] for label in LABELS] == pytest.approx(list(want.probabilities.values()),
                                                                           abs=1e-6)
        assert row["confidence"] == max(row[f"prob_{label}"] for label in LABELS)
    assert (result.rows, result.scored, result.failed) == (11, 11, {})
    assert result.metrics.examples == 11 and result.labels == {"entailment": 4, "contradiction": 4, "neutral": 3}
    assert sum(result.predicted.values()) == 11
    assert not (tmp_path / "preds.jsonl.progress").exists()


def test_bad_rows_get_an_error_naming_the_field_and_never_stop_the_run(predictor, tmp_path):
    noise_image(tmp_path / "data" / "ok.png", seed=1)
    F.text_as_jpg(tmp_path / "data" / "notes.jpg")
    F.png(tmp_path / "outside.png")
    path = F.write_jsonl(tmp_path / "data" / "rows.jsonl", [
        {"image": "ok.png", "hypothesis": "a dog", "id": 1},
        {"image": "missing.png", "hypothesis": "a dog", "id": 2},
        {"image": "notes.jpg", "hypothesis": "a dog", "id": 3},
        {"image": "ok.png", "hypothesis": "  ", "id": 4},
        {"image": "ok.png", "hypothesis": "q" * 6000, "id": 5},
        "{not json",
        {"image": "../outside.png", "hypothesis": "a dog", "id": 7},
        {"image": "ok.png", "premise": "a photo", "hypothesis": "a cat", "id": 8},
    ])
    result = score(predictor, path, tmp_path / "preds.jsonl", chunk_size=3)
    rows = read_jsonl(tmp_path / "preds.jsonl")
    assert [r.get("id") for r in rows] == [1, 2, 3, 4, 5, None, 7, 8]
    errors = [r["error"] for r in rows]
    assert errors[0] is None and errors[7] is None and rows[7]["predicted_label"] in LABELS
    assert errors[1].startswith("image_path: ") and "missing.png: image file not found" in errors[1]
    assert errors[2].startswith("image_path: ") and "not an image" in errors[2]
    assert errors[3] == "hypothesis is empty"
    assert errors[4].startswith("hypothesis too long")
    assert errors[5].startswith("line 6: not valid JSON")
    assert errors[6].startswith("image_path: ") and "leads outside" in errors[6]
    assert all(rows[i]["predicted_label"] is None for i in range(1, 7))
    assert result.failed == {"image_not_found": 1, "not_an_image": 1, "empty_field": 1, "text_too_long": 1,
                             "bad_json": 1, "path_outside_root": 1}
    assert result.failure_examples["bad_json"].startswith("row 6: line 6: not valid JSON")
    assert "Failed: 6 rows" in result.to_text() and "path_outside_root" in result.to_text()
    assert result.metrics is None and result.scored == 2

    again = score(predictor, path, tmp_path / "allowed.jsonl", allow_outside_paths=True)
    assert read_jsonl(tmp_path / "allowed.jsonl")[6]["error"] is None and again.scored == 3


def test_csv_output_is_spreadsheet_safe_and_reads_back_unchanged(predictor, tmp_path):
    source = write_labelled_csv(tmp_path, rows=4, images=2)
    rows = read_csv_rows(source)
    rows[1]["batch"], rows[2]["premise"] = "=HYPERLINK(\"http://x\")", "+1 more"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    score(predictor, source, tmp_path / "preds.csv")
    raw = read_csv_rows(tmp_path / "preds.csv")
    assert raw[1]["batch"] == "'=HYPERLINK(\"http://x\")" and raw[2]["premise"] == "'+1 more"
    table = read_input(tmp_path / "preds.csv")  # velora convert's reader restores the cells
    assert [r.metadata["batch"] for r in table.rows] == [r["batch"] for r in rows]
    assert [r.values["premise"] for r in table.rows] == [r["premise"] for r in rows]
    assert list(raw[0]) == ["image_path", "premise", "hypothesis", "label", "batch", *PREDICTIONS]


def test_parquet_in_and_out_keeps_types_and_loads_in_datasets(predictor, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    source = write_labelled_csv(tmp_path, rows=5, images=2)
    table = pa.Table.from_pylist([{**r, "sku": i * 10, "confidence": 0.5} for i, r in enumerate(read_csv_rows(source))])
    pq.write_table(table, tmp_path / "rows.parquet")
    result = score(predictor, tmp_path / "rows.parquet", tmp_path / "preds.parquet", chunk_size=2)
    out = pq.read_table(tmp_path / "preds.parquet")
    assert out.schema.field("sku").type == pa.int64() and out.schema.field("prob_neutral").type == pa.float32()
    assert out.column("sku").to_pylist() == [0, 10, 20, 30, 40]
    assert out.column("original_confidence").to_pylist() == [0.5] * 5  # an input column never shadows ours
    loaded = load_dataset("parquet", data_files=str(tmp_path / "preds.parquet"), split="train")
    assert loaded["predicted_label"] == out.column("predicted_label").to_pylist() and result.scored == 5

    score(predictor, tmp_path / "rows.parquet", tmp_path / "preds.jsonl")
    from_jsonl = load_dataset("json", data_files=str(tmp_path / "preds.jsonl"), split="train")
    assert from_jsonl["prob_neutral"] == pytest.approx(out.column("prob_neutral").to_pylist())


def test_jsonl_keys_become_typed_parquet_columns(predictor, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    noise_image(tmp_path / "a.png", seed=0)
    F.write_jsonl(tmp_path / "rows.jsonl", [
        {"image": "a.png", "hypothesis": "a dog", "n": 1, "score": 1, "tags": ["x"]},
        {"image": "a.png", "hypothesis": "a cat", "n": 2, "score": 0.5, "tags": None, "late": True},
    ])
    score(predictor, tmp_path / "rows.jsonl", tmp_path / "preds.parquet")
    out = pq.read_table(tmp_path / "preds.parquet")
    assert [out.schema.field(c).type for c in ("n", "score", "tags", "late")] == [
        pa.int64(), pa.float64(), pa.string(), pa.bool_()]
    assert out.column("tags").to_pylist() == ['["x"]', None] and out.column("late").to_pylist() == [None, True]


def test_a_run_stopped_after_its_output_appeared_finishes_and_one_run_at_a_time(predictor, tmp_path, monkeypatch):
    source = write_labelled_csv(tmp_path, rows=5, images=2)
    output = tmp_path / "preds.csv"
    with monkeypatch.context() as m:  # killed after the rename, before the progress folder was removed
        m.setattr("velora.predict.progress.shutil.rmtree", lambda *args, **kwargs: None)
        score(predictor, source, output, chunk_size=2)
    first = output.read_bytes()
    assert (tmp_path / "preds.csv.progress").is_dir()
    again = score(predictor, source, output, chunk_size=2)  # no --overwrite needed: the file is this run's
    assert output.read_bytes() == first and again.rows == 5 and again.resumed_chunks == 3
    assert not (tmp_path / "preds.csv.progress").exists()

    holder = Progress(progress_folder(tmp_path / "other.csv"))
    holder.start_fresh({"input": {}, "settings": {}})  # another run holds this output's folder
    with pytest.raises(VeloraError, match="another velora predict is writing this output now"):
        score(predictor, source, tmp_path / "other.csv", overwrite=True)
    holder.unlock()


def test_cli_summary_and_refusals(tiny_model_dir, tmp_path):
    source = write_labelled_csv(tmp_path, rows=6, images=2)
    out = tmp_path / "preds.csv"
    model = ["--model_path", str(tiny_model_dir), "--device", "cpu"]
    result = run(*model, "--input_file", str(source), "--output_file", str(out), "--num_workers", "0")
    assert result.exit_code == 0, result.output
    assert "Scored 6 of 6 rows" in result.stdout and "Metrics on 6 labelled rows" in result.stdout
    assert "rows/s" in result.stdout
    again = run(*model, "--input_file", str(source), "--output_file", str(out), "--num_workers", "0")
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output
    as_json = run(*model, "--input_file", str(source), "--output_file", str(out), "--num_workers", "0",
                  "--overwrite", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["scored"] == 6

    for args, message in [
        (["--input_file", str(source), "--output_file", str(out), "--image", "a.png"],
         "--input_file scores a file of rows and --image one example"),
        (["--input_file", str(source)], "give both --input_file"),
        (["--image", "a.png", "--hypothesis", "x", "--chunk_size", "4"], "--chunk_size apply to --input_file"),
        (["--premise", "x"], "give --image and --hypothesis"),
        (["--input_file", str(source), "--output_file", str(tmp_path / "p.txt")], "ending in .csv, .jsonl"),
        (["--input_file", str(source), "--output_file", str(source), "--overwrite"], "is the input file"),
        (["--input_file", str(tmp_path / "nope.csv"), "--output_file", str(tmp_path / "x.csv")], "not found"),
    ]:
        refused = run(*model, *args)
        assert refused.exit_code == 2 and message in refused.output, (args, refused.output)
    assert not (tmp_path / "x.csv.progress").exists() and not (tmp_path / "p.txt.progress").exists()


def test_missing_columns_refused_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(Predictor, "from_bundle", no_loading)
    path = F.write_csv(tmp_path / "rows.csv", [["a.jpg", "p"]], header=["image_path", "premise"])
    with pytest.raises(VeloraError, match=r"missing column\(s\) hypothesis.*must be image_path,hypothesis "
                                          r"\(premise, label optional\)"):
        predict_file(tiny_model_dir, path, tmp_path / "preds.csv")
    assert not (tmp_path / "preds.csv.progress").exists()


def test_reader_streams_rows_without_reading_the_whole_file(tmp_path):
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(b"image_path,premise,hypothesis,label\n")
        f.write(b"a.jpg,a premise,a hypothesis,yes\n" * 50_000)
        f.write(b"a.jpg,caf\xe9,h,no\n")  # not UTF-8, 1.6 MB in: only a reader that reads it all sees it
    records = open_input(path).records()
    assert next(records) == (2, {"image_path": "a.jpg", "premise": "a premise", "hypothesis": "a hypothesis",
                                 "label": "yes"})
    records.close()
    with pytest.raises(VeloraError, match=r"line 50002: not valid UTF-8 \(byte 0xe9\)"):
        read_input(path)
