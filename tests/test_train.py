"""`velora train` on a tiny random OFA and a small colour dataset: it learns, writes what predict needs, resumes
after kill -9 to the same result, reads configs, and runs data-parallel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import REPO
from train_helpers import base_model, colour_csv, dataset, run_train, train_argv  # noqa: F401 (fixtures)
from velora.cli import cli
from velora.errors import VeloraError
from velora.train.checkpoints import COMPLETE_MARKER, resolve_resume
from velora.train.cli import config_from_argv

VELORA = [sys.executable, "-m", "velora"]

# `velora train` that kill -9s itself in the middle of its 8th optimizer step (checkpoint-6 is complete by then):
# a real SIGKILL at a point that does not depend on how fast the machine is.
KILL_MID_STEP_8 = """
import os, signal, sys
from velora import cli
from velora.train import recipe
compute_loss = recipe.VETrainer.compute_loss
def compute_loss_then_die(self, *args, **kwargs):
    if self.state.global_step == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return compute_loss(self, *args, **kwargs)
recipe.VETrainer.compute_loss = compute_loss_then_die
cli.cli.main(sys.argv[1:], prog_name="velora")
"""


@pytest.fixture(scope="module")
def trained(base_model, dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("run") / "lora_finetuned"
    run_train(train_argv(base_model, dataset, output, "--max_steps", "40", "--save_steps", "10"))
    return output


def test_training_reduces_loss(trained):
    state = json.loads((trained / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    eval_losses = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]
    assert eval_losses[-1] < 0.8 * eval_losses[0]  # held-out loss falls too (step 0 = the base model)


def test_outputs_exist_and_load_with_peft(trained, base_model):
    from peft import PeftModel

    from velora.ofa.checkpoint import load_pretrained

    expected = {"adapter_config.json", "adapter_model.safetensors", "vocab.json", "merges.txt", "configuration.json",
                "metrics.json", "training_curve.png", "trainer_state.json", "velora_run.json"}
    assert expected <= {p.name for p in trained.iterdir()}
    assert (trained / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_model.resolve())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 8
    weights = load_file(trained / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    model = PeftModel.from_pretrained(load_pretrained(base_model), str(trained))
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_metrics_compare_baseline_and_best(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["baseline"]["step"] == 0
    assert metrics["final"]["step"] == int(metrics["best_checkpoint"].rsplit("-", 1)[1])
    assert metrics["gain"]["accuracy"] == pytest.approx(metrics["final"]["accuracy"] - metrics["baseline"]["accuracy"])
    state = json.loads((trained / "trainer_state.json").read_text())
    best = max(h["eval_macro_f1"] for h in state["log_history"] if "eval_macro_f1" in h and h["step"] > 0)
    assert metrics["final"]["macro_f1"] == pytest.approx(best)


def test_predict_on_the_output_needs_nothing_else(trained, dataset):
    image = next(Path(dataset).parent.glob("raw/square_0.png"))
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(trained), "--image", str(image),
                                      "--premise", "a coloured square", "--hypothesis", "the square is red",
                                      "--compare_base", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["probabilities"] != data["base"]["probabilities"]


def test_guide_log_lines(base_model, dataset, tmp_path):
    result = subprocess.run([*VELORA, "train", *train_argv(base_model, dataset, tmp_path / "out", "--max_steps", "4",
                                                           "--report_to", "tensorboard")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Step 2/4 | Loss: " in output and "| LR: " in output and "| Epoch: " in output
    assert "Step 0/4 | Accuracy (val): " in output and "(base model)" in output
    assert "Trainable parameters: " in output
    assert list((tmp_path / "out" / "runs").rglob("events.out.tfevents*"))
    assert "Kept step 4: best validation macro-F1" in output
    assert f"Adapter: {tmp_path / 'out' / 'adapter_model.safetensors'} (" in output
    assert "this is what the guide calls pytorch_model.bin" in output
    assert "Note: --learning_rate 0.01 is 50x the guide's rule for an effective batch of 4" in output


def test_model_card_says_what_was_trained_on_what(trained, base_model):
    card = (trained / "README.md").read_text()
    assert "More Information Needed" not in card and "library_name: peft" in card
    assert f"base_model: {base_model.resolve()}" in card
    assert "| train | 27 | 9 | 9 | 9 |" in card and "| validation | 9 | 3 | 3 | 3 |" in card  # rows per label
    assert "LoRA: rank 8, alpha 16, dropout 0.0, on q_proj, v_proj" in card
    metrics = json.loads((trained / "metrics.json").read_text())
    assert f"| base model (step 0) | {metrics['baseline']['accuracy']:.4f} |" in card
    assert f"| this adapter (step {metrics['final']['step']}) | {metrics['final']['accuracy']:.4f} |" in card
    assert f"velora predict --model_path {trained}" in card and "PeftModel.from_pretrained(" in card


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def test_resume_after_kill_9_equals_straight_run(base_model, dataset, tmp_path):
    args = lambda out: train_argv(base_model, dataset, out, "--max_steps", "14", "--save_steps", "2",  # noqa: E731
                                  "--logging_steps", "1", "--save_total_limit", "2")
    straight = tmp_path / "straight"
    run_train(args(straight))

    killed = tmp_path / "killed"
    process = subprocess.run([sys.executable, "-c", KILL_MID_STEP_8, "train", *args(killed)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert (killed / "checkpoint-6" / COMPLETE_MARKER).exists()
    assert not (killed / "adapter_config.json").exists()

    run_train(args(killed) + ["--resume_from_checkpoint", "auto"])
    expected, actual = _adapter(straight), _adapter(killed)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-6)
    final = lambda out: json.loads((out / "metrics.json").read_text())["final"]  # noqa: E731
    assert final(killed)["accuracy"] == final(straight)["accuracy"]
    assert final(killed)["loss"] == pytest.approx(final(straight)["loss"], rel=1e-4)


def test_cut_off_checkpoint_never_looks_complete(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text("{}")
    assert resolve_resume(tmp_path, "auto") == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists()
    (tmp_path / "checkpoint-6").mkdir()
    with pytest.raises(VeloraError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-6"))
    assert resolve_resume(tmp_path / "fresh", "auto") is None


def test_config_file_with_flag_override(tmp_path, capsys):
    config = tmp_path / "lora_config.json"
    config.write_text(json.dumps({"_comment": "the guide's keys", "train_file": "my.csv", "num_train_epochs": 3,
                                  "per_device_train_batch_size": 2, "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
                                  "target_modules": ["q_proj", "v_proj"]}))
    (tmp_path / "my.csv").write_text("image_path,premise,hypothesis,label\n")
    args = config_from_argv(["--config", str(config), "--num_train_epochs", "5", "--output_dir", str(tmp_path / "o"),
                             "--learning_rate", "auto"])
    assert args.num_train_epochs == 5
    assert "--num_train_epochs 5 overrides the config's 3" in capsys.readouterr().out
    assert (args.lora_r, args.lora_alpha, args.lora_dropout) == (4, 8, 0.05)
    assert args.lora_target_modules == "q_proj,v_proj"
    assert args.train_file == str(tmp_path / "my.csv")
    assert args.learning_rate == pytest.approx(1e-4)  # the guide: 1e-4 at batch 2
    assert args.eval_steps == args.save_steps == 100


def test_shipped_config_parses():
    args = config_from_argv(["--config", str(REPO / "configs" / "lora_config.json"), "--output_dir", "/tmp/x"])
    assert args.lora_r == 8 and args.lora_alpha == 16 and args.lora_dropout == 0.1


@pytest.mark.parametrize("extra, message", [
    (["--save_steps", "5", "--eval_steps", "2"], "round multiple of the evaluation steps"),
    (["--class_weights", "1,2"], "--class_weights '1,2'"),
    (["--lora_target_modules", "nope_proj"], "--lora_target_modules nope_proj"),
])
def test_bad_arguments_are_explained(extra, message, base_model, dataset, tmp_path):
    with pytest.raises(VeloraError, match=message):
        run_train(train_argv(base_model, dataset, tmp_path / "o", "--max_steps", "2", *extra))


def test_data_errors(base_model, dataset, tmp_path):
    not_converted = tmp_path / "raw_folder"
    not_converted.mkdir()
    with pytest.raises(VeloraError, match="not a dataset made by `velora convert`"):
        run_train(train_argv(base_model, not_converted, tmp_path / "o1", "--max_steps", "2"))

    from datasets import ClassLabel, load_from_disk

    relabelled = load_from_disk(str(dataset))
    relabelled = relabelled.cast_column("label", ClassLabel(names=["yes", "no", "unsure"]))
    relabelled.save_to_disk(str(tmp_path / "relabelled"))
    with pytest.raises(VeloraError, match="label set .* does not match"):
        run_train(train_argv(base_model, tmp_path / "relabelled", tmp_path / "o2", "--max_steps", "2"))


def test_output_dir_holding_another_run_is_refused(trained, base_model, dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    with pytest.raises(VeloraError, match="already holds a training run"):
        run_train(train_argv(base_model, dataset, other, "--max_steps", "2"))
    run_train(train_argv(base_model, dataset, other, "--max_steps", "2", "--overwrite_output_dir"))
    assert json.loads((other / "metrics.json").read_text())["train_steps"] == 2


def test_train_file_is_converted_on_the_fly(base_model, tmp_path):
    csv_path = colour_csv(tmp_path / "data", n_images=6)
    output = tmp_path / "out"
    run_train(["--model_name_or_path", str(base_model), "--train_file", str(csv_path), "--output_dir", str(output),
          "--max_steps", "2", "--report_to", "none", "--save_steps", "2"])
    assert (output / "dataset" / "dataset_dict.json").exists()
    assert (output / "adapter_model.safetensors").exists()


def test_ddp_two_processes_match_one(base_model, dataset, tmp_path):
    # sequential sampling: the 2 ranks' batches of 2 are then exactly the single process's batches of 4
    common = ["--max_steps", "6", "--save_steps", "6", "--per_device_eval_batch_size", "4",
              "--train_sampling_strategy", "sequential"]
    one = tmp_path / "one"
    run_train(train_argv(base_model, dataset, one, *common))
    two = tmp_path / "two"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "velora", "train",
                             *train_argv(base_model, dataset, two, *common), "--per_device_train_batch_size", "2"],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    expected, actual = _adapter(one), _adapter(two)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-3, atol=1e-5)


def test_bf16_autocast_on_cpu_tracks_fp32_and_saves_an_fp32_adapter(trained, base_model, dataset, tmp_path):
    output = tmp_path / "bf16"
    run_train(train_argv(base_model, dataset, output, "--max_steps", "40", "--save_steps", "10", "--bf16", "true"))
    weights = load_file(output / "adapter_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    def eval_losses(run: Path) -> list[float]:
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        return [h["eval_loss"] for h in history if "eval_loss" in h]

    bf16, fp32 = eval_losses(output), eval_losses(trained)
    assert len(bf16) == len(fp32) == 5 and bf16[-1] < 0.8 * bf16[0]
    assert bf16 == pytest.approx(fp32, rel=0.05)
