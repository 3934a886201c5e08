"""`--translate` through the commands, on real files and a real server: convert keeps the originals beside the
English text, predict / eval / mine / serve score exactly what they would score for the English text (and say so),
and warn, naming --translate, when they score Chinese text untranslated."""

from __future__ import annotations

import csv
import json

import httpx
import pytest
from click.testing import CliRunner
from datasets import load_from_disk
from serve_helpers import image_bytes, live_server
from translate_helpers import (CHINESE, DICTIONARY_PROGRAM, ENGLISH, chinese_csv, english_twin, write_program,
                               write_tiny_marian)

from velora.cli import cli
from velora.convert.quality import has_cjk
from velora.evaluate import evaluate
from velora.labels import LABELS
from velora.predictor import Predictor
from velora.serve import ServeSettings, create_app

TO_ENGLISH = dict(zip(CHINESE, ENGLISH))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CSV with six Chinese rows and two English ones, its English twin, and a program that translates it."""
    folder = tmp_path_factory.mktemp("zh")
    source = chinese_csv(folder)
    return {"csv": source, "english": english_twin(source),
            "translate": write_program(folder, "mt.py", DICTIONARY_PROGRAM), "folder": folder}


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir)


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, [*args], env=env)


def test_convert_with_a_local_model_keeps_the_originals_and_reuses_the_cache(data, tmp_path):
    model = write_tiny_marian(tmp_path / "opus-mt-zh-en")
    env = {"VELORA_CACHE_DIR": str(tmp_path / "cache")}
    args = ["convert", "--csv_path", str(data["csv"]), "--output_dir", str(tmp_path / "ds"), "--translate",
            str(model), "--val_ratio", "0.25"]
    result = run(*args, env=env)
    assert result.exit_code == 0, result.output
    assert "Translated 12 texts (6 rows kept) to English with hf:opus-mt-zh-en: 0 from the cache, 6 sent" in result.output
    rows = [row for split in load_from_disk(str(tmp_path / "ds")).values() for row in split.remove_columns("image")]
    assert len(rows) == 8 and {"premise_original", "hypothesis_original", "translated_by"} <= set(rows[0])
    for row in rows:
        chinese = row["premise_original"] in CHINESE
        assert row["translated_by"] == ("hf:opus-mt-zh-en" if chinese else "")
        assert not has_cjk(row["premise"] + row["hypothesis"]) and row["premise"]
        assert (row["premise"] != row["premise_original"]) == chinese
    report = json.loads((tmp_path / "ds" / "conversion_report.json").read_text(encoding="utf-8"))
    assert report["translation"]["backend"] == "hf:opus-mt-zh-en" and report["translation"]["rows_translated"] == 6
    assert not [w for w in report["warnings"] if w["code"] == "non_english_text"]
    assert (tmp_path / "cache" / "translations.sqlite3").is_file()

    again = run(*args, "--overwrite", env=env)
    assert again.exit_code == 0 and "12 from the cache, 0 sent" in again.output


def test_convert_flags_rows_whose_glossary_terms_were_lost(data, tmp_path):
    glossary = tmp_path / "terms.csv"
    glossary.write_text("不锈钢,stainless steel\n猫,cat\n", encoding="utf-8")
    lossy = write_program(tmp_path, "lossy.py", "for line in sys.stdin: print('an object ' + str(len(line)))")
    result = run("convert", "--csv_path", str(data["csv"]), "--output_dir", str(tmp_path / "ds"), "--translate",
                 lossy, "--glossary", str(glossary), "--translation_cache", "off")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ds" / "conversion_report.json").read_text(encoding="utf-8"))
    lost = [(i["line"], i["field"]) for i in report["flagged"] if i["code"] == "glossary_term_lost"]
    assert lost == [(2, "premise"), (4, "hypothesis"), (5, "premise"), (7, "hypothesis")]  # 不锈钢 or 猫 in them
    assert report["counts"]["kept"] == 8 and report["translation"]["glossary_terms"] == 2
    assert "glossary term missing from the translation" in result.output


def test_predict_warns_untranslated_and_scores_the_translation_when_told(data, tiny_model_dir, predictor, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(image_bytes(3))
    base = ["predict", "--model_path", str(tiny_model_dir), "--image", str(image), "--premise", CHINESE[0],
            "--hypothesis", CHINESE[1], "--json"]
    plain = run(*base)
    assert plain.exit_code == 0 and "Chinese/Japanese/Korean" in plain.stderr and "--translate" in plain.stderr
    translated = run(*base, "--translate", data["translate"], "--translation_cache", str(tmp_path / "c.sqlite3"))
    assert translated.exit_code == 0, translated.output
    assert "Warning" not in translated.stderr
    out = json.loads(translated.stdout)
    assert (out["premise"], out["hypothesis"]) == (ENGLISH[0], ENGLISH[1])
    assert (out["premise_original"], out["hypothesis_original"]) == (CHINESE[0], CHINESE[1])
    expected = predictor.predict(str(image), ENGLISH[0], ENGLISH[1]).probabilities
    assert out["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert run(*base, "--glossary", str(tmp_path / "x.csv")).exit_code == 2  # --glossary needs --translate


def test_eval_and_mine_score_the_translation(data, tiny_model_dir, predictor, tmp_path):
    model = ["--model_path", str(tiny_model_dir)]
    plain = run("eval", *model, "--test_file", str(data["csv"]))
    assert plain.exit_code == 0 and "6 of 8 examples (rows 2, 3, 4, 5, 6 and 1 more) have Chinese" in plain.stderr
    out = tmp_path / "eval.json"
    result = run("eval", *model, "--test_file", str(data["csv"]), "--output_json", str(out), "--translate",
                 data["translate"], "--translation_cache", str(tmp_path / "c.sqlite3"))
    assert result.exit_code == 0 and "Warning" not in result.stderr, result.output
    report = json.loads(out.read_text())
    english = evaluate(predictor, data["english"])
    assert report["confusion_matrix"] == english.metrics.confusion_matrix and english.metrics.examples == 8
    assert "translated to English by command:" in report["note"]

    mined = tmp_path / "hard.csv"
    result = run("mine", *model, "--data_dir", str(data["csv"]), "--output_file", str(mined), "--translate",
                 data["translate"], "--translation_cache", "off", "--confidence_threshold", "1")
    assert result.exit_code == 0, result.output
    with mined.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    chinese = [r for r in rows if r.get("premise_original") in CHINESE]
    assert len(chinese) == 6 and all(r["premise"] == TO_ENGLISH[r["premise_original"]] for r in chinese)

    back = run("convert", "--csv_path", str(mined), "--output_dir", str(tmp_path / "again"), "--val_ratio", "0")
    assert back.exit_code == 0, back.output  # the mined rows go back into a dataset, originals and all
    again = list(load_from_disk(str(tmp_path / "again"))["train"].remove_columns("image"))
    translated = [r for r in again if r["translated_by"]]
    assert len(again) == 8 and len(translated) == 6
    assert all(r["premise"] == TO_ENGLISH[r["premise_original"]] for r in translated)
    assert not any(set(json.loads(r["metadata"])) & {"premise_original", "translated_by"} for r in again)


def test_server_translates_when_told_and_warns_when_not(data, tiny_model_dir, predictor):
    image = image_bytes(5)
    form = {"premise": CHINESE[3], "hypothesis": CHINESE[4]}
    files = {"image": ("photo.png", image, "image/png")}
    settings = dict(model_path=str(tiny_model_dir), warmup=False, max_wait_ms=0)
    with live_server(create_app(ServeSettings(**settings))) as url:
        plain = httpx.post(f"{url}/check", files=files, data=form, timeout=60).json()
    assert "--translate" in plain["warnings"][0] and "translation" not in plain
    with live_server(create_app(ServeSettings(**settings, translate=data["translate"],
                                              translation_cache="off"))) as url:
        answer = httpx.post(f"{url}/check", files=files, data=form, timeout=60).json()
        batch = httpx.post(f"{url}/check_batch", timeout=60, json={"items": [
            {"image": "aGVsbG8=", "hypothesis": "   "},
            {"image": __import__("base64").b64encode(image).decode(), "hypothesis": CHINESE[5]}]}).json()
    assert "warnings" not in answer
    assert answer["translation"] == {"premise": ENGLISH[3], "hypothesis": ENGLISH[4], "premise_original": CHINESE[3],
                                     "hypothesis_original": CHINESE[4], "translated_by": data["translate"]}
    expected = predictor.predict(image, ENGLISH[3], ENGLISH[4]).probabilities
    assert [answer["probs"][k] for k in LABELS] == pytest.approx([expected[k] for k in LABELS], abs=1e-5)
    assert batch["errors"] == 1 and batch["results"][1]["translation"]["hypothesis"] == ENGLISH[5]
