"""`velora distill` on tiny random checkpoints: a teacher (LoRA on a d_model 64 OFA, 64 px) teaches a student of
another size and image size (the reference fixture's d_model 32 OFA at 32 px, or a velora-made one); the loss, the
teacher cache (the teacher is not called again), resume, refusals, the CLI end to end, the edge report, and the
student folder loading in the reference implementation with equal probabilities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from transformers import TrainerCallback

from conftest import write_tiny_adapter, write_tiny_model
from data_fixtures import png, write_csv
from test_reference_loader import reference_probs, velora_probs
from train_helpers import colour_dataset
from velora.cli import cli
from velora.distill import distill, distillation_loss
from velora.distill.recipe import DistillRecipe
from velora.distill.teacher import CACHE_NAME
from velora.errors import VeloraError
from velora.ofa.checkpoint import stored_keys
from velora.predictor import Predictor

FAST = {"max_steps": 4, "save_steps": 2, "logging_steps": 2, "per_device_train_batch_size": 6,
        "learning_rate": 1e-3, "report_to": "none", "report_latency_runs": 0, "seed": 3, "image_size": 32}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A LoRA adapter on an OFA twice the student's width, at 64 px."""
    root = tmp_path_factory.mktemp("teacher")
    base = write_tiny_model(root / "base", seed=1, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, dropout=0.0)
    return write_tiny_adapter(base, root / "lora", seed=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return colour_dataset(tmp_path_factory.mktemp("data"), n_images=9)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory) -> Path:
    """Four new pictures without labels, and a row whose picture is missing."""
    folder = tmp_path_factory.mktemp("unlabeled")
    rows = [(png(folder / f"new_{i}.png", seed=10 + i, size=(20, 20)).name, "a coloured square",
             f"the square is {colour}") for i, colour in enumerate(["red", "green", "blue", "red"])]
    rows.append(("missing.png", "a coloured square", "the square is blue"))
    return write_csv(folder / "more.csv", rows, header=("image_path", "premise", "hypothesis"))


@pytest.fixture(scope="module")
def cli_run(teacher, dataset, unlabeled, parity_dir, tmp_path_factory) -> tuple[Path, str]:
    """`velora distill` through the CLI, the reference fixture (pytorch_model.bin, every key) as the student."""
    out = tmp_path_factory.mktemp("cli") / "student"
    flags = [f"--{k}={v}" for k, v in FAST.items()]
    result = CliRunner().invoke(cli, ["distill", "--teacher", str(teacher), "--student", str(parity_dir / "model"),
                                      "--dataset_name", str(dataset), "--output_dir", str(out),
                                      "--unlabeled_file", str(unlabeled), "--temperature", "2", "--alpha", "0.7",
                                      "--test_file", str(dataset), *flags])
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    return out, result.output


def test_loss_mixes_kl_to_the_teacher_and_gold_cross_entropy():
    logits, teacher = torch.randn(4, 3), torch.randn(4, 3).log_softmax(-1)
    labels = torch.tensor([0, 2, -1, 1])  # the third row has no gold label
    t = 3.0
    kl = (teacher.div(t).softmax(-1) * (teacher.div(t).log_softmax(-1) - logits.div(t).log_softmax(-1))).sum(-1)
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * torch.tensor([1.0, 1, 0, 1])
    for alpha in (0.0, 0.3, 1.0):
        got = distillation_loss(logits, teacher, labels, temperature=t, alpha=alpha)
        torch.testing.assert_close(got, (alpha * t * t * kl + (1 - alpha) * ce).mean())
    # a student equal to the teacher has nothing left to learn from it
    assert distillation_loss(teacher, teacher, labels, temperature=t, alpha=1.0).abs() < 1e-6


def test_cli_writes_a_student_folder_that_velora_and_the_reference_load(cli_run, teacher, parity_dir,
                                                                         oracle_python, tmp_path):
    out, output = cli_run
    assert "Edge report" in output and "GFLOP per example" in output
    assert "more.csv: 4 unlabelled rows" in output and "line 6, image_path" in output  # the bad row, named
    assert (out / "pytorch_model.bin").exists() and not (out / "adapter_config.json").exists()
    assert set(stored_keys(out)) == set(stored_keys(parity_dir / "model"))  # the student's own layout
    predictor = Predictor.from_pretrained(out)
    assert predictor.processor.config.image_size == 32  # the student's image size, not the teacher's 64
    reference = reference_probs(oracle_python, tmp_path, predictor, out)
    assert reference["unexpected_keys"] == []
    torch.testing.assert_close(reference["probs"], velora_probs(out), atol=1e-5, rtol=0)
    # it learnt something: it no longer scores like the random student it started from
    assert (velora_probs(out) - velora_probs(parity_dir / "model")).abs().max() > 1e-3


