"""The configuration of one `velora distill` run: every `velora train` setting (TrainConfig), the student in place of
the base model, plus the teacher, the unlabelled rows and the loss's temperature and weight.

    loss = alpha * T^2 * KL(teacher_T || student_T)  +  (1 - alpha) * CE(student, gold)     (rows with gold)
    loss = alpha * T^2 * KL(teacher_T || student_T)                                        (--unlabeled_file rows)

alpha 1 is distillation only, alpha 0 gold labels only (the teacher is then not needed for training, but still
scored for the report's agreement). T^2 keeps the KL term's gradients on the cross-entropy's scale whatever T.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping


from velora.errors import VeloraError
from velora.train.config import CONFIG_ALIASES, TrainConfig, parse_settings, read_config_file

DISTILL_NAMES = {"student": "model_name_or_path", "student_lora_r": "lora_r"}


@dataclass
class DistillConfig(TrainConfig):
    """TrainConfig with the student as the model to train, fully by default (`lora_r` 0)."""

    # -- the two models --------------------------------------------------------------------------------------------
    teacher: str | None = field(default=None, metadata={
        "help": "The fine-tuned model to learn from: a LoRA adapter folder made by `velora train`, a merged model "
                "folder or a hub id. It keeps its own image size and preprocessing."})
    model_name_or_path: str | None = field(default=None, metadata={
        "aliases": ["--student"],
        "help": "The student: an OFA checkpoint (hub id or folder in the hub layout), usually smaller than the "
                "teacher; it keeps its own image size (--image_size overrides it)."})
    lora_r: int = field(default=0, metadata={
        "aliases": ["--student_lora_r"],
        "help": "0: the student is fully fine-tuned (its ResNet stays frozen unless --train_resnet); N: a LoRA "
                "adapter of rank N on the student instead (for a large student)."})
    train_resnet: bool = field(default=False, metadata={
        "help": "Fine-tune the student's ResNet stem too (slower: its image features can no longer be cached)."})
    # -- the loss ------------------------------------------------------------------------------------------------
    temperature: float = field(default=2.0, metadata={
        "help": "Softens both distributions in the KL term; higher shows the student more of the teacher's "
                "second choices."})
    alpha: float = field(default=0.5, metadata={
        "help": "Weight of the distillation term: 1 = the teacher only, 0 = gold labels only."})
    # -- more data -----------------------------------------------------------------------------------------------
    unlabeled_file: str | None = field(default=None, metadata={
        "help": "CSV/JSONL/Parquet of image_path,premise,hypothesis (the layouts `velora convert` reads, no label "
                "needed): extra rows the teacher labels."})
    test_file: str | None = field(default=None, metadata={
        "help": "Labelled CSV/JSONL or `velora convert` folder (every split) held out for the edge report, beside "
                "the validation split."})
    teacher_cache: str | None = field(default=None, metadata={
        "help": "The teacher's answers file (default: OUTPUT_DIR/teacher_probabilities.json); give one path to "
                "several runs with the same teacher (other students or settings) to score the teacher once."})
    teacher_batch_size: int = field(default=16, metadata={"help": "Rows per teacher batch when scoring once."})
    report_latency_runs: int = field(default=5, metadata={
        "help": "Timed runs per model for the edge report's latency (0: no latency)."})
    report_onnx: bool = field(default=False, metadata={
        "help": "Also export both models to int8 ONNX (velora export) and time them for the edge report."})
    output_dir: str = field(default="./student", metadata={"help": "Where the student and its reports go."})

    def __post_init__(self) -> None:
        if self.lora_r < 0:
            raise VeloraError(f"--student_lora_r {self.lora_r}: 0 (full fine-tuning) or a LoRA rank")
        if not 0.0 <= self.alpha <= 1.0:
            raise VeloraError(f"--alpha {self.alpha}: between 0 (gold labels only) and 1 (the teacher only)")
        if self.temperature <= 0:
            raise VeloraError(f"--temperature {self.temperature}: must be above 0 (1 = the plain probabilities)")
        super().__post_init__()

    @property
    def full_fine_tuning(self) -> bool:
        return self.lora_r == 0


def _distill_keys(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Settings under DistillConfig's names: the guide's keys as `velora train` reads them, except `alpha`, which is
    the distillation weight here (LoRA's is `lora_alpha`); `student` and `student_lora_r` too."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = DISTILL_NAMES.get(key) or (key if key == "alpha" else CONFIG_ALIASES.get(key, key))
        if name in out:
            raise VeloraError(f"{where}: {key!r} sets {name} a second time; keep one")
        out[name] = value
    return out


def load_distill_config(source: DistillConfig | Mapping[str, Any] | str | os.PathLike | None = None,
                        overrides: Mapping[str, Any] | None = None) -> DistillConfig:
    """A DistillConfig from `source` (one, returned as is; a dict of settings; a JSON config file) and `overrides`
    (command-line flags, which win)."""
    if isinstance(source, DistillConfig):
        return source
    from_file = isinstance(source, (str, os.PathLike))
    values = read_config_file(source) if from_file else _distill_keys(source or {}, "distill config")
    values.update(_distill_keys(overrides or {}, "flags"))
    for required, flag in (("teacher", "--teacher DIR"), ("model_name_or_path", "--student MODEL")):
        if not values.get(required):
            raise VeloraError(f"no {required.replace('model_name_or_path', 'student')}: pass {flag}")
    where = f"--config {source}" if from_file else "distill config"
    return parse_settings(DistillConfig, values, where, "velora distill")
