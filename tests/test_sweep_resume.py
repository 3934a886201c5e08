"""An interrupted `velora sweep` resumes where it stopped: a real `velora sweep` process (2 ranks x 2 seeds, 2 steps
each, a checkpoint every step) kill -9s itself in the middle of its 8th checkpoint save (the second configuration's
second seed, at step 2), and the same command, run again, leaves the finished configuration alone, reuses the image
features and the cut-off configuration's finished seed, and continues its other seed from checkpoint-1."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys

import optuna

from train_helpers import base_model, dataset, train_argv  # noqa: F401 (fixtures)

# `velora sweep` that kill -9s itself in its 8th checkpoint save, after the adapter is written and before the
# optimizer state is: a point fixed by the runs' own progress, whatever the machine's speed.
KILL_IN_EIGHTH_SAVE = """
import os, signal, sys
from transformers import Trainer
from velora import cli
saves = []
save = Trainer._save_optimizer_and_scheduler
def save_or_die(self, output_dir):
    saves.append(output_dir)
    if len(saves) == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, output_dir)
Trainer._save_optimizer_and_scheduler = save_or_die
cli.cli.main(sys.argv[1:], prog_name="velora")
"""


def test_a_killed_sweep_resumes_where_it_stopped(base_model, dataset, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", *train_argv(base_model, dataset, out, "--max_steps", "2", "--save_steps", "1"),
            "--lora_r", "2,4", "--seeds", "2", "--disable_tqdm", "true"]
    killed = subprocess.run([sys.executable, "-c", KILL_IN_EIGHTH_SAVE, *argv], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    runs = out / "runs"
    assert all((runs / name / "sweep_run.json").exists() for name in ("r2_seed7", "r2_seed8", "r4_seed7"))
    cut = runs / "r4_seed8"
    assert not (cut / "sweep_run.json").exists() and (cut / "checkpoint-1" / "velora_checkpoint_complete.json").exists()
    finished = {name: (runs / name / "adapter_model.safetensors").stat().st_mtime_ns
                for name in ("r2_seed7", "r2_seed8", "r4_seed7")}
    with open(out / "sweep_results.csv", newline="") as f:
        assert [r["lora_r"] for r in csv.DictReader(f)] == ["2"]  # the table so far, written after each trial

    resumed = subprocess.run([sys.executable, "-m", "velora", *argv], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout
    assert "Resuming the sweep" in said and "Trial 1 (lora_r 4) was cut off" in said and "=== Trial 0" not in said
    assert "r4_seed7: finished earlier in this sweep, its result reused" in said
    assert "r4_seed8: cut off earlier; continuing from checkpoint-1" in said
    assert "Image features: loaded from" in said and "computed once for the sweep" not in said
    assert {name: (runs / name / "adapter_model.safetensors").stat().st_mtime_ns for name in finished} == finished
    with open(out / "sweep_results.csv", newline="") as f:
        assert [(r["lora_r"], r["state"], r["seeds"], r["steps"]) for r in csv.DictReader(f)] == [
            ("2", "complete", "7,8", "2,2"), ("4", "complete", "7,8", "2,2")]
    study = optuna.load_study(study_name="velora-sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert [(t.number, t.state.name, t.params) for t in study.trials] == [
        (0, "COMPLETE", {"lora_r": 2}), (1, "FAIL", {"lora_r": 4}), (2, "COMPLETE", {"lora_r": 4})]
