"""Training again after a review: several sources in one run (a later source wins on a duplicate row, the run says
so), and out-of-fold probabilities for mining the rows a model was trained on (`velora mine --method auto`)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from eval_helpers import read_csv_rows
from train_helpers import colour_dataset, run_train, train_argv
from velora.cli import cli
from velora.data import load_examples
from velora.mine import trained_on
from velora.review import DecisionStore, apply_review, decisions_path
from velora.train.data import VEDataset, combine_sources
from velora.train.folds import fold_config, out_of_fold_probabilities


def ve(keys: list[str], labels: list[int]) -> VEDataset:
    return VEDataset([[0]] * len(keys), [0] * len(keys), labels, [(k, "", "h") for k in keys])


def test_a_later_source_wins_a_duplicate_and_the_note_says_so():
    first = {"train": ve(["a", "b", "c"], [0, 1, 2]), "validation": ve(["d"], [0])}
    second = {"train": ve(["b", "c", "e"], [1, 0, 2])}  # b: same label, c: relabelled, e: new
    joined, note = combine_sources([("data/hf_dataset", first), ("data/reviewed", second)])
    assert [k[0] for k in joined["train"].keys] == ["a", "b", "c", "e"]
    assert joined["train"].labels == [0, 1, 0, 2] and joined["validation"].keys == [("d", "", "h")]
    assert "2 sources" in note and "2 replaced by a later source, 1 of them with another label" in note
    assert combine_sources([("only", first)])[1] is None


def test_several_sources_as_a_list_or_a_repeated_flag(tmp_path):
    from velora.train.cli import config_from_argv
    from velora.train.config import load_config

    repeated = config_from_argv(["--dataset_name", "a", "--dataset_name", "b,c", "--output_dir", str(tmp_path)])
    assert repeated.data_sources == ["a", "b", "c"]
    assert load_config({"train_file": ["x.csv", "y.csv"], "output_dir": str(tmp_path)}).data_sources == [
        "x.csv", "y.csv"]


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("review-train")
    dataset = colour_dataset(folder)
    run_train(train_argv(tiny_model_dir, dataset, folder / "run", "--max_steps", "2"))
    return dataset, folder / "run"


def test_train_on_the_original_and_its_reviewed_copy(colour_run, tiny_model_dir, tmp_path):
    dataset, _ = colour_run
    train = load_examples(dataset, "train")
    relabelled = "neutral" if train.labels[0] != "neutral" else "entailment"
    store = DecisionStore(decisions_path(tmp_path / "review"))
    store.append({"example": str(train.dataset["source_row"][0]), "action": "relabel", "label": relabelled})
    reviewed = apply_review(dataset, decisions_file=store.path, output=tmp_path / "reviewed").output
    out = tmp_path / "run2"
    run_train(train_argv(tiny_model_dir, f"{dataset},{reviewed}", out, "--max_steps", "1"))
    metrics = json.loads((out / "metrics.json").read_text())
    rows = len(train) + len(load_examples(dataset, "validation"))
    assert "Training data from 2 sources" in metrics["data_sources"]
    assert f"{rows} replaced by a later source, 1 of them with another label" in metrics["data_sources"]
    assert sum(metrics["data"]["train"].values()) == len(train)  # each row once


def test_out_of_fold_probabilities_score_every_row_once(colour_run):
    dataset, run = colour_run
    train = load_examples(dataset, "train")
    probs = out_of_fold_probabilities(fold_config(run, max_steps=1), train.dataset, folds=2, batch_size=1,
                                      progress=False)  # one row a batch: no padding, no attention mask
    assert probs.shape == (len(train), 3) and not probs.isnan().any()
    assert torch.allclose(probs.sum(-1), torch.ones(len(train)), atol=1e-5)


def test_mine_uses_out_of_fold_scores_for_the_rows_the_model_learnt(colour_run, tmp_path):
    dataset, run = colour_run
    assert trained_on(run, dataset) and not trained_on(run, tmp_path)
    out = tmp_path / "hard.csv"
    result = CliRunner().invoke(cli, ["mine", "--model_path", str(run), "--data_dir", str(dataset), "--split",
                                      "train", "--folds", "2", "--confidence_threshold", "1", "--output_file",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert "out-of-fold" in result.output and "cleanlab" in result.output
    assert len(read_csv_rows(out)) == len(load_examples(dataset, "train"))
