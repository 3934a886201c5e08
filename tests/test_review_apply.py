"""`velora review --apply`: decisions written into a corrected copy beside the original (a converted dataset or a
CSV), which loads in `datasets` and goes back through `velora convert`; mined CSVs that a person can read and that
convert accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from eval_helpers import read_csv_rows, write_labelled_csv
from velora.cli import cli
from velora.convert import check_input, convert
from velora.data import load_examples
from velora.errors import VeloraError
from velora.labels import LABELS
from velora.mine import MISLABELED, list_hard, mine, select_label_issues
from velora.predictor import Predictor
from velora.review import DecisionStore, apply_review, decisions_path

E, C, N = LABELS


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def dataset(tmp_path):
    data = write_labelled_csv(tmp_path / "data", rows=12, images=4)
    out = tmp_path / "data" / "hf_dataset"
    convert(data, out, val_ratio=0.25)
    return out


def rows_by_source(path: Path) -> dict[int, dict]:
    from datasets import load_from_disk

    loaded = load_from_disk(str(path))
    names = loaded["train"].features["label"].names
    return {row["source_row"]: {**row, "label": names[row["label"]], "split": split}
            for split, part in loaded.items() for row in part}


def test_relabel_edit_drop_make_a_new_dataset_and_leave_the_original(dataset):
    before, original = rows_by_source(dataset), folder_digest(dataset)
    store = DecisionStore(decisions_path(dataset))
    store.append({"example": "2", "action": "relabel", "label": N if before[2]["label"] != N else E})
    store.append({"example": "3", "action": "edit", "premise": "a new premise", "hypothesis": "a new hypothesis"})
    store.append({"example": "4", "action": "drop"})
    store.append({"example": "5", "action": "keep"})
    store.append({"example": "6", "action": "skip"})
    store.append({"id": "dropped-then-undone", "example": "7", "action": "drop"})
    store.append({"action": "undo", "undoes": "dropped-then-undone"})

    report = apply_review(dataset)
    assert Path(report.output) == dataset.with_name("hf_dataset-reviewed")
    assert folder_digest(dataset) == original  # never modified in place
    after = rows_by_source(Path(report.output))
    assert set(after) == set(before) - {4}
    assert after[2]["label"] != before[2]["label"]
    assert (after[3]["premise"], after[3]["hypothesis"], after[3]["label"]) == (
        "a new premise", "a new hypothesis", before[3]["label"])
    for row in set(before) - {2, 3, 4}:  # everything else unchanged, images included, in the same split
        assert after[row] == before[row]
    assert report.actions == {"relabel": 1, "edit": 1, "drop": 1, "keep": 1, "skip": 1}
    assert (report.rows_before, report.rows_after) == (12, 11)
    assert sorted(c["example"] for c in report.changes) == ["2", "3", "4"]
    assert (Path(report.output) / "review_report.json").exists() and "1 relabelled" in report.summary()
    with pytest.raises(VeloraError, match="--overwrite"):
        apply_review(dataset)
    assert rows_by_source(Path(apply_review(dataset, overwrite=True).output)) == after


def test_decisions_about_rows_the_data_lacks_are_refused(dataset):
    DecisionStore(decisions_path(dataset)).append({"example": "999", "action": "drop"})
    with pytest.raises(VeloraError, match="source row.* 999"):
        apply_review(dataset)
    assert not dataset.with_name("hf_dataset-reviewed").exists()


def test_a_reviewed_csv_keeps_its_columns_and_converts(tmp_path):
    data = write_labelled_csv(tmp_path, rows=6, images=2)
    store = DecisionStore(decisions_path(data))
    store.append({"example": "2", "action": "relabel", "label": C})  # line 2 = the first row
    store.append({"example": "4", "action": "drop"})
    report = apply_review(data)
    out = Path(report.output)
    assert out == tmp_path / "test-reviewed.csv"
    before, rows = read_csv_rows(data), read_csv_rows(out)
    assert list(rows[0]) == list(before[0])  # same columns, the extra `batch` included
    assert rows[0] == {**before[0], "label": C}
    assert rows[1:] == [before[1], *before[3:]]
    assert check_input(out).report.kept == 5


def test_mined_csv_readable_names_mined_from_and_convert_notes_the_scores(tiny_model_dir, dataset, tmp_path):
    out = dataset.parent / "hard_examples.csv"
    result = mine(Predictor.from_pretrained(tiny_model_dir), dataset, out, confidence_threshold=1.0)
    rows = read_csv_rows(out)
    for row in rows:  # the original file's name plus the row: `img_2-row4.png`, not a bare hash
        assert row["image_path"].startswith("hard_examples_images/img_") and "-row" in row["image_path"]
        assert row["mined_from"] == "hf_dataset" and (out.parent / row["image_path"]).is_file()
    assert len({row["image_path"] for row in rows}) == 4  # one copy per picture
    assert "velora review" in result.summary()

    checked = check_input(out)
    assert checked.report.kept == len(rows) and not checked.report.dropped
    assert [w.code for w in checked.report.warnings if w.code == "mined_columns"] == ["mined_columns"]
    metadata = checked.records[0].metadata
    assert "prob_entailment" not in metadata and "flag" not in metadata and "source_row" in metadata


def test_mining_a_csv_points_at_the_original_images(tiny_model_dir, tmp_path):
    data = write_labelled_csv(tmp_path, rows=6, images=2)
    mine(Predictor.from_pretrained(tiny_model_dir), data, tmp_path / "hard.csv", confidence_threshold=1.0)
    rows = read_csv_rows(tmp_path / "hard.csv")
    assert {row["image_path"] for row in rows} == {"images/img_0.png", "images/img_1.png"}
    assert {row["mined_from"] for row in rows} == {"test.csv"}
    assert not (tmp_path / "hard_images").exists()


def test_mined_rows_appended_to_a_training_csv_are_read_with_a_note(tiny_model_dir, tmp_path):
    """The guide's way: the reviewed rows added to the training CSV, extra columns and all."""
    data = write_labelled_csv(tmp_path, rows=6, images=2, extra_column=False)
    mine(Predictor.from_pretrained(tiny_model_dir), data, tmp_path / "hard.csv", confidence_threshold=1.0)
    mined_lines = (tmp_path / "hard.csv").read_text(encoding="utf-8").splitlines()[1:]
    with data.open("a", encoding="utf-8") as f:
        f.write("\n".join(line.replace(",neutral,", ",entailment,", 1) for line in mined_lines) + "\n")
    report = check_input(data).report
    assert not report.dropped and report.rows_read == 6 + len(mined_lines)
    notes = [issue for issue in report.flagged if issue.code == "mined_columns"]
    assert [n.line for n in notes] == list(range(8, 8 + len(mined_lines)))
    with data.open("a", encoding="utf-8") as f:
        f.write("images/img_0.png,a premise, with a comma,a hypothesis,neutral\n")  # still a field-count error
    assert [i.code for i in check_input(data).report.dropped] == ["field_count"]


