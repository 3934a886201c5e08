"""`velora mine` / `collect-hard-examples`: which rows are listed (threshold, mislabel flag, strategies, top_k), and
that the CSV goes back through `velora convert` unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from eval_helpers import read_csv_rows, write_labelled_csv
from velora.cli import cli
from velora.convert import check_input
from velora.data import image_source, load_examples
from velora.errors import VeloraError
from velora.labels import LABELS
from velora.mine import AMBIGUOUS, MISLABELED, mine, select_hard, uncertainty
from velora.predictor import Predictor

E, C, N = LABELS

PROBS = torch.tensor([
    [0.50, 0.30, 0.20],  # 0 conf 0.50 margin 0.20
    [0.95, 0.03, 0.02],  # 1 confident, label says contradiction -> likely mislabelled
    [0.60, 0.20, 0.20],  # 2 conf exactly at the threshold: not below it
    [0.40, 0.35, 0.25],  # 3 conf 0.40 margin 0.05
    [0.10, 0.85, 0.05],  # 4 confident and right
    [0.34, 0.33, 0.33],  # 5 nearly uniform
])
LABELS_GIVEN = [E, C, N, N, C, E]


def test_uncertainty_measures():
    u = uncertainty(torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.3, 0.2]]))
    assert u["confidence"].tolist() == pytest.approx([1 / 3, 1.0, 0.5])
    assert u["margin"].tolist() == pytest.approx([0.0, 1.0, 0.2])
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3)
    assert u["entropy"].tolist() == pytest.approx([1.0, 0.0, h], abs=1e-6)


def test_threshold_is_strict_and_mislabelled_rows_come_first():
    picked = select_hard(PROBS, LABELS_GIVEN, confidence_threshold=0.6, mislabel_confidence=0.9)
    assert picked == [(1, MISLABELED), (5, AMBIGUOUS), (3, AMBIGUOUS), (0, AMBIGUOUS)]


def test_strategies_order_and_top_k_cuts_only_ambiguous_rows():
    by_margin = select_hard(PROBS, LABELS_GIVEN, strategy="margin", mislabel_confidence=None)
    assert [i for i, _ in by_margin] == [5, 3, 0]
    by_entropy = select_hard(PROBS, LABELS_GIVEN, strategy="entropy", top_k=1)
    assert by_entropy == [(1, MISLABELED), (5, AMBIGUOUS)]
    everything = select_hard(PROBS, LABELS_GIVEN, confidence_threshold=1.0, mislabel_confidence=None)
    assert sorted(i for i, _ in everything) == list(range(6))


@pytest.mark.parametrize("kwargs, message", [
    (dict(confidence_threshold=0.3), "above 1/3"),
    (dict(confidence_threshold=1.5), "at most 1"),
    (dict(strategy="loss"), "--strategy"),
    (dict(top_k=0), "--top_k"),
    (dict(mislabel_confidence=0.2), "--mislabel_confidence"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(VeloraError, match=message):
        select_hard(PROBS, LABELS_GIVEN, **kwargs)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_labelled_csv(tmp_path_factory.mktemp("minedata"), rows=12, images=4)


@pytest.fixture(scope="module")
def dataset_dir(data_csv, tmp_path_factory):
    from velora.convert import convert

    out = tmp_path_factory.mktemp("mineds") / "hf_dataset"
    convert(data_csv, out, val_ratio=0.25)
    return out


@pytest.fixture(scope="module")
def base_predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir)


def _scores(predictor, path):
    examples = load_examples(path, split="all")
    rows = examples.rows(0, len(examples))
    probs = predictor.probabilities([image_source(i) for i in rows["image"]], rows["premise"], rows["hypothesis"])
    return examples, rows, probs


def test_mine_converted_dataset_and_reimport(base_predictor, dataset_dir, tmp_path):
    examples, rows, probs = _scores(base_predictor, dataset_dir)
    confidence = probs.max(-1).values
    threshold = float(confidence.median())  # about half the rows below it
    out = tmp_path / "review" / "hard.csv"
    result = mine(base_predictor, dataset_dir, out, confidence_threshold=threshold, mislabel_confidence=None)

    expected = {rows["source_row"][i] for i in range(len(examples)) if confidence[i] < threshold}
    written = read_csv_rows(out)
    assert 0 < len(written) < len(examples)
    assert {int(r["source_row"]) for r in written} == expected
    assert all(r["flag"] == AMBIGUOUS and float(r["confidence"]) < threshold for r in written)
    assert [float(r["confidence"]) for r in written] == sorted(float(r["confidence"]) for r in written)
    for r in written:
        i = rows["source_row"].index(int(r["source_row"]))
        assert (r["hypothesis"], r["label"], r["split"]) == (rows["hypothesis"][i], examples.labels[i],
                                                              rows["split"][i])
        assert r["batch"].startswith("b")  # the input's extra column survives
        assert float(r[f"prob_{r['predicted_label']}"]) == pytest.approx(float(probs[i].max()), abs=1e-4)
        assert r["image_path"].startswith("hard_images/")  # originals are outside the CSV's folder
    assert result.images_dir == out.parent / "hard_images"

    report = check_input(out).report  # exactly what `velora convert` would keep
    assert report.kept == len(written) and not report.dropped and not report.flagged


def test_mine_csv_refers_to_original_images_and_flags_mislabels(base_predictor, data_csv, tmp_path):
    examples, _, probs = _scores(base_predictor, data_csv)
    confidence, predicted = probs.max(-1)
    wrong = [i for i in range(len(examples)) if LABELS[predicted[i]] != examples.labels[i]]
    cutoff = max(0.5, float(min(confidence[i] for i in wrong)))
    out = data_csv.parent / "hard.csv"
    result = mine(base_predictor, data_csv, out, confidence_threshold=0.34 + 1e-6, mislabel_confidence=cutoff)
    written = read_csv_rows(out)
    assert {r["flag"] for r in written} == {MISLABELED}
    assert all(r["label"] != r["predicted_label"] and float(r["confidence"]) >= cutoff - 1e-4 for r in written)
    assert all(r["image_path"].startswith("images/img_") for r in written) and result.images_dir is None
    assert check_input(out).report.kept == len(written)
    out.unlink()


def test_guide_command_and_no_silent_overwrite(tiny_model_dir, dataset_dir, tmp_path):
    out = tmp_path / "hard_examples.csv"
    args = ["collect-hard-examples", "--model_path", str(tiny_model_dir), "--data_dir", str(dataset_dir),
            "--confidence_threshold", "0.6", "--output_file", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "ambiguous (confidence < 0.6)" in first.stdout and out.exists()
    out.write_text("reviewed by a human\n")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output
    assert out.read_text() == "reviewed by a human\n"
    forced = CliRunner().invoke(cli, args + ["--overwrite", "--strategy", "entropy", "--top_k", "2"])
    assert forced.exit_code == 0, forced.output
    assert len([r for r in read_csv_rows(out) if r["flag"] == AMBIGUOUS]) <= 2


def test_cli_rejects_bad_threshold_before_loading(tmp_path):
    result = CliRunner().invoke(cli, ["mine", "--model_path", str(tmp_path / "none"), "--data_dir", str(tmp_path),
                                      "--confidence_threshold", "60", "--output_file", str(tmp_path / "h.csv")])
    assert result.exit_code == 2 and "--confidence_threshold 60.0" in result.output
