"""`velora convert` / `velora validate`: every malformed input kept or dropped exactly as documented, with its reason;
the split's properties; the written dataset; atomic output; the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from PIL import Image

import data_fixtures as F
from velora.cli import cli
from velora.convert import KEEP_FORMATS, convert, features, load_records, load_records_with_report, validate
from velora.data_quality import grouped_stratified_split, is_vague_premise
from velora.errors import VeloraError
from velora.images import load_image
from velora.labels import LABELS
from velora.validate import REPORT_NAME, read_input, resolve_image_path

GOOD_PREMISE = "A pair of black running shoes on a white background"


def issues_at(issues, line):
    return [i for i in issues if i.line == line]


def codes_at(issues, line):
    return sorted(i.code for i in issues_at(issues, line))


# --- the malformed corpus ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A CSV (BOM + CRLF) in root/data with one row per awkward case, and its images; converted once."""
    root = tmp_path_factory.mktemp("corpus")
    data = root / "data"
    img = data / "images"
    good = F.balanced_rows(data, 12)  # 12 distinct JPEGs, labels cycling, rows "good0".."good11"
    F.jpeg(img / "shoes.jpg", seed=100)
    F.jpeg(img / "dress.jpg", seed=101)
    F.jpeg(img / "conflict.jpg", seed=102)
    F.jpeg(img / "multiline.jpg", seed=103)
    (img / "zero.jpg").write_bytes(b"")
    F.truncated_jpeg(img / "truncated.jpg")
    F.text_as_jpg(img / "text.jpg")
    F.huge_png(img / "huge.png")
    F.cmyk_jpeg(img / "cmyk.jpg", seed=104)
    F.png16(img / "deep.png", seed=105)
    F.animated_gif(img / "anim.gif", seed=106)
    F.tga(img / "legacy.tga", seed=107)
    (img / "a_folder.jpg").mkdir()
    F.jpeg(root / "outside" / "up.jpg", seed=108)
    F.jpeg(img / "café 猫 photo.jpg", seed=109)
    F.jpeg(img / unicodedata.normalize("NFD", "crème.jpg"), seed=110)
    F.jpeg(img / "win.jpg", seed=111)
    F.jpeg(img / "img_case.jpg", seed=112)
    absolute = F.jpeg(root / "elsewhere" / "abs.jpg", seed=113)
    F.jpeg(img / "copy_a.jpg", seed=114)
    shutil.copy(img / "copy_a.jpg", img / "copy_b.jpg")  # same content, another name

    h = "The product is footwear for athletic activities"
    rows = [(f"good{i}", r) for i, r in enumerate(good)] + [
        ("zero", ["images/zero.jpg", GOOD_PREMISE, h, "entailment"]),
        ("truncated", ["images/truncated.jpg", GOOD_PREMISE, h, "entailment"]),
        ("text", ["images/text.jpg", GOOD_PREMISE, h, "entailment"]),
        ("huge", ["images/huge.png", GOOD_PREMISE, h, "neutral"]),
        ("cmyk", ["images/cmyk.jpg", "A cyan square printed on matte paper", "It is printed", "entailment"]),
        ("deep", ["images/deep.png", "A grey sixteen bit scan of a page", "It is a scan", "neutral"]),
        ("anim", ["images/anim.gif", "An animated gif of coloured noise", "It moves", "neutral"]),
        ("tga", ["images/legacy.tga", "A legacy targa file of coloured noise", "It is old", "contradiction"]),
        ("directory", ["images/a_folder.jpg", GOOD_PREMISE, h, "entailment"]),
        ("missing", ["images/nope.jpg", GOOD_PREMISE, h, "entailment"]),
        ("dotdot", ["../outside/up.jpg", "A photo kept one folder up from the data", "It is a photo", "neutral"]),
        ("dotdot_missing", ["../outside/gone.jpg", GOOD_PREMISE, h, "neutral"]),
        ("unicode", ["images/café 猫 photo.jpg", "A cat sitting in a small cafe window", "There is a cat", "yes"]),
        ("nfc", [unicodedata.normalize("NFC", "images/crème.jpg"), "A jar of cream on a shelf", "Cream", "no"]),
        ("windows", ["images\\win.jpg", "A window frame with white paint", "A window", "maybe"]),
        ("case", ["images/IMG_CASE.JPG", GOOD_PREMISE, h, "neutral"]),
        ("absolute", [str(absolute), "A photo given by its absolute path", "It has a path", "contradiction"]),
        ("url", ["https://example.com/a.jpg", GOOD_PREMISE, h, "neutral"]),
        ("label_case", ["images/shoes.jpg", GOOD_PREMISE, "The shoes are black", " Entailment "]),
        ("label_yes", ["images/shoes.jpg", GOOD_PREMISE, "The shoes are for running", "YES"]),
        ("label_no", ["images/shoes.jpg", GOOD_PREMISE, "The shoes are red", "no"]),
        ("label_maybe", ["images/shoes.jpg", GOOD_PREMISE, "The shoes are new", "Maybe"]),
        ("label_unknown", ["images/dress.jpg", GOOD_PREMISE, h, "entailed"]),
        ("empty_hypothesis", ["images/dress.jpg", GOOD_PREMISE, "   ", "neutral"]),
        ("empty_image", ["", GOOD_PREMISE, h, "neutral"]),
        ("empty_label", ["images/dress.jpg", GOOD_PREMISE, h, ""]),
        ("two_problems", ["images/dress.jpg", GOOD_PREMISE, "", "whatever"]),
        ("empty_premise", ["images/dress.jpg", "", "A red dress hangs on a hanger", "entailment"]),
        ("dup_first", ["images/dress.jpg", "A red dress on a wooden hanger", "It is formal wear", "neutral"]),
        ("dup_second", ["images/dress.jpg", "A red  dress on a wooden hanger ", "It is formal wear", "NEUTRAL"]),
        ("conflict_a", ["images/conflict.jpg", "Two dogs playing in fresh snow", "The dogs are outside", "entailment"]),
        ("conflict_b", ["images/conflict.jpg", "Two dogs playing in fresh snow", "the dogs are outside.", "neutral"]),
        ("multiline", ["images/multiline.jpg", "A sign that reads \"OPEN\",\nwritten in red, on a door", "Open",
                       "entailment"]),
        ("too_many_fields", "images/shoes.jpg,Shoes, on a white background,They are shoes,entailment,phone,x"),
        ("too_few_fields", "images/shoes.jpg,Shoes on a white background,They are shoes,entailment,phone"),
        ("blank", ""),
        ("commas_only", ",,,"),
        ("cjk", ["images/shoes.jpg", "一双黑色跑鞋放在白色背景上", "这是鞋子", "entailment"]),
        ("copy_a", ["images/copy_a.jpg", "A blue cup on a wooden desk", "There is a cup", "entailment"]),
        ("copy_b", ["images/copy_b.jpg", "A blue cup on a wooden desk", "The cup is empty", "neutral"]),
    ]
    header = list(F.HEADER) + ["source", "notes"]
    rows = [(k, r if isinstance(r, str) else list(r) + ["phone", f"note {k}"]) for k, r in rows]
    csv_path = data / "my_ve_data.csv"
    lines = F.write_keyed_csv(csv_path, rows, header, newline="\r\n", bom=True)
    out = root / "hf_dataset"
    report = convert(csv_path, out, val_ratio=0.25, seed=7)
    return {"root": root, "csv": csv_path, "lines": lines, "report": report, "out": out, "img": img}


