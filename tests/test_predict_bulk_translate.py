"""`velora predict --input_file ... --translate`: Chinese rows scored exactly as their English translation would be,
one translation call per chunk through the cache, the originals kept in the output (and read back by `velora
convert`), a row whose translation fails gets an error; without --translate, a warning naming the flag."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from datasets import load_from_disk
from translate_helpers import CHINESE, DICTIONARY_PROGRAM, ENGLISH, chinese_csv, english_twin, write_program

from velora.cli import cli
from velora.convert import convert
from velora.labels import LABELS
from velora.predict import predict_file
from velora.predictor import Predictor
from velora.translate import load_translator

PROBS = [f"prob_{label}" for label in LABELS]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture()
def data(tmp_path):
    """Six Chinese rows then two English ones, their English twin, and a program that translates them."""
    source = chinese_csv(tmp_path)
    return {"csv": source, "english": english_twin(source),
            "program": write_program(tmp_path, "mt.py", DICTIONARY_PROGRAM), "calls": tmp_path / "calls.txt"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_chinese_rows_score_as_their_translation_with_the_originals_kept(predictor, data, tmp_path):
    translator = load_translator(data["program"], cache=tmp_path / "cache.sqlite3")
    result = predict_file(predictor, data["csv"], tmp_path / "zh.jsonl", translator=translator, num_workers=1,
                          chunk_size=3, batch_size=2)
    predict_file(predictor, data["english"], tmp_path / "en.jsonl", num_workers=0)
    rows, twin = read_jsonl(tmp_path / "zh.jsonl"), read_jsonl(tmp_path / "en.jsonl")
    assert data["calls"].read_text() == "xx"  # one program run per chunk with Chinese rows (chunks of 3: 0 and 1)
    assert result.translated_rows == 6 and result.untranslated_cjk_rows == 0
    for i, (row, english) in enumerate(zip(rows, twin)):
        assert (row["premise"], row["hypothesis"]) == (english["premise"], english["hypothesis"])
        assert [row[p] for p in PROBS] == pytest.approx([english[p] for p in PROBS], abs=1e-6)
        if i < 6:
            assert (row["premise_original"], row["hypothesis_original"]) == (CHINESE[i % 6], CHINESE[(i + 1) % 6])
            assert row["translated_by"] == data["program"]
        else:
            assert (row["premise_original"], row["hypothesis_original"], row["translated_by"]) == (None, None, None)
    assert list(rows[0])[:7] == ["image_path", "premise", "hypothesis", "label", "premise_original",
                                 "hypothesis_original", "translated_by"]

    again = predict_file(predictor, data["csv"], tmp_path / "zh.parquet", translator=translator, num_workers=0)
    assert data["calls"].read_text() == "xx"  # everything came from the cache
    table = pq.read_table(tmp_path / "zh.parquet").to_pylist()
    assert [r["premise_original"] for r in table] == [r["premise_original"] for r in rows]
    assert [r["prob_neutral"] for r in table] == pytest.approx([r["prob_neutral"] for r in rows], abs=1e-6)
    assert again.translated_rows == 6
    translator.close()


def test_cli_output_reads_back_in_convert_and_a_failed_translation_is_one_rows_error(tiny_model_dir, data,
                                                                                      tmp_path):
    run = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--input_file", str(data["csv"]),
                                   "--output_file", str(tmp_path / "zh.csv"), "--translate", data["program"],
                                   "--translation_cache", "off", "--num_workers", "0"])
    assert run.exit_code == 0, run.output
    assert "Translated 6 rows to English" in run.stdout and "Warning" not in run.stderr
    report = convert(tmp_path / "zh.csv", tmp_path / "ds", val_ratio=0.25)
    assert report.kept == 8
    back = {r["source_row"]: r for split in load_from_disk(str(tmp_path / "ds")).values() for r in split}
    assert (back[2]["premise"], back[2]["premise_original"]) == (ENGLISH[0], CHINESE[0])  # line 2: the first row
    assert back[2]["translated_by"] == data["program"] and back[8]["translated_by"] == ""  # line 8: English

    silent = write_program(tmp_path, "silent.py", f"for line in sys.stdin: print('' if line.startswith({CHINESE[2]!r}) "
                                                  "else 'some words')")
    run = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--input_file", str(data["csv"]),
                                   "--output_file", str(tmp_path / "silent.jsonl"), "--translate", silent,
                                   "--translation_cache", "off", "--num_workers", "0"])
    assert run.exit_code == 0, run.output
    failed = [(i, r["error"]) for i, r in enumerate(read_jsonl(tmp_path / "silent.jsonl")) if r["error"]]
    assert [i for i, _ in failed] == [1, 2] and all("translation" in e and "empty" in e for _, e in failed)
    assert "translation_failed" in run.output


def test_without_translate_chinese_rows_are_scored_with_a_warning(tiny_model_dir, data, tmp_path):
    run = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--input_file", str(data["csv"]),
                                   "--output_file", str(tmp_path / "raw.jsonl"), "--num_workers", "0"])
    assert run.exit_code == 0, run.output
    assert "Warning: 6 of 8 rows have Chinese/Japanese/Korean text" in run.stderr and "--translate" in run.stderr
    rows = read_jsonl(tmp_path / "raw.jsonl")
    assert rows[0]["premise"] == CHINESE[0] and "premise_original" not in rows[0]
