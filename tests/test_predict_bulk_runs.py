"""`velora predict --input_file` as users run it, in real processes: with DataLoader workers; killed with SIGKILL at
a fixed point (VELORA_PREDICT_KILL_AFTER makes the run kill itself there, so nothing races) and resumed by the
same command; under torchrun with 2 CPU processes (gloo). Each output equals a straight run's, byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from eval_helpers import write_labelled_csv

TIMEOUT = 300


def velora_predict(model, source, output, *extra: str, kill_after: str | None = None,
                   launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: the same arithmetic in every run
    env.pop("VELORA_PREDICT_KILL_AFTER", None)
    if kill_after:
        env["VELORA_PREDICT_KILL_AFTER"] = kill_after
    command = [sys.executable, *launcher, "-m", "velora", "predict", "--model_path", str(model), "--device", "cpu",
               "--input_file", str(source), "--output_file", str(output), "--chunk_size", "4", "--batch_size", "3",
               *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    source = write_labelled_csv(tmp_path_factory.mktemp("rows"), rows=18, images=5)  # 5 chunks of 4 rows
    with source.open("a", encoding="utf-8") as f:
        f.write("images/missing.png,a photo,a dog,entailment,b9\n")  # a failed row is resumed like the others
    return source


@pytest.fixture(scope="module")
def straight(tiny_model_dir, rows, tmp_path_factory) -> bytes:
    output = tmp_path_factory.mktemp("straight") / "preds.csv"
    done = velora_predict(tiny_model_dir, rows, output, "--num_workers", "0")
    assert done.returncode == 0, done.stderr
    assert "Scored 18 of 19 rows" in done.stdout and "image_not_found" in done.stdout
    return output.read_bytes()


def test_killed_while_scoring_resumes_where_it_stopped(tiny_model_dir, rows, straight, tmp_path):
    output = tmp_path / "preds.csv"
    killed = velora_predict(tiny_model_dir, rows, output, "--num_workers", "1", kill_after="chunks:2")
    assert killed.returncode == -signal.SIGKILL
    progress = tmp_path / "preds.csv.progress"
    assert not output.exists()
    assert sorted(p.name for p in progress.glob("chunk-*")) == ["chunk-00000000.jsonl", "chunk-00000001.jsonl"]

    resumed = velora_predict(tiny_model_dir, rows, output, "--num_workers", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 5 chunks already done" in resumed.stderr and "11 rows in" in resumed.stdout
    assert output.read_bytes() == straight  # each row exactly once, in input order
    assert not progress.exists()


def test_killed_while_writing_the_output_resumes_and_refuses_other_settings(tiny_model_dir, rows, straight,
                                                                            tmp_path):
    output = tmp_path / "preds.csv"
    killed = velora_predict(tiny_model_dir, rows, output, "--num_workers", "0", kill_after="merge:2")
    assert killed.returncode == -signal.SIGKILL
    assert not output.exists() and len(list((tmp_path / "preds.csv.progress").glob("chunk-*"))) == 5

    other = velora_predict(tiny_model_dir, rows, output, "--num_workers", "0", "--max_side", "100")
    assert other.returncode == 2 and "holds an unfinished run that differs (limits)" in other.stderr
    assert "--overwrite to start over" in other.stderr

    resumed = velora_predict(tiny_model_dir, rows, output, "--num_workers", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert "5 of 5 chunks already done" in resumed.stderr
    assert output.read_bytes() == straight


def test_torchrun_two_processes_write_what_one_writes(tiny_model_dir, rows, straight, tmp_path):
    output = tmp_path / "preds.csv"
    run = velora_predict(tiny_model_dir, rows, output, "--num_workers", "1",
                         launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Scored 18 of 19 rows") == 1 and "(2 processes)" in run.stdout  # rank 0 reports
    assert output.read_bytes() == straight