def test_edge_report_compares_student_and_teacher(cli_run):
    out, _ = cli_run
    report = json.loads((out / "distill_report.json").read_text())
    for split in ("validation", "test"):
        entry = report["splits"][split]
        assert entry["teacher"]["agreement_with_teacher"] == 1.0
        assert 0 <= entry["student"]["agreement_with_teacher"] <= 1 and 0 <= entry["student"]["ece"] <= 1
    student, teacher = report["cost"]["student"], report["cost"]["teacher"]
    assert student["parameters"] < teacher["parameters"]
    assert report["ratios"]["gflop_per_example"] == pytest.approx(student["gflop_per_example"]
                                                                  / teacher["gflop_per_example"])
    assert report["ratios"]["gflop_per_example"] < 0.5  # half the width at half the image side
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unlabeled_rows"] == 4 and metrics["teacher_rows"]["scored"] > 0
    card = (out / "README.md").read_text()
    assert "## Student vs teacher" in card and "| GFLOP per example |" in card


class StopAt(TrainerCallback):
    """Stop training cleanly after step `step` (its checkpoint saved), as an interruption would leave it."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_reads_the_teacher_cache_and_continues(teacher, dataset, tmp_path, monkeypatch):
    student = write_tiny_model(tmp_path / "student", seed=2, dropout=0.0)
    out = tmp_path / "out"
    settings = dict(FAST, teacher=str(teacher), student=str(student), dataset_name=str(dataset), output_dir=str(out))
    first = distill(callbacks=[StopAt(2)], **settings)
    assert first.metrics["train_steps"] == 2 and first.metrics["teacher_rows"]["from_cache"] == 0
    cache = (out / CACHE_NAME).stat().st_mtime_ns

    def no_teacher(self):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(DistillRecipe, "teacher_predictor", no_teacher)
    resumed = distill(resume_from_checkpoint="auto", **settings)
    assert resumed.metrics["train_steps"] == 4 and resumed.metrics["teacher_rows"]["scored"] == 0
    assert (out / CACHE_NAME).stat().st_mtime_ns == cache
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_accuracy" in h] == [0, 2, 4]  # one run, continued
    assert Predictor.from_pretrained(out).processor.config.image_size == 32

    with pytest.raises(VeloraError, match="trained with temperature 2.0, this run has temperature 4.0"):
        distill(resume_from_checkpoint="auto", **{**settings, "temperature": 4.0})


def test_refuses_what_it_did_not_write_and_bad_settings(teacher, dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / CACHE_NAME).write_text("{}")
    settings = dict(FAST, teacher=str(teacher), student=str(teacher), dataset_name=str(dataset), output_dir=str(out))
    with pytest.raises(VeloraError, match="is a LoRA adapter"):
        distill(**settings)
    settings["student"] = str(Path(teacher).parent / "base")
    with pytest.raises(VeloraError, match=f"holds {CACHE_NAME}, which velora did not write"):
        distill(**settings)
    with pytest.raises(VeloraError, match="--alpha 1.5"):
        distill(**{**settings, "alpha": 1.5})
    with pytest.raises(VeloraError, match="no teacher: pass --teacher"):
        distill(**{k: v for k, v in settings.items() if k != "teacher"})
    shutil.rmtree(out)


def test_lora_student_is_an_adapter_on_the_student(teacher, dataset, cli_run, tmp_path):
    student = write_tiny_model(tmp_path / "student", seed=2, dropout=0.0)
    out = tmp_path / "out"
    shared = shutil.copy(cli_run[0] / CACHE_NAME, tmp_path / "answers.json")  # the same teacher's: reused
    flags = [f"--{k}={v}" for k, v in {**FAST, "max_steps": 2}.items()]
    result = CliRunner().invoke(cli, ["distill", "--teacher", str(teacher), "--student", str(student),
                                      "--dataset_name", str(dataset), "--output_dir", str(out),
                                      "--student_lora_r", "4", "--teacher_cache", str(shared), *flags])
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    assert "Teacher: all" in result.output and not (out / CACHE_NAME).exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and Path(config["base_model_name_or_path"]) == student.resolve()
    assert not (out / "model.safetensors").exists()
    predictor = Predictor.from_pretrained(out)
    assert predictor.processor.config.image_size == 32 and predictor.adapter_names == ["default"]
    assert json.loads((out / "distill_report.json").read_text())["splits"]["validation"]["examples"] > 0
