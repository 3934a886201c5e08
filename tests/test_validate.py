"""Reading and checking a user's CSV/JSONL (the half of convert that `velora validate` runs): columns, encodings,
JSONL and SNLI-VE rows, image path resolution, and the guide's data-quality warnings."""

from __future__ import annotations

import json

import pytest

import data_fixtures as F
from velora.convert import load_records, load_records_with_report, read_input, validate
from velora.convert.image_checks import resolve_image_path
from velora.convert.quality import is_vague_premise
from velora.errors import VeloraError

GOOD_PREMISE = "A pair of black running shoes on a white background"


def issues_at(issues, line):
    return [i for i in issues if i.line == line]


def codes_at(issues, line):
    return sorted(i.code for i in issues_at(issues, line))


# --- CSV and JSONL reading -----------------------------------------------------------------------------------------


def test_missing_columns_error_names_missing_and_found(tmp_path):
    path = F.write_csv(tmp_path / "d.csv", [["a.jpg", "p", "h"]], header=["image_path", "premise", "hypotesis"])
    with pytest.raises(VeloraError) as e:
        validate(path)
    message = str(e.value)
    assert "missing column(s) hypothesis, label" in message and "'hypotesis'" in message and str(path) in message


def test_header_that_looks_like_data_gets_a_hint(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("./data/shoes_001.jpg,A pair of shoes,Footwear,entailment\n")
    with pytest.raises(VeloraError, match="looks like data"):
        validate(path)


def test_non_utf8_error_names_the_line(tmp_path):
    F.jpeg(tmp_path / "a.jpg")
    path = tmp_path / "d.csv"
    path.write_bytes("image_path,premise,hypothesis,label\na.jpg,ok,ok,yes\na.jpg,caf\xe9,ok,no\n".encode("latin-1"))
    with pytest.raises(VeloraError, match=r"line 3: not valid UTF-8 \(byte 0xe9\)"):
        validate(path)
    (tmp_path / "u.csv").write_bytes("image_path,premise,hypothesis,label\n".encode("utf-16"))
    with pytest.raises(VeloraError, match="UTF-16"):
        validate(tmp_path / "u.csv")


def test_plain_lf_semicolon_and_alias_columns(tmp_path):
    F.jpeg(tmp_path / "a.jpg")
    path = tmp_path / "d.csv"
    path.write_text("Image Path;Premise;Hypothesis;Label\na.jpg;A cup, blue;A cup;entailment\n", encoding="utf-8")
    report = validate(path)
    assert report.kept == 1 and not report.dropped


def test_unclosed_quote_is_reported_as_a_spanning_record(tmp_path):
    F.jpeg(tmp_path / "a.jpg")
    lines = F.write_keyed_csv(tmp_path / "d.csv", [
        ("ok", ["a.jpg", "A cup on a desk", "A cup", "yes"]),
        ("broken", 'a.jpg,"A cup on a desk,A cup,yes'),
        ("lost", ["a.jpg", "A cup on a table", "A cup", "no"]),
    ])
    report = validate(tmp_path / "d.csv")
    found = issues_at(report.dropped, lines["broken"])
    assert [i.code for i in found] == ["field_count"] and "unmatched double quote" in found[0].reason
    assert report.kept == 1


def test_jsonl_rows(tmp_path):
    F.jpeg(tmp_path / "a.jpg", seed=1)
    F.jpeg(tmp_path / "b.jpg", seed=2)
    path = F.write_jsonl(tmp_path / "d.jsonl", [
        {"image_path": "a.jpg", "premise": "A cup on a desk", "hypothesis": "A cup", "label": "entailment",
         "annotator": 7},
        '{"image_path": "a.jpg", "premise": "broken',
        ["a.jpg", "p", "h", "yes"],
        {"image_path": "b.jpg", "hypothesis": "A plate", "label": "no"},
        {"image_path": "b.jpg", "premise": "A plate", "label": "no"},
        {"image_path": "b.jpg", "premise": "A plate", "hypothesis": ["A", "plate"], "label": "no"},
        {"image_path": "b.jpg", "premise": "A plate", "hypothesis": "A dish", "label": 1},
        {"image_path": "b.jpg", "premise": "A plate", "hypothesis": "A bowl", "label": "neutral"},
    ])
    report = validate(path)
    assert report.input_format == "jsonl"
    assert codes_at(report.dropped, 2) == ["bad_json"] and "not valid JSON" in issues_at(report.dropped, 2)[0].reason
    assert codes_at(report.dropped, 3) == ["not_an_object"]
    assert codes_at(report.dropped, 5) == ["missing_field"] and issues_at(report.dropped, 5)[0].field == "hypothesis"
    assert codes_at(report.dropped, 6) == ["not_text"]
    assert codes_at(report.dropped, 7) == ["unknown_label"]
    assert report.kept == 3 and report.metadata_columns == ["annotator"]
    ds = load_records(path)
    assert list(ds["source_row"]) == [1, 4, 8] and list(ds["premise"]) == ["A cup on a desk", "", "A plate"]
    assert json.loads(ds["metadata"][0]) == {"annotator": 7}


def test_snli_ve_jsonl_with_image_root(tmp_path):
    images = tmp_path / "flickr30k_images"
    F.jpeg(images / "3416050480.jpg", seed=1)
    F.jpeg(images / "2248275918.jpg", seed=2)
    path = F.write_jsonl(tmp_path / "ann" / "snli_ve_dev.jsonl", [
        {"Flikr30kID": "3416050480.jpg", "sentence1": "A man walks a dog.", "sentence2": "A person is outside.",
         "gold_label": "entailment", "pairID": "1"},
        {"Flikr30kID": "2248275918", "sentence1": "Two kids play.", "sentence2": "Kids are asleep.",
         "gold_label": "contradiction", "pairID": "2"},
        {"Flikr30kID": "404.jpg", "sentence1": "x", "sentence2": "y", "gold_label": "-", "pairID": "3"},
    ])
    report = validate(path, image_root=images)
    assert report.input_format == "snli-ve" and report.kept == 2
    assert codes_at(report.dropped, 3) == ["image_not_found", "unknown_label"]
    ds = load_records(path, image_root=images)
    assert list(ds["hypothesis"]) == ["A person is outside.", "Kids are asleep."]
    assert [json.loads(m) for m in ds["metadata"]] == [{"pairID": "1"}, {"pairID": "2"}]


def test_guide_layout_paths_found_from_working_directory(tmp_path, monkeypatch):
    """The guide puts the CSV in data/ and writes ./data/shoes_001.jpg: not relative to the CSV's folder."""
    F.jpeg(tmp_path / "data" / "shoes_001.jpg")
    F.write_csv(tmp_path / "data" / "my_ve_data.csv",
                [["./data/shoes_001.jpg", GOOD_PREMISE, "The product is footwear", "entailment"]])
    monkeypatch.chdir(tmp_path)
    report = validate("data/my_ve_data.csv")
    assert report.kept == 1 and report.flagged == [] and report.dropped == []  # the guide's layout, quietly
    # an explicit --image_root is the only place looked at
    report = validate("data/my_ve_data.csv", image_root=tmp_path / "data")
    assert [d.code for d in report.dropped] == ["image_not_found"]


def test_file_name_spaces_are_kept_but_trimmed(tmp_path):
    F.jpeg(tmp_path / "my  photo\t1.jpg")
    path = F.write_csv(tmp_path / "d.csv", [[" my  photo\t1.jpg ", "A  photo\n of a cup", "A cup", "yes"]])
    ds = load_records(path)
    assert list(ds["premise"]) == ["A photo of a cup"] and len(ds) == 1


def test_resolve_image_path_messages(tmp_path):
    F.jpeg(tmp_path / "Photo.JPG")
    found, flags, error = resolve_image_path("photo.jpg", tmp_path)
    assert found is None and error.code == "image_not_found"
    assert "image file not found" in str(error) and "'Photo.JPG' exists" in str(error)
    found, flags, error = resolve_image_path("Photo.JPG", tmp_path)
    assert found == tmp_path / "Photo.JPG" and flags == [] and error is None


def test_mined_csv_is_accepted_as_is(tmp_path):
    F.jpeg(tmp_path / "a.jpg", seed=1)
    F.jpeg(tmp_path / "b.jpg", seed=2)
    header = ["image_path", "premise", "hypothesis", "label", "flag", "predicted_label", "confidence", "probabilities"]
    path = F.write_csv(tmp_path / "hard.csv", [
        [str(tmp_path / "a.jpg"), "A cup on a desk", "A cup", "entailment", "low_confidence", "neutral", "0.41",
         json.dumps({"entailment": 0.3, "contradiction": 0.29, "neutral": 0.41})],
        ["b.jpg", "A plate", "A dish", "neutral", "", "neutral", "0.9", "{}"],
    ], header=header)
    ds, report = load_records_with_report(path)
    assert len(ds) == 2 and not report.dropped
    assert ds.features["label"].int2str(list(ds["label"])) == ["entailment", "neutral"]
    metadata = json.loads(ds["metadata"][0])
    assert not {"flag", "predicted_label", "confidence"} & set(metadata)
    assert any(w.code == "mined_columns" and "predicted_label" in w.message for w in report.warnings)


# --- validate and data quality -------------------------------------------------------------------------------------


def test_validate_writes_only_the_report_with_quality_warnings(tmp_path):
    data = tmp_path / "data"
    rows = []
    for i in range(12):
        F.jpeg(data / f"{i}.jpg", seed=i)
        label = "entailment" if i < 10 else "contradiction"
        premise = "The object looks nice" if i < 4 else f"A wooden chair number {i} beside a green wall"
        hypothesis = "The chair is made of wood" if i in (4, 10) else f"Statement {i}"
        rows.append([f"{i}.jpg", premise, hypothesis, label])
    path = F.write_csv(data / "d.csv", rows)
    before = sorted(p.name for p in data.iterdir())
    report = validate(path, report_path=tmp_path / "r.json")
    assert sorted(p.name for p in data.iterdir()) == before
    codes = {w.code: w for w in report.warnings}
    assert "no neutral rows" in codes["label_imbalance"].message
    assert codes["vague_premise"].lines == [2, 3, 4, 5]
    assert codes["hypothesis_across_labels"].lines == [6, 12]
    assert json.loads((tmp_path / "r.json").read_text())["splits"] is None


def test_vague_premise_heuristic():
    assert is_vague_premise("The object looks nice")
    assert is_vague_premise("Shoes")
    assert not is_vague_premise("A red dress hanging on a wooden hanger")
    assert not is_vague_premise("Two dogs in snow")


def test_imbalance_warning_when_rare(tmp_path):
    rows = F.balanced_rows(tmp_path, 3)
    for i in range(3, 12):
        F.jpeg(tmp_path / f"e{i}.jpg", seed=50 + i)
        rows.append([f"e{i}.jpg", f"A photo number {i} of a blue cup on a desk", f"Cup {i}", "entailment"])
    report = validate(F.write_csv(tmp_path / "d.csv", rows))
    assert any(w.code == "label_imbalance" and "imbalanced" in w.message for w in report.warnings)


def test_read_input_rejects_directory_and_missing(tmp_path):
    with pytest.raises(VeloraError, match="input file not found"):
        read_input(tmp_path / "nope.csv")
    with pytest.raises(VeloraError, match="is a directory"):
        read_input(tmp_path)
