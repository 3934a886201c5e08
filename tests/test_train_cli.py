"""`velora train`'s command line and config, without training: help, flag spellings, what beats what, `velora
init`, the learning-rate rule, the best-step rule and the shared metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import TrainerState, TrainingArguments

from conftest import REPO
from velora.cli import cli
from velora.errors import VeloraError
from velora.hub import DEFAULT_MODEL_ID
from velora.labels import LABELS
from velora.metrics import compute_metrics, trainer_metrics
from velora.train import LearningRate, TrainConfig
from velora.train.cli import config_from_argv
from velora.train.data import class_weights
from velora.train.report import BestCheckpointTieBreak, best_evaluation, selection_reason


def test_help_lists_velora_flags_first_and_points_to_help_all():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    sections = [text.index(title) for title in ("Model:", "Data:", "LoRA:", "Training (the guide's flags):",
                                                "Options:")]
    assert sections == sorted(sections)
    assert "--model_name_or_path / --model_path" in text and "--lora_r" in text and "--save_steps" in text
    assert "--help-all" in text and "--adam_beta1" not in text
    every = CliRunner().invoke(cli, ["train", "--help-all"])
    assert every.exit_code == 0 and "--adam_beta1" in every.output and "--gradient_checkpointing" in every.output


def test_unknown_flag_is_a_click_error():
    result = CliRunner().invoke(cli, ["train", "--lora_rank", "8"])
    assert result.exit_code == 2 and "No such option '--lora_rank'" in result.output and "'--lora_r'" in result.output


def test_every_training_arguments_flag_and_spelling_works(tmp_path):
    config = config_from_argv(["--model-path", "some/model", "--output-dir", str(tmp_path), "--warmup_steps", "3",
                               "--activation_checkpointing", "--no_cache_image_features", "--report_to", "none",
                               "--lr_scheduler_type", "cosine", "--bf16", "false", "--max_steps", "7"])
    assert config.model_name_or_path == "some/model" and config.output_dir == str(tmp_path)
    assert (config.warmup_steps, config.activation_checkpointing, config.cache_image_features) == (3, True, False)
    assert config.report_to == [] and config.lr_scheduler_type.value == "cosine" and config.max_steps == 7
    assert config.bf16 is False
    with pytest.raises(VeloraError, match="mutually exclusive"):
        config_from_argv(["--dataset_name", "a", "--train_file", "b.csv"])


@pytest.fixture
def hub_config(tmp_path):
    path = tmp_path / "lora_config.json"
    path.write_text(json.dumps({"model_name_or_path": "iic/from-config", "output_dir": str(tmp_path / "o")}))
    return path


def test_velora_model_beats_the_config_file_and_a_flag_beats_both(hub_config, monkeypatch, capsys):
    monkeypatch.setenv("VELORA_MODEL", "/models/from-env")
    assert config_from_argv(["--config", str(hub_config)]).model_name_or_path == "/models/from-env"
    assert "Base model: /models/from-env (from $VELORA_MODEL, over the config file iic/from-config)" in \
        capsys.readouterr().out
    config = config_from_argv(["--config", str(hub_config), "--model_path", "/models/from-flag"])
    assert config.model_name_or_path == "/models/from-flag"
    out = capsys.readouterr().out
    assert "Base model: /models/from-flag (from --model_name_or_path, over $VELORA_MODEL /models/from-env and the " \
           "config file iic/from-config)" in out
    monkeypatch.delenv("VELORA_MODEL")
    assert config_from_argv(["--config", str(hub_config)]).model_name_or_path == "iic/from-config"
    assert config_from_argv(["--output_dir", "o"]).model_name_or_path == DEFAULT_MODEL_ID


def test_config_keys_are_checked(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"_note": "comments are fine", "lora_rank": 8}))
    with pytest.raises(VeloraError, match=r"c.json: unknown setting\(s\) 'lora_rank'"):
        config_from_argv(["--config", str(path)])
    path.write_text(json.dumps({"r": 4, "lora_r": 8}))
    with pytest.raises(VeloraError, match="'r' and 'lora_r' both set lora_r; keep one"):
        config_from_argv(["--config", str(path)])
    with pytest.raises(VeloraError, match="file not found; `velora init` writes a commented one"):
        config_from_argv(["--config", str(tmp_path / "missing.json")])


def test_learning_rate_auto_is_a_typed_value():
    assert LearningRate("auto").auto and not LearningRate("3e-4").auto and LearningRate("3e-4") == 3e-4
    with pytest.raises(ValueError, match="give a number such as 2e-4, or auto"):
        LearningRate("fast")
    config = TrainConfig(output_dir="o", learning_rate="auto", per_device_train_batch_size=8,
                         gradient_accumulation_steps=2)
    assert config.learning_rate == pytest.approx(8e-4) and config.learning_rate.auto


@pytest.mark.parametrize("rate, batch, warned", [(1e-2, 4, True), (2e-4, 4, False), (2.9e-4, 4, False),
                                                 (2e-4, 16, True), (8e-4, 16, False), (1e-4, 16, True)])
def test_learning_rate_far_from_the_guide_rule_is_named(rate, batch, warned):
    advice = TrainConfig(output_dir="o", learning_rate=rate, per_device_train_batch_size=batch).learning_rate_advice()
    assert (advice is not None) == warned
    if warned:
        assert "--learning_rate auto" in advice and f"effective batch of {batch}" in advice


def test_init_writes_the_template_and_train_reads_it_anywhere(tmp_path, monkeypatch):
    project = tmp_path / "project"
    result = CliRunner().invoke(cli, ["init", str(project)])
    assert result.exit_code == 0, result.output
    written = project / "configs" / "lora_config.json"
    assert written.read_bytes() == (files("velora") / "templates" / "lora_config.json").read_bytes()
    assert (REPO / "configs" / "lora_config.json").read_bytes() == written.read_bytes()  # the checkout's copy
    assert (project / "data" / "example_ve_data.csv").read_text().startswith("image_path,premise,hypothesis,label")
    (project / "data" / "my_ve_data.csv").write_text("image_path,premise,hypothesis,label\n")
    monkeypatch.chdir(tmp_path)  # outside the source checkout and the project
    config = config_from_argv(["--config", "project/configs/lora_config.json"])
    assert Path(config.train_file).resolve() == (project / "data" / "my_ve_data.csv").resolve()
    assert (config.lora_r, config.num_train_epochs, config.per_device_train_batch_size) == (8, 3, 4)
    again = CliRunner().invoke(cli, ["init", str(project)])
    assert "Kept" in again.output and written.read_bytes() == (files("velora") / "templates" /
                                                               "lora_config.json").read_bytes()


def test_package_data_ships_the_templates(tmp_path):
    """A wheel built from the checkout carries the templates `velora init` copies."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True,
                   env={**os.environ, "PIP_NO_INDEX": "1"})
    import zipfile

    names = zipfile.ZipFile(next(wheel_dir.glob("velora-*.whl"))).namelist()
    assert {"velora/templates/lora_config.json", "velora/templates/example_ve_data.csv"} <= set(names)


