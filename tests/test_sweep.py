"""`velora sweep` on a tiny random OFA and the colour dataset: a grid over ranks with two seeds (features computed
once, each run identical to a plain `velora train` run, the table, plot, best/ and study opened by their own tools),
a losing learning rate pruned, a TPE search that grows, and the refusals; the space, the choice and its wording."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
from optuna.distributions import IntDistribution
import pytest
import torch
from click.testing import CliRunner
from filelock import FileLock
from safetensors.torch import load_file

from train_helpers import base_model, dataset, run_train, train_argv  # noqa: F401 (fixtures)
from velora.cli import cli
from velora.errors import VeloraError
from velora.sweep import sweep
from velora.sweep.results import choose_best
from velora.sweep.space import parse_dimension, run_name, run_settings, space_from_mapping
from velora.sweep.trial import RunSource
from velora.train.data import ImageStore


def sweep_argv(base_model: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["sweep", *train_argv(base_model, dataset, output, "--max_steps", "4", "--save_steps", "2"), *extra]


def read_table(folder: Path) -> list[dict]:
    with open(folder / "sweep_results.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tiny_settings(base_model: Path, dataset: Path, output: Path, **values) -> dict:
    return {"model_name_or_path": str(base_model), "dataset_name": str(dataset), "output_dir": str(output),
            "per_device_train_batch_size": 4, "lora_dropout": 0, "logging_steps": 2, "report_to": "none",
            "seed": 7, "disable_tqdm": True, **values}


@pytest.fixture(scope="module")
def grid_sweep(base_model, dataset, tmp_path_factory, request):
    """`velora sweep --lora_r 2,4 --lora_alpha 2r --seeds 2` through the real click command, counting how often
    the ResNet runs over the images."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    calls = []
    original = ImageStore.cache_features
    ImageStore.cache_features = lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1]
    try:
        result = CliRunner().invoke(cli, sweep_argv(base_model, dataset, out, "--lora_r", "2,4", "--lora_alpha", "2r",
                                                    "--seeds", "2"))
    finally:
        ImageStore.cache_features = original
    assert result.exit_code == 0, result.output[-3000:]
    return out, result.output, len(calls)


def test_grid_runs_every_configuration_and_seed_with_features_computed_once(grid_sweep):
    out, output, feature_passes = grid_sweep
    assert feature_passes == 1
    rows = read_table(out)
    assert [(r["trial"], r["lora_r"], r["state"], r["seeds"]) for r in rows] == [("0", "2", "complete", "7,8"),
                                                                                 ("1", "4", "complete", "7,8")]
    for row in rows:  # the guide's signal: train and validation side by side, and their gap
        assert float(row["gap"]) == pytest.approx(float(row["train_macro_f1"]) - float(row["val_macro_f1"]))
        assert row["val_macro_f1_std"] != "" and row["runs"] == f"r{row['lora_r']}_seed7 r{row['lora_r']}_seed8"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["r2_seed7", "r2_seed8", "r4_seed7", "r4_seed8"]
    run = out / "runs" / "r4_seed8"
    assert not list(run.glob("checkpoint-*"))  # a finished run keeps its adapter, not its resume points
    assert set(json.loads((run / "metrics.json").read_text())["train_split"]) == {"accuracy", "macro_f1", "loss"}
    assert json.loads((run / "adapter_config.json").read_text())["lora_alpha"] == 8  # 2r at r 4
    assert "gap (train-val)" in output and "±" in output and "Best: trial" in output
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_run_equals_a_plain_train_run(grid_sweep, base_model, dataset, tmp_path):
    out, _, _ = grid_sweep
    plain = tmp_path / "plain"
    run_train(train_argv(base_model, dataset, plain, "--max_steps", "4", "--save_steps", "2", "--lora_r", "2",
                         "--lora_alpha", "4", "--seed", "8"))
    swept, alone = load_file(out / "runs" / "r2_seed8" / "adapter_model.safetensors"), load_file(
        plain / "adapter_model.safetensors")
    assert swept.keys() == alone.keys() and all(torch.equal(swept[k], alone[k]) for k in swept)


def test_best_loads_with_peft_and_velora_predict(grid_sweep, base_model, dataset):
    from peft import PeftModel

    from velora.ofa.checkpoint import load_pretrained

    out, _, _ = grid_sweep
    choice = json.loads((out / "best" / "sweep_choice.json").read_text())
    best = next(r for r in read_table(out) if int(r["trial"]) == choice["trial"])
    assert choice["settings"]["lora_r"] == int(best["lora_r"]) and "validation macro-F1" in choice["reason"]
    chosen = out / "runs" / f"r{best['lora_r']}_seed{choice['seed']}"
    assert (out / "best" / "adapter_model.safetensors").read_bytes() == (
        chosen / "adapter_model.safetensors").read_bytes()
    PeftModel.from_pretrained(load_pretrained(base_model), str(out / "best"))
    image = next(Path(dataset).parent.glob("raw/square_0.png"))
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(out / "best"), "--image", str(image),
                                      "--premise", "a coloured square", "--hypothesis", "the square is red", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] in ("entailment", "contradiction", "neutral")