DROPPED = {
    "zero": ("image_path", "empty_file", "empty"),
    "truncated": ("image_path", "truncated_image", "truncated"),
    "text": ("image_path", "not_an_image", "not an image"),
    "huge": ("image_path", "image_too_large", "decompression bomb"),
    "directory": ("image_path", "not_a_file", "is a directory"),
    "missing": ("image_path", "image_not_found", "not found"),
    "dotdot_missing": ("image_path", "image_not_found", "gone.jpg"),
    "case": ("image_path", "image_not_found", "'img_case.jpg' exists"),
    "url": ("image_path", "url_not_supported", "URLs are not supported"),
    "label_unknown": ("label", "unknown_label", "'entailed' is not a label"),
    "empty_hypothesis": ("hypothesis", "empty_field", "hypothesis is empty"),
    "empty_image": ("image_path", "empty_field", "image_path is empty"),
    "empty_label": ("label", "empty_field", "label is empty"),
    "too_many_fields": ("row", "field_count", "has 7 fields but the header has 6 - text containing a comma"),
    "too_few_fields": ("row", "field_count", "has 5 fields but the header has 6 - a value is missing"),
}
KEPT = ["cmyk", "deep", "anim", "tga", "dotdot", "unicode", "nfc", "windows", "absolute", "label_case", "label_yes",
        "label_no", "label_maybe", "empty_premise", "dup_first", "conflict_a", "conflict_b", "multiline", "cjk",
        "copy_a", "copy_b"] + [f"good{i}" for i in range(12)]


