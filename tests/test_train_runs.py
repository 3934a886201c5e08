"""`velora train` runs that check what a run may do to its output folder, when a checkpoint may be continued, and
what a user watching it sees: the Python API, `tail -f`, refusals, resume checks, ties, odd validation splits."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from conftest import REPO
from train_helpers import base_model, colour_dataset, dataset, run_train, train_argv  # noqa: F401 (fixtures)
from velora.errors import VeloraError
from velora.train import TrainResult, train
from velora.train.checkpoints import COMPLETE_MARKER

# `velora train` that kill -9s itself in the middle of its first checkpoint save (the adapter is written, the
# optimizer and RNG states are not): the Trainer's own save step, whatever velora does around it.
KILL_IN_FIRST_SAVE = """
import os, signal, sys
from transformers import Trainer
from velora import cli
def die(self, output_dir):
    os.kill(os.getpid(), signal.SIGKILL)
Trainer._save_optimizer_and_scheduler = die
cli.cli.main(sys.argv[1:], prog_name="velora")
"""


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FollowWithTail(TrainerCallback):
    """Starts a real `tail -f` on trainer_state.json as soon as the file exists, and collects what it prints."""

    def __init__(self, path: Path):
        self.path, self.process, self.lines = path, None, []

    def on_log(self, args, state, control, **kwargs):
        if self.process is None and self.path.exists():
            self.process = subprocess.Popen(["tail", "-f", str(self.path)], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def stop_after(self, needle: str, timeout: float = 60) -> str:
        """Wait until tail has printed `needle` (at most `timeout` s), stop it, and return all it printed."""
        for _ in range(int(timeout * 10)):
            if needle in "".join(self.lines):
                break
            time.sleep(0.1)
        self.process.terminate()
        self.process.wait()
        return "".join(self.lines)


def test_python_api_and_tail_f_shows_progress(base_model, dataset, tmp_path):
    out = tmp_path / "lora_finetuned"
    follow = FollowWithTail(out / "trainer_state.json")
    result = train({"model_name_or_path": str(base_model), "dataset_name": str(dataset), "output_dir": str(out),
                    "r": 4, "alpha": 8, "lr": 1e-2, "batch_size": 4, "lora_dropout": 0, "max_steps": 12,
                    "save_steps": 6, "logging_steps": 1, "report_to": "none", "seed": 7}, callbacks=[follow])
    assert isinstance(result, TrainResult)
    assert result.adapter_file == out / "adapter_model.safetensors" and result.adapter_file.exists()
    assert result.metrics == json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # the guide's key `r`
    followed = follow.stop_after('"train_runtime"')
    steps = {int(s) for s in re.findall(r'"step": (\d+)', followed)}
    assert len(steps) >= 3, followed[-2000:]


def test_overwrite_removes_only_what_velora_wrote(base_model, dataset, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("my notes")
    (project / "src" / "model.py").write_text("print('mine')")
    mine = _files(project)
    run_train(train_argv(base_model, dataset, project, "--max_steps", "2", "--save_steps", "2"))
    assert (project / "checkpoint-2" / COMPLETE_MARKER).exists()
    run_train(train_argv(base_model, dataset, project, "--max_steps", "4", "--save_steps", "4",
                         "--overwrite_output_dir"))
    assert {p: b for p, b in _files(project).items() if p in mine} == mine
    assert not (project / "checkpoint-2").exists() and (project / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert json.loads((project / "metrics.json").read_text())["train_steps"] == 4


def test_refusals_before_anything_is_written(base_model, dataset, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "README.md").write_text("# my project")
    with pytest.raises(VeloraError, match="holds README.md, which velora did not write"):
        run_train(train_argv(base_model, dataset, foreign, "--max_steps", "2", "--overwrite_output_dir"))
    assert [p.name for p in foreign.iterdir()] == ["README.md"]
    with pytest.raises(VeloraError, match="is or lies inside the base model"):
        run_train(train_argv(base_model, dataset, base_model / "lora", "--max_steps", "2"))
    with pytest.raises(VeloraError, match="is or lies inside the dataset"):
        run_train(train_argv(base_model, dataset, dataset, "--max_steps", "2"))
    assert not (base_model / "lora").exists() and not (dataset / "adapter_config.json").exists()


def test_resume_refuses_a_checkpoint_of_another_run(base_model, dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    out = tmp_path / "run"
    argv = train_argv(base_model, data, out, "--max_steps", "2", "--save_steps", "2")
    run_train(argv)
    before = _files(out)
    resume = ["--resume_from_checkpoint", "auto", "--max_steps", "4"]
    with pytest.raises(VeloraError, match=r"checkpoint-2 was trained with lora_r 8, this run has lora_r 4"):
        run_train(argv + resume + ["--lora_r", "4"])
    with pytest.raises(VeloraError, match="image_size 64, this run has image_size 32"):
        run_train(argv + resume + ["--image_size", "32"])
    shutil.rmtree(data)
    colour_dataset(tmp_path / "other", n_images=9)  # the same folder name, other rows
    shutil.copytree(tmp_path / "other" / "hf_dataset", data)
    with pytest.raises(VeloraError, match="was trained on other data than .* holds now"):
        run_train(argv + resume)
    assert _files(out) == before


def test_kill_during_the_first_checkpoint_save_resumes_from_step_0(base_model, dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(base_model, dataset, out, "--max_steps", "4", "--save_steps", "2")
    killed = subprocess.run([sys.executable, "-c", KILL_IN_FIRST_SAVE, "train", *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoint-2").exists() and not (out / "checkpoint-2" / COMPLETE_MARKER).exists()
    run_train(argv + ["--resume_from_checkpoint", "auto"])
    assert "starting this run again from step 0" in capsys.readouterr().out
    assert (out / "checkpoint-4" / COMPLETE_MARKER).exists()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[0]["step"] == 0 and "eval_accuracy" in history[0]  # the baseline: a fresh start
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 4


def test_tied_evaluations_keep_the_later_step_and_say_why(base_model, dataset, tmp_path, capsys):
    out = tmp_path / "run"  # learning rate 0: every evaluation is the same, macro-F1 and loss
    run_train(train_argv(base_model, dataset, out, "--max_steps", "4", "--save_steps", "2", "--learning_rate", "0"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_checkpoint"].endswith("checkpoint-4") and metrics["final"]["step"] == 4
    assert "Kept step 4: best validation macro-F1" in capsys.readouterr().out
    assert "tied with step 2; kept for being the later one at the same validation loss" in metrics["selection"]


def test_single_label_validation_split_warns_and_chooses_by_loss(base_model, dataset, tmp_path, capsys):
    from datasets import DatasetDict, load_from_disk

    splits = load_from_disk(str(dataset))
    only_entailment = splits["validation"].filter(lambda row: row["label"] == 0, keep_in_memory=True)
    DatasetDict(train=splits["train"], validation=only_entailment).save_to_disk(str(tmp_path / "one_label"))
    out = tmp_path / "run"
    run_train(train_argv(base_model, tmp_path / "one_label", out, "--max_steps", "4", "--save_steps", "2"))
    printed = capsys.readouterr().out
    assert "Warning: the validation split holds only entailment examples, where macro-F1 cannot tell" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert "validation loss chose" in metrics["selection"] and metrics["selection"].startswith("Kept step")