def test_apply_of_a_mined_review_corrects_the_dataset_it_came_from(tiny_model_dir, dataset):
    out = dataset.parent / "hard.csv"
    mine(Predictor.from_pretrained(tiny_model_dir), dataset, out, confidence_threshold=1.0)
    first = read_csv_rows(out)[0]
    DecisionStore(decisions_path(out)).append({"example": first["source_row"], "action": "drop"})
    result = CliRunner().invoke(cli, ["review", str(out), "--apply"])
    assert result.exit_code == 0, result.output
    assert "1 dropped" in result.output and "hf_dataset-reviewed" in result.output
    assert int(first["source_row"]) not in rows_by_source(dataset.with_name("hf_dataset-reviewed"))


def test_cleanlab_flags_planted_label_errors_first(tmp_path):
    """Ten rows whose (out-of-fold) probabilities agree with their labels, and two that confidently do not."""
    data = write_labelled_csv(tmp_path, rows=12, images=4)
    examples = load_examples(data)
    labels = examples.labels
    probs = torch.full((12, 3), 0.05)
    for i, label in enumerate(labels):
        probs[i, LABELS.index(label)] = 0.9
    for i in (4, 9):
        probs[i] = torch.tensor([0.05, 0.05, 0.05])
        probs[i, (LABELS.index(labels[i]) + 1) % 3] = 0.9
    picked = select_label_issues(probs, labels, confidence_threshold=0.6)
    assert sorted(i for i, flag in picked if flag == MISLABELED) == [4, 9]
    listed = list_hard(examples, probs, method="out_of_fold")
    assert [row["flag"] for row in listed.rows] == [MISLABELED, MISLABELED]