@pytest.mark.parametrize("key", sorted(DROPPED))
def test_corpus_dropped_rows_name_line_field_and_reason(corpus, key):
    field, code, words = DROPPED[key]
    line = corpus["lines"][key]
    found = issues_at(corpus["report"].dropped, line)
    assert [(i.field, i.code) for i in found] == [(field, code)], found
    assert words in found[0].reason
    if field == "image_path" and code not in ("empty_field", "url_not_supported"):
        assert str(corpus["img"].parent) in found[0].reason or "gone.jpg" in found[0].reason  # names the file


def test_corpus_row_with_two_problems_reports_both_and_counts_once(corpus):
    line = corpus["lines"]["two_problems"]
    assert codes_at(corpus["report"].dropped, line) == ["empty_field", "unknown_label"]
    report = corpus["report"]
    assert report.dropped_rows == len(DROPPED) + 1
    assert report.to_dict()["counts"]["dropped"] == report.dropped_rows


def test_corpus_kept_rows_are_exactly_the_valid_ones(corpus):
    ds = datasets.load_from_disk(str(corpus["out"]))
    rows = sorted(list(ds["train"]["source_row"]) + list(ds["validation"]["source_row"]))
    assert rows == sorted(corpus["lines"][k] for k in KEPT)
    report = corpus["report"]
    assert report.kept == len(KEPT)
    # every data row of the file is accounted for: kept, dropped, or removed as a duplicate; blank rows skipped
    assert report.rows_read == report.kept + report.dropped_rows + report.duplicates
    assert report.blank_rows == 2


def test_corpus_labels_normalised(corpus):
    ds = datasets.load_from_disk(str(corpus["out"]))
    every = datasets.concatenate_datasets([ds["train"], ds["validation"]])
    label_of = {row: LABELS[lab] for row, lab in zip(every["source_row"], every["label"])}
    lines = corpus["lines"]
    assert [label_of[lines[k]] for k in ("label_case", "label_yes", "label_no", "label_maybe")] == [
        "entailment", "entailment", "contradiction", "neutral"]


def test_corpus_duplicate_kept_once_and_conflict_reported(corpus):
    report, lines = corpus["report"], corpus["lines"]
    dup = issues_at(report.flagged, lines["dup_second"])
    assert [i.code for i in dup] == ["duplicate"] and dup[0].related_lines == (lines["dup_first"],)
    for a, b in (("conflict_a", "conflict_b"), ("conflict_b", "conflict_a")):
        found = [i for i in issues_at(report.flagged, lines[a]) if i.code == "conflicting_labels"]
        assert len(found) == 1 and found[0].related_lines == (lines[b],) and f"line {lines[b]}" in found[0].reason


