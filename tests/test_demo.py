"""`velora demo` (quick sizes) end to end, and the synthetic data's labels checked against the scenes drawn."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from velora.cli import cli
from velora.predictor import Predictor
from velora.synthetic import NUMBERS, UNSEEN, write_task


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["demo", "--quick", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_on_the_small_base_measures_the_gain_it_prints(tmp_path):
    out = tmp_path / "demo"
    output = run("--small", "--output_dir", str(out))
    assert "SMALL OFA" in output and "NOT the released OFA-large" in output
    summary = json.loads((out / "summary.json").read_text())
    evaluated = json.loads((out / "eval.json").read_text())
    assert summary["base_accuracy"] == evaluated["base"]["accuracy"]
    assert summary["tuned_accuracy"] == evaluated["accuracy"]
    assert summary["gain"] == pytest.approx(evaluated["delta"]["accuracy"])
    test_rows = list(csv.DictReader(open(summary["test_csv"])))
    assert summary["test_examples"] == evaluated["examples"] == len(test_rows)
    kinds = summary["by_kind"].values()
    assert sum(k["examples"] for k in kinds) == len(test_rows)
    for which in ("base_accuracy", "tuned_accuracy"):
        assert sum(k[which] * k["examples"] for k in kinds) / len(test_rows) == pytest.approx(summary[which])
    assert f"({100 * summary['gain']:+.1f} points" in output

    train_images = {r["image_path"] for r in csv.DictReader(open(out / "data/task_b_train/task_b_train.csv"))}
    assert not train_images & {r["image_path"] for r in test_rows}  # held out: no picture in both
    predictor = Predictor.from_pretrained(out / "lora_finetuned")
    assert Path(predictor.base_dir).resolve() == (out / "small_ofa").resolve()
    assert json.loads((out / "small_ofa" / "velora_demo_base.json").read_text())["recipe"]["task"] == "A"

    assert "Reusing the small OFA built by an earlier run" in run("--small", "--output_dir", str(out))


def test_demo_builds_on_a_given_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    output = run("--model_path", str(tiny_model_dir), "--output_dir", str(out))
    assert f"the OFA checkpoint at {tiny_model_dir}" in output
    assert not (out / "small_ofa").exists()
    adapter = json.loads((out / "lora_finetuned" / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]).resolve() == tiny_model_dir.resolve()


def test_demo_refuses_an_adapter_as_its_base(tiny_adapter_dir, tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--quick", "--model_path", str(tiny_adapter_dir),
                                      "--output_dir", str(tmp_path)])
    assert result.exit_code == 2 and "is a LoRA adapter" in result.output


def _scenes(folder: Path, name: str) -> dict[str, dict]:
    lines = (folder / f"{name}.scenes.jsonl").read_text().splitlines()
    return {entry["image_path"]: entry for entry in map(json.loads, lines)}


def _count_truth(hypothesis: str, things: list[dict]) -> bool:
    said, noun = re.fullmatch(r"There (?:is|are) (\w+) (.+?)s?", hypothesis).groups()
    words = noun.split()
    colour = words[0] if len(words) == 2 else None
    shape = None if words[-1] == "shape" else words[-1]
    actual = sum((shape is None or t["shape"] == shape) and (colour is None or t["colour"] == colour) for t in things)
    return NUMBERS.index(said) == actual


def test_synthetic_labels_follow_the_scene_and_the_premise(tmp_path):
    csv_path = write_task(tmp_path, "B", 60, seed=3, name="b")
    scenes = _scenes(tmp_path, "b")
    rows = list(csv.DictReader(open(csv_path)))
    assert {r["label"] for r in rows} == {"entailment", "contradiction", "neutral"}
    phrases = {phrase: adjective for adjective, phrase in UNSEEN["weight"].items()}
    checked = 0
    for row in rows:
        entry = scenes[row["image_path"]]
        if row["kind"] == "count":
            truth = _count_truth(row["hypothesis"], entry["scene"]["things"])
            assert row["label"] == ("entailment" if truth else "contradiction"), row
            checked += 1
        elif row["kind"] == "unseen":
            thing = entry["premise_thing"]
            about = f"The {thing['colour']} {thing['shape']} is "
            stated = entry["premise_unseen"]
            if not row["hypothesis"].startswith(about) or stated is None:
                assert row["label"] == "neutral", row
            else:
                said = phrases[row["hypothesis"].removeprefix(about)]
                assert row["label"] == ("entailment" if said == stated else "contradiction"), row
            checked += 1
        elif row["kind"] == "outside":
            assert row["label"] == "neutral"
    assert checked > 100
    assert (tmp_path / entry["image_path"]).exists()