def _history(*evals: tuple[int, float, float]) -> list[dict]:
    return [{"step": 0, "eval_macro_f1": 0.1, "eval_loss": 9.0}] + [
        {"step": step, "eval_macro_f1": f1, "eval_loss": loss} for step, f1, loss in evals]


def test_ties_on_macro_f1_go_to_the_lower_loss_then_the_later_step():
    history = _history((40, 0.5, 0.9), (80, 0.5, 0.4), (120, 0.5, 0.4), (160, 0.3, 0.1))
    assert best_evaluation(history, "macro_f1")["step"] == 120
    reason = selection_reason(history, 120, "macro_f1")
    assert reason.startswith("Kept step 120: best validation macro-F1 0.500, tied with step 40, 80")
    assert "later one at the same validation loss" in reason
    lower = _history((40, 0.5, 0.9), (80, 0.5, 0.4), (120, 0.5, 0.6))
    assert best_evaluation(lower, "macro_f1")["step"] == 80
    assert "kept for its lower validation loss 0.400" in selection_reason(lower, 80, "macro_f1")


def test_tie_break_sets_the_trainers_best_step(tmp_path):
    """The Trainer alone keeps the earliest of tied evaluations; after the callback its strict comparison keeps the
    later, lower-loss one."""
    args = TrainingArguments(output_dir=str(tmp_path), metric_for_best_model="macro_f1", greater_is_better=True,
                             load_best_model_at_end=True, eval_strategy="steps", save_steps=40, eval_steps=40)
    state = TrainerState(log_history=_history((40, 0.5, 0.9)), best_metric=0.5, best_global_step=40)
    state.log_history.append({"step": 80, "eval_macro_f1": 0.5, "eval_loss": 0.4})
    BestCheckpointTieBreak().on_evaluate(args, state, None, metrics=state.log_history[-1])
    assert (state.best_global_step, state.best_metric) == (80, 0.5)
    assert not np.greater(0.5, state.best_metric)  # so the Trainer's own check leaves it there


def test_training_and_eval_share_one_metrics_module():
    from velora.evaluate import compute_metrics as eval_metrics

    assert eval_metrics is compute_metrics
    labels = np.array([0, 0, 1, 2, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 2, 0]), 3).float().numpy()

    class Prediction:
        predictions, label_ids = logits, labels

    out = trainer_metrics(Prediction)
    expected = compute_metrics([LABELS[i] for i in labels], [LABELS[i] for i in (0, 1, 1, 2, 2, 0)])
    assert out["accuracy"] == expected.accuracy == pytest.approx(4 / 6)
    assert out["macro_f1"] == expected.macro_avg["f1"]
    assert "macro avg" in expected.report and "entailment" in expected.report  # scikit-learn's table


def test_balanced_class_weights_come_from_scikit_learn():
    weights = class_weights("balanced", [0, 0, 0, 1])
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])  # neutral absent: weight 0
    assert class_weights("none", [0, 1]) is None and class_weights("1,1,2", [0]).tolist() == [1, 1, 2]