def test_corpus_dotdot_kept_and_flagged_absolute_not(corpus):
    report, lines = corpus["report"], corpus["lines"]
    flags = issues_at(report.flagged, lines["dotdot"])
    assert [f.code for f in flags] == ["outside_image_root"]
    assert issues_at(report.flagged, lines["absolute"]) == []
    assert issues_at(report.flagged, lines["unicode"]) == []


def test_corpus_quoted_newline_row_keeps_its_start_line_and_text(corpus):
    ds = datasets.load_from_disk(str(corpus["out"]))
    every = datasets.concatenate_datasets([ds["train"], ds["validation"]])
    i = list(every["source_row"]).index(corpus["lines"]["multiline"])
    assert every[i]["premise"] == 'A sign that reads "OPEN", written in red, on a door'
    assert corpus["lines"]["too_many_fields"] == corpus["lines"]["multiline"] + 2  # the record spanned two lines


def test_corpus_output_format(corpus):
    ds = datasets.load_from_disk(str(corpus["out"]))
    assert list(ds) == ["train", "validation"]
    for split in ds.values():
        assert split.features == features()
    assert ds["train"].features["label"].names == ["entailment", "contradiction", "neutral"]
    every = datasets.concatenate_datasets([ds["train"], ds["validation"]])
    raw = every.cast_column("image", datasets.Image(decode=False))
    by_row = dict(zip(every["source_row"], range(len(every))))
    lines, img = corpus["lines"], corpus["img"]

    # original bytes embedded for the formats datasets decodes
    shoes = raw[by_row[lines["label_yes"]]]["image"]
    assert shoes["bytes"] == (img / "shoes.jpg").read_bytes()
    assert shoes["path"] == "shoes.jpg"  # save_to_disk keeps the file name only
    assert raw[by_row[lines["deep"]]]["image"]["bytes"] == (img / "deep.png").read_bytes()
    assert raw[by_row[lines["anim"]]]["image"]["bytes"] == (img / "anim.gif").read_bytes()
    # TGA is not in KEEP_FORMATS: re-encoded as PNG, same pixels
    assert "TGA" not in KEEP_FORMATS
    tga = raw[by_row[lines["tga"]]]["image"]["bytes"]
    assert Image.open(io.BytesIO(tga)).format == "PNG"
    assert load_image(tga).tobytes() == load_image(img / "legacy.tga").tobytes()
    # every decoded image goes through velora's loader to RGB (CMYK, 16-bit, animated)
    for key in ("cmyk", "deep", "anim"):
        assert load_image(every[by_row[lines[key]]]["image"]).mode == "RGB"
    # extra columns kept as metadata
    meta = json.loads(every[by_row[lines["cmyk"]]]["metadata"])
    assert meta == {"source": "phone", "notes": "note cmyk"}
    premise = every[by_row[lines["empty_premise"]]]["premise"]
    assert premise == ""


def test_corpus_report_file(corpus):
    report_file = corpus["out"] / REPORT_NAME
    saved = json.loads(report_file.read_text(encoding="utf-8"))
    assert saved["format"] == "csv" and saved["metadata_columns"] == ["source", "notes"]
    assert saved["counts"]["kept"] == len(KEPT)
    assert {d["line"] for d in saved["dropped"]} == {corpus["lines"][k] for k in [*DROPPED, "two_problems"]}
    assert all({"line", "field", "code", "reason"} <= set(d) for d in saved["dropped"] + saved["flagged"])
    splits = saved["splits"]
    assert splits["train"]["rows"] + splits["validation"]["rows"] == len(KEPT)
    codes = {w["code"] for w in saved["warnings"]}
    assert {"non_english_text", "empty_premise"} <= codes
    cjk = next(w for w in saved["warnings"] if w["code"] == "non_english_text")
    assert cjk["lines"] == [corpus["lines"]["cjk"]] and "translate" in cjk["message"]


