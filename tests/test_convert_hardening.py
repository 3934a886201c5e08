"""`velora convert` / `validate` under hostile or awkward input: paths leading out of the data folder, files that are
not regular, formula cells, huge fields, interrupted runs, terminal escapes; and the guide's own layout."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap

import datasets
import pandas as pd
import pytest
from click.testing import CliRunner

import data_fixtures as F
from velora.cli import cli
from velora.convert import convert, validate
from velora.convert.spreadsheet import FORMULA_STARTS, neutralise, restore, write_rows
from velora.io import STAGING_MARKER as MARKER, staging_folder
from velora.mine import write_csv as write_mined_csv

PREMISE = "A pair of black running shoes on a white background"


def reasons(report, code: str) -> dict[int, str]:
    return {i.line: i.reason for i in report.dropped if i.code == code}


@pytest.fixture
def project(tmp_path):
    """tmp/data/d.csv next to tmp/data/images/*.jpg (6 rows), tmp/outside/up.jpg, and /etc/passwd-like secrets."""
    rows = F.balanced_rows(tmp_path / "data", 6)
    F.jpeg(tmp_path / "outside" / "up.jpg", seed=50)
    return tmp_path, rows


# --- paths outside the data folder (issue 10 item 9) -----------------------------------------------------------


def test_paths_outside_the_folder_are_refused_alike_whether_they_exist_or_not(project):
    root, rows = project
    (root / "data" / "link.jpg").symlink_to(root / "outside" / "up.jpg")
    (root / "data" / "dangling.jpg").symlink_to(root / "outside" / "gone.jpg")
    outside = {
        "../outside/up.jpg": True, "../outside/gone.jpg": False,
        str(root / "outside" / "up.jpg"): True, str(root / "outside" / "gone.jpg"): False,
        "/etc/passwd": True, "/etc/velora-no-such-file": False,
        "link.jpg": True, "dangling.jpg": False, "~/velora-no-such-file.jpg": False,
    }
    path = F.write_csv(root / "data" / "d.csv",
                       rows + [[p, PREMISE, f"They are shoes {k}", "yes"] for k, p in enumerate(outside)])
    report = validate(path)
    refused = reasons(report, "path_outside_root")
    assert report.kept == 6 and len(refused) == len(outside) == len(report.dropped)
    for line, image_path in zip(range(8, 8 + len(outside)), outside):
        assert refused[line] == refused[8].replace("'../outside/up.jpg'", repr(image_path))  # nothing told apart
        assert "--allow_outside_paths" in refused[line] and "not found" not in refused[line]

    allowed = validate(path, allow_outside_paths=True)
    assert allowed.kept == 6 + 3  # up.jpg by three routes
    flagged = {i.line for i in allowed.flagged if i.code == "outside_image_root"}
    assert flagged == {8, 14}  # the ../ path and the symlink are flagged; an absolute path is the user's choice
    assert set(reasons(allowed, "image_not_found")) == {9, 11, 13, 15, 16}
    assert set(reasons(allowed, "not_an_image")) == {12}  # /etc/passwd was read only when allowed


def test_image_root_is_the_boundary(project):
    root, rows = project
    rows = [["data/" + r[0], *r[1:]] for r in rows] + [["outside/up.jpg", PREMISE, "Shoes", "yes"]] + [
        [p, PREMISE, "Shoes", "yes"] for p in ("../up.jpg", "/etc/passwd", "/etc/velora-no-such-file")]
    report = validate(F.write_csv(root / "data" / "d.csv", rows), image_root=root)
    refused = reasons(report, "path_outside_root")
    assert report.kept == 7 and set(refused) == {9, 10, 11}
    assert refused[10] == refused[11].replace("velora-no-such-file", "passwd")


def test_guide_layout_from_the_folder_above_is_quiet_and_missing_files_are_named_plainly(tmp_path, monkeypatch):
    F.jpeg(tmp_path / "data" / "shoes_001.jpg")
    F.write_csv(tmp_path / "data" / "my_ve_data.csv", [
        ["./data/shoes_001.jpg", PREMISE, "The product is footwear", "entailment"],
        ["./data/shoes_404.jpg", PREMISE, "The product is footwear", "entailment"],
        ["./other/x.jpg", PREMISE, "The product is footwear", "entailment"],
    ])
    (tmp_path / "other").mkdir()
    F.jpeg(tmp_path / "other" / "x.jpg", seed=3)
    monkeypatch.chdir(tmp_path)
    report = validate("data/my_ve_data.csv")
    assert report.kept == 1 and report.flagged == []
    missing = reasons(report, "image_not_found")[3]
    assert missing.startswith(f"{tmp_path / 'data' / 'shoes_404.jpg'}: image file not found")
    assert "data/data" not in missing.split("also looked in")[0]
    assert "relative to the working directory" in missing
    assert 4 in reasons(report, "image_not_found")  # from the working directory, only inside the CSV's folder


# --- files that are not regular, and size limits (issue 10 items 2 and 3) ----------------------------------------


@pytest.mark.timeout(120)
def test_rows_naming_fifos_devices_or_oversized_files_are_dropped(project):
    root, rows = project
    os.mkfifo(root / "data" / "fifo.jpg")
    (root / "data" / "zero.jpg").symlink_to("/dev/zero")
    F.blank_png(root / "data" / "strip.png", 80_000_000, 1)
    extra = [["fifo.jpg", PREMISE, "Shoes", "yes"], ["zero.jpg", PREMISE, "Shoes", "yes"],
             ["strip.png", PREMISE, "Shoes", "yes"]]
    path = F.write_csv(root / "data" / "d.csv", rows + extra)
    report = convert(path, root / "out", allow_outside_paths=True)
    assert report.kept == 6
    assert {i.line: i.code for i in report.dropped} == {8: "not_a_file", 9: "not_a_file", 10: "image_too_large"}
    assert validate(path).dropped[1].code == "path_outside_root"  # /dev/zero lies outside the folder anyway

    result = CliRunner().invoke(cli, ["validate", str(path), "--max_image_mb", "0.0001", "--max_side", "20"])
    assert result.exit_code == 1 and "image file over the size limit" in result.output
    saved = json.loads(path.with_name("d.validation_report.json").read_text())
    assert saved["settings"]["max_image_bytes"] == 104 and saved["settings"]["max_side"] == 20


# --- spreadsheet formulas (issue 10 item 10) ----------------------------------------------------------------------

TRICKY = ["=HYPERLINK(\"http://x\",\"click\")", "+1+2", "-2+3", "@SUM(A1)", "\tTabbed", "\rReturn", "'=quoted",
          "''=twice", "'Tis plain", "plain - text", ""]


def test_neutralise_restore_is_lossless_and_safe():
    for text in TRICKY:
        safe = neutralise(text)
        assert restore(safe) == text
        assert safe[:1] not in FORMULA_STARTS
    assert neutralise(-0.5) == -0.5  # numbers are not formulas


def test_mined_csv_is_safe_in_a_spreadsheet_and_converts_back_unchanged(tmp_path):
    images = [F.jpeg(tmp_path / "data" / f"i{k}.jpg", seed=k) for k in range(len(TRICKY))]
    rows = [{"image_path": "", "premise": text, "hypothesis": f"{text} h{k}" if k % 2 else text or "x",
             "label": "neutral", "flag": "ambiguous", "source_row": k + 2} for k, text in enumerate(TRICKY)]
    out = tmp_path / "data" / "hard.csv"
    write_mined_csv(rows, [str(p) for p in images], out)
    with out.open(newline="", encoding="utf-8") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert cells and not [c for c in cells if c[:1] in FORMULA_STARTS]  # what a spreadsheet would run
    frame = pd.read_csv(out, keep_default_na=False)
    assert not [c for c in frame.astype(str).to_numpy().ravel() if c[:1] in FORMULA_STARTS]

    result = CliRunner().invoke(cli, ["convert", str(out), "--output_dir", str(tmp_path / "ds"), "--val_ratio", "0"])
    assert result.exit_code == 0, result.output
    train = datasets.load_from_disk(str(tmp_path / "ds"))["train"]
    by_row = {int(json.loads(m)["source_row"]): (p, h)  # mine's own source_row column is kept in metadata
              for m, p, h in zip(train["metadata"], train["premise"], train["hypothesis"])}
    assert len(by_row) == len(TRICKY)
    for k, text in enumerate(TRICKY):
        expected_hypothesis = f"{text} h{k}" if k % 2 else text or "x"
        assert by_row[k + 2] == (" ".join(text.split()), " ".join(expected_hypothesis.split()))


def test_write_rows_neutralises_every_cell(tmp_path):
    path = write_rows(tmp_path / "x.csv", ["a", "=b"], [{"a": "=1", "=b": 2}, {"a": "-x"}])
    assert path.read_text().splitlines() == ["a,'=b", "'=1,2", "'-x,"]


# --- long fields, control characters, counts, scripts (issue 10 Low, issue 11 items 7 and 8) ---------------------


def test_one_huge_field_drops_its_row_not_the_file(project):
    root, rows = project
    rows.insert(2, ["images/img_0001.jpg", "word " * 40_000, "Shoes", "yes"])  # 200,000 characters
    report = validate(F.write_csv(root / "data" / "d.csv", rows))
    assert report.kept == 6
    [issue] = report.dropped
    assert (issue.line, issue.field, issue.code) == (4, "premise", "field_too_long")
    assert "200,000 characters" in issue.reason and len(issue.value) <= 200


def test_control_characters_are_escaped_in_console_and_report(project):
    root, rows = project
    path = F.write_csv(root / "data" / "d.csv", rows + [["images/\x1b[31mred\x9b.jpg", PREMISE, "Shoes", "yes"]])
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\x9b" not in result.output
    assert "\\x1b[31mred\\x9b.jpg" in result.output
    text = path.with_name("d.validation_report.json").read_text(encoding="utf-8")
    assert "\x1b" not in text and "\x9b" not in text
    assert json.loads(text)["dropped"][0]["value"] == "images/\x1b[31mred\x9b.jpg"


def test_flagged_counts_rows_kept_and_duplicates_apart(tmp_path):
    rows = F.balanced_rows(tmp_path, 5, subdir="images")
    rows = [["../" + r[0], *r[1:]] for r in rows]  # every row flagged: images outside the CSV's folder
    path = F.write_csv(tmp_path / "data" / "d.csv", rows + rows[:2])  # two exact duplicates
    report = validate(path, allow_outside_paths=True)
    assert report.kept == 5
    summary = report.summary()
    assert "Flagged (kept): 5 rows" in summary and "Duplicates removed (the first is kept): 2 rows" in summary
    assert report.to_dict()["counts"]["flagged"] == 5


def test_vague_premise_check_reads_chinese_by_characters(tmp_path):
    rows = []
    for i, premise in enumerate(["一双黑色跑鞋放在白色背景上", "一个白色陶瓷杯子放在木桌上", "鞋子"]):
        F.jpeg(tmp_path / f"{i}.jpg", seed=i)
        rows.append([f"{i}.jpg", premise, "It is a product", ("yes", "no", "maybe")[i]])
    report = validate(F.write_csv(tmp_path / "d.csv", rows))
    warnings = {w.code: w.lines for w in report.warnings}
    assert warnings["vague_premise"] == [4]  # only the two-character one
    assert warnings["non_english_text"] == [2, 3, 4]


# --- interrupted runs (issue 10 Low) --------------------------------------------------------------------------------


def test_stale_staging_folders_of_dead_runs_are_removed(project):
    root, rows = project
    path = F.write_csv(root / "data" / "d.csv", rows)
    out = root / "hf_dataset"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, datasets
        from velora.convert import convert
        datasets.DatasetDict.save_to_disk = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        convert({str(path)!r}, {str(out)!r})
        """)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    [left] = list(root.glob(".hf_dataset.velora-tmp-*"))
    decoy = root / ".hf_dataset.velora-tmp-mine"  # the same pattern, but not velora's: no marker
    decoy.mkdir()
    (decoy / "notes.txt").write_text("mine")

    with staging_folder(out) as live:  # a run still going on
        convert(path, out)
        assert not left.exists() and live.exists() and (live / MARKER).exists()
        assert (decoy / "notes.txt").read_text() == "mine"
    assert not live.exists()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [decoy.name]
    assert datasets.load_from_disk(str(out))["train"].num_rows > 0
