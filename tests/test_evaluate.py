"""`velora eval`: metrics against hand-computed values, the real Predictor on CSV and converted datasets, report
files, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from eval_helpers import write_labelled_csv
from velora.cli import cli
from velora.data import image_source, load_examples
from velora.errors import VeloraError
from velora.evaluate import compute_metrics, evaluate, predicted_labels
from velora.predictor import BASE, Predictor

E, C, N = "entailment", "contradiction", "neutral"


def test_metrics_match_hand_computed_values():
    y_true = [E, E, E, E, E, C, C, C, N, N]
    y_pred = [E, E, E, C, N, C, C, E, N, N]
    m = compute_metrics(y_true, y_pred)
    # rows = true, columns = predicted
    assert m.confusion_matrix == [[3, 1, 1], [1, 2, 0], [0, 0, 2]]
    assert (m.examples, m.correct, m.accuracy) == (10, 7, 0.7)
    expected = {E: (3 / 4, 3 / 5, 2 / 3, 5), C: (2 / 3, 2 / 3, 2 / 3, 3), N: (2 / 3, 1.0, 0.8, 2)}
    for label, (p, r, f, s) in expected.items():
        got = m.per_class[label]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p, r, f, s))
    assert m.macro_avg["precision"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m.macro_avg["recall"] == pytest.approx((3 / 5 + 2 / 3 + 1) / 3)
    assert m.macro_avg["f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.8) / 3)
    assert m.weighted_avg["f1"] == pytest.approx((5 * 2 / 3 + 3 * 2 / 3 + 2 * 0.8) / 10)
    assert m.predicted_counts == {E: 4, C: 3, N: 3}


def test_averages_skip_a_label_absent_from_labels_and_predictions():
    m = compute_metrics([E, E, C, C], [E, C, C, C])
    assert m.per_class[N] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m.macro_avg["recall"] == pytest.approx((1 / 2 + 1) / 2)  # over entailment and contradiction only
    assert m.confusion_matrix[2] == [0, 0, 0]


def test_metrics_refuse_unknown_labels():
    with pytest.raises(VeloraError, match="unknown label"):
        compute_metrics([E, "yes"], [E, E])


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory):
    return write_labelled_csv(tmp_path_factory.mktemp("evaldata"), rows=12, images=4)


@pytest.fixture(scope="module")
def adapter_predictor(tiny_adapter_dir):
    return Predictor.from_pretrained(tiny_adapter_dir)


def _expected_predictions(predictor, csv_path, adapter=None):
    examples = load_examples(csv_path)
    rows = examples.rows(0, len(examples))
    probs = predictor.probabilities([image_source(i) for i in rows["image"]], rows["premise"], rows["hypothesis"],
                                    adapter=adapter)
    return examples.labels, predicted_labels(probs)


def test_evaluate_csv_with_base_comparison(adapter_predictor, test_csv):
    result = evaluate(adapter_predictor, test_csv, compare_base=True, batch_size=5)
    labels, tuned = _expected_predictions(adapter_predictor, test_csv)
    _, base = _expected_predictions(adapter_predictor, test_csv, adapter=BASE)
    assert result.metrics == compute_metrics(labels, tuned)
    assert result.base_metrics == compute_metrics(labels, base)
    assert result.deltas()["accuracy"] == pytest.approx(result.metrics.accuracy - result.base_metrics.accuracy)
    assert result.metrics.examples == 12 and result.note is None


def test_converted_dataset_uses_the_validation_split(adapter_predictor, test_csv, tmp_path):
    from velora.convert import convert

    convert(test_csv, tmp_path / "ds", val_ratio=0.5)
    validation = evaluate(adapter_predictor, tmp_path / "ds")
    everything = evaluate(adapter_predictor, tmp_path / "ds", split="all")
    assert validation.test_set.endswith("[validation]")
    assert 0 < validation.metrics.examples < everything.metrics.examples == 12
    with pytest.raises(VeloraError, match="no 'test' split.*train"):
        evaluate(adapter_predictor, tmp_path / "ds", split="test")


def test_rows_dropped_by_the_checks_are_reported(adapter_predictor, test_csv, tmp_path):
    broken = tmp_path / "test.csv"
    lines = test_csv.read_text().splitlines()
    lines[2] = lines[2].replace("images/img_1.png", "images/missing.png")
    broken.write_text("\n".join(lines) + "\n")
    shutil.copytree(test_csv.parent / "images", tmp_path / "images")  # a symlink out of the CSV's folder is refused
    result = evaluate(adapter_predictor, broken)
    assert result.metrics.examples == 11
    assert "1 row(s)" in result.note and "line 3" in result.note and "image_path" in result.note
    assert "Note:" in result.to_text()


def test_cli_writes_report_json_and_plot(tiny_adapter_dir, test_csv, tmp_path):
    report, as_json, plot = tmp_path / "eval_report.txt", tmp_path / "eval.json", tmp_path / "confusion.png"
    result = CliRunner().invoke(cli, ["eval", "--model_path", str(tiny_adapter_dir), "--test_file", str(test_csv),
                                      "--output_report", str(report), "--output_json", str(as_json),
                                      "--plot", str(plot), "--compare_base", "--batch_size", "4"])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert text in result.stdout
    for needle in ("Accuracy:", "precision", "macro avg", "weighted avg", "Confusion matrix (rows = true label",
                   "Base model (adapter off) vs tuned:", "delta"):
        assert needle in text
    data = json.loads(as_json.read_text())
    assert data["labels"] == [E, C, N]
    assert sum(map(sum, data["confusion_matrix"])) == data["examples"] == 12
    assert [sum(row) for row in data["confusion_matrix"]] == [data["per_class"][x]["support"] for x in (E, C, N)]
    assert data["delta"]["accuracy"] == pytest.approx(data["accuracy"] - data["base"]["accuracy"])
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > img.height  # base and tuned side by side

    again = ["eval", "--model_path", str(tiny_adapter_dir), "--test_file", str(test_csv), "--output_report",
             str(report)]
    refused = CliRunner().invoke(cli, again)  # an existing file is replaced only when asked
    assert refused.exit_code == 2 and "--overwrite" in refused.output and report.read_text() == text
    assert CliRunner().invoke(cli, [*again, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--test_file", "nope.csv"], "nope.csv: no such file"),
    (["--plot", "out.bmpx"], "--plot out.bmpx: unknown image type"),
])
def test_cli_errors_are_one_line(tiny_model_dir, test_csv, args, message):
    base = ["eval", "--model_path", str(tiny_model_dir), "--test_file", str(test_csv)]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_compare_base_needs_an_adapter(tiny_model_dir, test_csv):
    result = CliRunner().invoke(cli, ["eval", "--model_path", str(tiny_model_dir), "--test_file", str(test_csv),
                                      "--compare_base"])
    assert result.exit_code == 2 and "needs a LoRA adapter" in result.output
