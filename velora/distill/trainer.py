"""The distillation step inside `velora train`'s Trainer: each example carries the teacher's log-probabilities, the
loss mixes the KL divergence to them with the cross-entropy on the gold label (where there is one), and a fully
fine-tuned student is checkpointed as a plain OFA model folder (the layout of the checkpoint it started from).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.trainer import TRAINING_ARGS_NAME, logger

from velora.ofa.checkpoint import TIED_EMBEDDINGS, save_model
from velora.ofa.positions import derived_buffers
from velora.train.data import VECollator, VEDataset
from velora.train.recipe import VETrainer

NO_GOLD = -1  # the label of an --unlabeled_file row


def distillation_loss(logits: torch.Tensor, teacher_log_probs: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, alpha: float, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(gold), the cross-entropy
    only on rows with a gold label. logits (B, 3) student, teacher_log_probs (B, 3), labels (B,) or NO_GOLD."""
    t = temperature
    student = F.log_softmax(logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_log_probs.float() / t, dim=-1)  # log p / T, renormalised: the softened teacher
    kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # (B,)
    gold = labels.ne(NO_GOLD)
    ce = F.cross_entropy(logits.float(), labels.clamp(min=0), weight=class_weights, reduction="none") * gold
    return (alpha * t * t * kl + (1 - alpha) * ce).mean()


class TaughtDataset(torch.utils.data.Dataset):
    """A VEDataset whose examples also carry the teacher's (3,) log-probabilities."""

    def __init__(self, rows: VEDataset, teacher_log_probs: torch.Tensor):
        assert len(rows) == len(teacher_log_probs), f"{len(rows)} rows, {len(teacher_log_probs)} teacher answers"
        self.rows, self.teacher = rows, teacher_log_probs

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], "teacher": self.teacher[i]}


@dataclass
class TaughtCollator(VECollator):
    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return {**super().__call__(items), "teacher_log_probs": torch.stack([item["teacher"] for item in items])}


class DistillTrainer(VETrainer):
    def __init__(self, *args, temperature: float, alpha: float, full_model_like: Path | None = None, **kwargs):
        """`full_model_like`: the student is trained whole and saved as a model folder in this checkpoint's layout
        (None: the student is a PEFT model, saved as an adapter)."""
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha, self.full_model_like = temperature, alpha, full_model_like

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, teacher = inputs.pop("labels"), inputs.pop("teacher_log_probs")
        logits = model(**inputs)  # (B, 3): entailment, contradiction, neutral
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = distillation_loss(logits, teacher.to(logits.device), labels, temperature=self.temperature,
                                 alpha=self.alpha, class_weights=weight)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.full_model_like is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            save_model(self.accelerator.unwrap_model(self.model), output_dir, like=self.full_model_like)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _issue_warnings_after_load(self, load_result) -> None:
        """A checkpoint in the hub layout may leave out the tied embeddings and the derived index buffers."""
        expected = {*TIED_EMBEDDINGS, *derived_buffers(self.model.config)} if self.full_model_like else set()
        missing = [k for k in load_result.missing_keys if k not in expected]
        if missing:
            logger.warning(f"Missing keys in the checkpoint loaded: {missing}")
        if load_result.unexpected_keys:
            logger.warning(f"Unexpected keys in the checkpoint loaded: {load_result.unexpected_keys}")
