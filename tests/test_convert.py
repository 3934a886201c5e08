"""`velora convert` / `velora validate`: every malformed input kept or dropped exactly as documented, with its reason;
the split's properties; the written dataset; atomic output; the CLI."""

from __future__ import annotations

import hashlib
import io
import json
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
from velora.convert import KEEP_FORMATS, REPORT_NAME, convert, features, load_records
from velora.convert.split import grouped_stratified_split
from velora.errors import VeloraError
from velora.images import load_image
from velora.labels import LABELS

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
    report = convert(csv_path, out, val_ratio=0.25, seed=7, allow_outside_paths=True)  # the ../ and absolute rows
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
    convert(path, tmp_path / "c", seed=2)
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