def test_corpus_split_groups_images_by_content(corpus):
    ds = datasets.load_from_disk(str(corpus["out"]))
    raw = {name: split.cast_column("image", datasets.Image(decode=False)) for name, split in ds.items()}
    digests = {name: {hashlib.sha256(x["bytes"]).hexdigest() for x in split["image"]} for name, split in raw.items()}
    assert not digests["train"] & digests["validation"]  # copy_a.jpg / copy_b.jpg are one image
    assert ds["validation"].num_rows > 0


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
    path = F.write_csv(tmp_path / "data" / "my_ve_data.csv",
                       [["./data/shoes_001.jpg", GOOD_PREMISE, "The product is footwear", "entailment"]])
    monkeypatch.chdir(tmp_path)
    report = validate("data/my_ve_data.csv")
    assert report.kept == 1
    assert [f.code for f in report.flagged] == ["found_in_working_directory"]
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
    assert found is None and "image file not found" in error and "'Photo.JPG' exists" in error
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
    assert json.loads(ds["metadata"][0])["predicted_label"] == "neutral"


# --- split -------------------------------------------------------------------------------------------------------


def test_split_unit_properties():
    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(1, 80)
        groups = [rng.randint(0, max(0, n // rng.randint(1, 4))) for _ in range(n)]
        labels = [rng.choice(LABELS) for _ in range(n)]
        ratio = rng.choice([0.0, 0.1, 0.2, 0.5, 0.9])
        train, val = grouped_stratified_split(labels, groups, ratio, seed=trial)
        assert sorted(train + val) == list(range(n)) and train
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        if ratio == 0 or len(set(groups)) == 1:
            assert val == []
        else:
            assert val
        assert (train, val) == grouped_stratified_split(labels, groups, ratio, seed=trial)


def test_split_is_stratified_and_sized():
    labels = [LABELS[0]] * 600 + [LABELS[1]] * 300 + [LABELS[2]] * 100
    random.Random(1).shuffle(labels)
    groups = [i // 2 for i in range(1000)]  # two rows per image
    train, val = grouped_stratified_split(labels, groups, 0.2, seed=3)
    assert abs(len(val) - 200) <= 2
    counts = Counter(labels[i] for i in val)
    for label, total in Counter(labels).items():
        assert abs(counts[label] - 0.2 * total) <= 3, (label, counts)
    other = grouped_stratified_split(labels, groups, 0.2, seed=4)[1]
    assert other != val


def test_convert_split_seed_and_zero_ratio(tmp_path):
    rows = F.balanced_rows(tmp_path / "data", 30, per_image=2)
    path = F.write_csv(tmp_path / "data" / "d.csv", rows)
    a = convert(path, tmp_path / "a", seed=1)
    b = convert(path, tmp_path / "b", seed=1)
    c = convert(path, tmp_path / "c", seed=2)
    z = convert(path, tmp_path / "z", val_ratio=0)
    val = lambda name: list(datasets.load_from_disk(str(tmp_path / name))["validation"]["source_row"])  # noqa: E731
    assert val("a") == val("b") != val("c")
    assert a.splits == b.splits and a.splits["validation"]["rows"] == 12
    assert a.splits["validation"]["labels"] == {"entailment": 4, "contradiction": 4, "neutral": 4}
    loaded = datasets.load_from_disk(str(tmp_path / "z"))
    assert loaded["validation"].num_rows == 0 and loaded["train"].num_rows == 60
    assert loaded["validation"].features == features()
    assert z.splits["validation"]["rows"] == 0


def test_tiny_dataset(tmp_path):
    rows = F.balanced_rows(tmp_path / "data", 5)
    path = F.write_csv(tmp_path / "data" / "d.csv", rows)
    report = convert(path, tmp_path / "out")
    assert report.splits["train"]["rows"] == 4 and report.splits["validation"]["rows"] == 1
    one = F.write_csv(tmp_path / "data" / "one.csv", rows[:1])
    assert convert(one, tmp_path / "one").splits == {
        "train": {"rows": 1, "images": 1, "labels": {"entailment": 1, "contradiction": 0, "neutral": 0}},
        "validation": {"rows": 0, "images": 0, "labels": {"entailment": 0, "contradiction": 0, "neutral": 0}},
    }


def test_parallel_checks_match_serial(tmp_path):
    rows = F.balanced_rows(tmp_path / "data", 40)
    F.truncated_jpeg(tmp_path / "data" / "bad.jpg")
    rows.append(["bad.jpg", GOOD_PREMISE, "h", "yes"])
    path = F.write_csv(tmp_path / "data" / "d.csv", rows)
    serial = convert(path, tmp_path / "one", num_proc=1).to_dict()
    parallel = convert(path, tmp_path / "two", num_proc=2).to_dict()
    for report in (serial, parallel):
        report.pop("output_dir")
    assert serial == parallel and serial["counts"]["dropped"] == 1


# --- output directory, strict, atomic write ------------------------------------------------------------------------


@pytest.fixture
def small_csv(tmp_path):
    rows = F.balanced_rows(tmp_path / "data", 6)
    return F.write_csv(tmp_path / "data" / "d.csv", rows)


def test_output_dir_rules(tmp_path, small_csv):
    out = tmp_path / "out"
    convert(small_csv, out)
    with pytest.raises(VeloraError, match="already holds a dataset; pass --overwrite"):
        convert(small_csv, out)
    report = convert(small_csv, out, overwrite=True, seed=5)
    assert json.loads((out / REPORT_NAME).read_text())["settings"]["seed"] == 5 and report.kept == 6
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(VeloraError, match="holds other files"):
        convert(small_csv, other, overwrite=True)
    with pytest.raises(VeloraError, match="folder holding your input data"):
        convert(small_csv, small_csv.parent, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    convert(small_csv, empty)
    assert datasets.load_from_disk(str(empty))["train"].num_rows > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "docs", "empty", "out"]  # no temp dirs left


def test_strict_writes_nothing_but_the_report(tmp_path, small_csv):
    with small_csv.open("a") as f:
        f.write("images/none.jpg,A premise here,A hypothesis,yes\n")
    out = tmp_path / "out"
    with pytest.raises(VeloraError, match=r"--strict: 1 of 7 rows would be dropped; first: line 8, image_path"):
        convert(small_csv, out, strict=True)
    assert not out.exists()
    failure = json.loads((tmp_path / f"out.{REPORT_NAME}").read_text())
    assert failure["dropped"][0]["line"] == 8
    report = convert(small_csv, out)  # not strict: the good rows are written, the stale failure report goes
    assert report.kept == 6 and not (tmp_path / f"out.{REPORT_NAME}").exists()


def test_no_usable_rows_is_an_error(tmp_path):
    path = F.write_csv(tmp_path / "d.csv", [["nope.jpg", "p", "h", "yes"]])
    with pytest.raises(VeloraError, match="no usable rows.*line 2, image_path"):
        convert(path, tmp_path / "out")
    with pytest.raises(VeloraError, match="no usable rows"):
        load_records(path)


def test_interrupted_write_leaves_no_dataset(tmp_path, small_csv, monkeypatch):
    def interrupted(self, path, **kwargs):
        Path(path, "train").mkdir(parents=True)
        Path(path, "dataset_dict.json").write_text('{"splits": ["train", "validation"]}')
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(small_csv, out)
    assert not out.exists()
    monkeypatch.undo()
    convert(small_csv, out)
    before = datasets.load_from_disk(str(out))["train"]["source_row"]
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(small_csv, out, overwrite=True, seed=99)
    monkeypatch.undo()
    assert datasets.load_from_disk(str(out))["train"]["source_row"] == before  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


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


# --- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_convert_guide_command(tmp_path, small_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["convert", "--csv_path", "data/d.csv", "--output_dir", "data/hf_dataset",
                                      "--seed", "3", "--num_proc", "1"])
    assert result.exit_code == 0, result.output
    assert "Kept 6 rows" in result.output and "Report: data/hf_dataset/conversion_report.json" in result.output
    assert datasets.load_from_disk("data/hf_dataset")["train"].num_rows + \
        datasets.load_from_disk("data/hf_dataset")["validation"].num_rows == 6
    again = CliRunner().invoke(cli, ["convert", "data/d.csv", "--output-dir", "data/hf_dataset"])
    assert again.exit_code == 2 and "pass --overwrite" in again.output and "Traceback" not in again.output
    dashed = CliRunner().invoke(cli, ["convert", "--csv-path", "data/d.csv", "--output-dir", "data/hf_dataset",
                                      "--overwrite", "--val-ratio", "0"])
    assert dashed.exit_code == 0, dashed.output
    both = CliRunner().invoke(cli, ["convert", "a.csv", "--input", "b.csv", "--output_dir", "x"])
    assert both.exit_code == 2 and "give one" in both.output
    neither = CliRunner().invoke(cli, ["convert", "--output_dir", "x"])
    assert neither.exit_code == 2 and "--csv_path" in neither.output


def test_cli_strict_and_errors(tmp_path, small_csv):
    with small_csv.open("a") as f:
        f.write("images/img_0000.jpg,A premise here,A hypothesis,entailed\n")
    out = str(tmp_path / "out")
    result = CliRunner().invoke(cli, ["convert", "--input", str(small_csv), "--output_dir", out, "--strict"])
    assert result.exit_code == 2 and "--strict: 1 of 7 rows" in result.output and "line 8, label" in result.output
    assert len(result.output.strip().splitlines()[-1]) > 0 and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["convert", "--input", str(small_csv), "--output_dir", out])
    assert result.exit_code == 0 and "unknown label" in result.output and "line 8, label" in result.output
    bad = F.write_csv(tmp_path / "bad.csv", [["a"]], header=["image", "text"])
    result = CliRunner().invoke(cli, ["convert", "--input", str(bad), "--output_dir", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "missing column(s) premise, hypothesis, label" in result.output
    result = CliRunner().invoke(cli, ["convert", "--input", str(small_csv), "--output_dir", str(tmp_path / "o3"),
                                      "--val_ratio", "1"])
    assert result.exit_code == 2 and "val_ratio" in result.output


def test_cli_validate_exit_codes(tmp_path, small_csv):
    clean = CliRunner().invoke(cli, ["validate", str(small_csv)])
    assert clean.exit_code == 0, clean.output
    report_file = small_csv.with_name("d.validation_report.json")
    assert json.loads(report_file.read_text())["counts"]["kept"] == 6
    with small_csv.open("a") as f:
        f.write("images/img_0000.jpg,,,maybe\n")
    dirty = CliRunner().invoke(cli, ["validate", "--csv_path", str(small_csv), "--report_path",
                                     str(tmp_path / "r.json")])
    assert dirty.exit_code == 1 and "line 8, hypothesis: hypothesis is empty" in dirty.output
    assert not (tmp_path / "data" / "hf_dataset").exists()


def test_cli_max_pixels_and_image_root(tmp_path, small_csv):
    result = CliRunner().invoke(cli, ["validate", str(small_csv), "--max_pixels", "100"])
    assert result.exit_code == 1 and "6 rows" in result.output and "image over the pixel limit" in result.output
    assert "384 pixels exceeds the limit of 100" in result.output  # the 24x16 test images
    moved = tmp_path / "elsewhere"
    shutil.move(str(small_csv.parent / "images"), str(moved / "images"))
    result = CliRunner().invoke(cli, ["validate", str(small_csv)])
    assert result.exit_code == 1 and "image file not found" in result.output
    result = CliRunner().invoke(cli, ["validate", str(small_csv), "--image-root", str(moved)])
    assert result.exit_code == 0, result.output