def test_the_study_opens_in_optuna_and_optuna_dashboard(grid_sweep):
    from optuna_dashboard import wsgi

    out, _, _ = grid_sweep
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="velora-sweep", storage=storage)
    rows = {int(r["trial"]): r for r in read_table(out)}
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert all(t.value == pytest.approx(float(rows[t.number]["val_macro_f1"])) for t in study.trials)
    environ, answer = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}, {}
    setup_testing_defaults(environ)
    body = b"".join(wsgi(storage)(environ, lambda status, *_: answer.update(status=status)))
    assert answer["status"].startswith("200")
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["velora-sweep"]


def test_a_losing_learning_rate_is_pruned_early(base_model, dataset, tmp_path):
    out = tmp_path / "pruned"
    result = sweep(tiny_settings(base_model, dataset, out, max_steps=16, save_steps=8),
                   {"learning_rate": [1e-2, 1e-6]}, pruning=True, prune_after=1)
    rows = read_table(out)
    assert [(r["learning_rate"], r["state"], r["steps"], r["pruned_at_step"]) for r in rows] == [
        ("0.01", "complete", "16", ""), ("1e-06", "pruned", "8", "8")]
    assert rows[1]["train_macro_f1"] == ""  # a pruned run is not scored on the training split
    assert result.best["trial"] == 0 and result.best_dir == out / "best"
    study = optuna.load_study(study_name="velora-sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert study.trials[1].state.name == "PRUNED" and list(study.trials[1].intermediate_values) == [8 * 4]


def test_by_default_a_small_validation_split_is_not_pruned(base_model, dataset, tmp_path, capsys):
    out = tmp_path / "auto"
    sweep(tiny_settings(base_model, dataset, out, max_steps=16, save_steps=8),
          {"learning_rate": [1e-2, 1e-6]}, prune_after=1)
    assert [r["state"] for r in read_table(out)] == ["complete", "complete"]
    assert "Pruning off:" in capsys.readouterr().out


def test_tpe_search_grows_and_refusals(base_model, dataset, tmp_path):
    out = tmp_path / "search"
    settings = tiny_settings(base_model, dataset, out, max_steps=2, save_steps=2, lora_r=2)
    first = sweep(settings, {"learning_rate": (1e-3, 1e-1)}, trials=2)
    assert [r["state"] for r in first.rows] == ["complete", "complete"]
    rates = [r["learning_rate"] for r in first.rows]
    assert all(1e-3 <= rate <= 1e-1 for rate in rates) and rates[0] != rates[1]
    grown = sweep(settings, {"learning_rate": (1e-3, 1e-1)}, trials=3)  # the same sweep with a larger budget
    assert [r["learning_rate"] for r in grown.rows][:2] == rates and len(grown.rows) == 3
    with pytest.raises(VeloraError, match=r"holds a sweep with other space \(learning_rate"):
        sweep(settings, {"learning_rate": (1e-4, 1e-1)}, trials=3)
    with FileLock(str(out / ".velora-sweep.lock")), pytest.raises(VeloraError, match="another velora sweep is running"):
        sweep(settings, {"learning_rate": (1e-3, 1e-1)}, trials=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(VeloraError, match="holds other files"):
        sweep({**settings, "output_dir": str(tmp_path / "mine")}, {"lora_r": [2, 4]})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("space, extra, message", [
    ({"learning_rate": "1e-4:1e-3"}, {}, r"--learning_rate 0.0001:0.001 is a range: add --trials N"),
    ({}, {}, "nothing to sweep"),
    ({"num_train_epochs": [1, 2]}, {"max_steps": 4}, "--num_train_epochs is swept but --max_steps 4"),
    ({"lora_r": [2, 4]}, {"resume_from_checkpoint": "auto"}, "a sweep resumes by itself"),
])
def test_settings_that_cannot_sweep_are_refused_before_anything_runs(space, extra, message, base_model, dataset,
                                                                      tmp_path):
    with pytest.raises(VeloraError, match=message):
        sweep(tiny_settings(base_model, dataset, tmp_path / "s", **extra), space)
    assert not (tmp_path / "s" / "runs").exists()


def test_values_ranges_and_mistakes_on_the_command_line():
    assert parse_dimension("lora_r", ["4,8", "16"]).values == (4, 8, 16)
    assert parse_dimension("learning_rate", ["auto,1e-4"]).values == ("auto", 1e-4)
    assert (parse_dimension("learning_rate", ["5e-5:5e-4"]).low, parse_dimension("lora_r", ["4:32"]).high) == (5e-5, 32)
    assert parse_dimension("lora_alpha", ["8:64"]).distribution() == IntDistribution(8, 64, log=True)
    modules = parse_dimension("lora_target_modules", ["q_proj, v_proj", "q_proj,k_proj,v_proj"])
    assert modules.values == ("q_proj,v_proj", "q_proj,k_proj,v_proj")
    space = space_from_mapping({"lora_r": [4, 16], "lora_alpha": "2r"})
    assert run_settings({"lora_r": 16}, space, base_rank=8) == {"lora_r": 16, "lora_alpha": 32}
    assert run_name({"lora_r": 16, "lora_target_modules": "q_proj,v_proj"}, 43) == "r16_tmq_proj+v_proj_seed43"
    for name, texts, message in [("lora_r", ["4,x"], r"--lora_r 'x': not a value; e.g. --lora_r 4,8,16,32"),
                                 ("learning_rate", ["0"], "must be above 0"),
                                 ("lora_target_modules", ["q_proj:v_proj"], "a range works for numbers only"),
                                 ("learning_rate", ["1e-3:1e-4"], "LOW below HIGH"),
                                 ("lora_dropout", ["0.1,0.2"], "cannot be swept")]:
        with pytest.raises(VeloraError, match=message):
            parse_dimension(name, texts)
    result = CliRunner().invoke(cli, ["sweep", "--lora_r", "4,x", "--output_dir", "unused"])
    assert result.exit_code == 2 and "--lora_r 'x': not a value" in result.output


def test_learning_rate_auto_follows_each_swept_batch_size():
    """--per_device_train_batch_size 2,8 --learning_rate auto: the guide's rule (2e-4 at 4, linear) per run."""
    space = space_from_mapping({"per_device_train_batch_size": [2, 8], "learning_rate": "auto"})
    source = RunSource({"output_dir": "unused", "dataset_name": "unused"})
    for batch, rate in ((2, 1e-4), (8, 4e-4)):
        config = source.load(**run_settings({"per_device_train_batch_size": batch}, space, base_rank=8))
        assert float(config.learning_rate) == pytest.approx(rate) and config.learning_rate_advice() is None
    off = source.load(**run_settings({"per_device_train_batch_size": 2}, space_from_mapping({}), base_rank=8))
    assert "--learning_rate auto" in off.learning_rate_advice()  # 2e-4 at batch 2: twice the rule


def test_help_lists_the_sweep_then_every_train_flag():
    text = CliRunner().invoke(cli, ["sweep", "--help"], prog_name="velora").output
    sections = [text.index(f"\n{title}") for title in ("Sweep:", "Swept settings", "Model:", "Data:", "LoRA:")]
    assert sections == sorted(sections) and sections[1] < text.index("--lora_r VALUES") < sections[2]
    assert "--trials INTEGER" in text[sections[0]:sections[1]] and "--lora_dropout" in text[sections[4]:]
    assert "--seeds" in text and "velora sweep --help-all" in " ".join(text.split())
    assert "--adam_beta1" in CliRunner().invoke(cli, ["sweep", "--help-all"]).output


def _row(trial, r, f1, loss=1.0, std=None, state="complete"):
    return {"trial": trial, "lora_r": r, "state": state, "val_macro_f1": f1, "val_loss": loss,
            "val_macro_f1_std": std, "_records": [{}] * (2 if std is not None else 1), "_validation_examples": 200}


def test_the_choice_breaks_ties_by_rank_and_says_when_the_best_two_overlap():
    best, reason = choose_best([_row(0, 16, 0.9), _row(1, 8, 0.9), _row(2, 4, 0.8)], seeds=1)
    assert best["trial"] == 1 and "tied with trial 0; kept for its smaller rank" in reason
    assert "One run per configuration: on 200 validation examples" in reason and "--seeds 3" in reason
    best, reason = choose_best([_row(0, 8, 0.9, loss=0.7), _row(1, 8, 0.9, loss=0.5)], seeds=1)
    assert best["trial"] == 1 and "its lower validation loss (0.500)" in reason
    best, reason = choose_best([_row(0, 8, 0.92, std=0.02), _row(1, 16, 0.90, std=0.01),
                                _row(2, 4, 0.99, state="pruned")], seeds=3)
    assert best["trial"] == 0 and "The best two overlap" in reason and "0.920 ± 0.020" in reason
    best, reason = choose_best([_row(0, 8, 0.92, std=0.005), _row(1, 16, 0.80, std=0.01)], seeds=3)
    assert "It leads trial 1 by 0.120" in reason
    assert choose_best([_row(0, 8, 0.5, state="pruned")], seeds=1)[0] is None


def test_sweep_module_imports_no_torch_for_help():
    """`velora sweep --help` builds its options from TrainConfig only when asked: the module itself is light."""
    code = "import sys, velora.sweep.cli; print('transformers' in sys.modules)"
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
