"""`velora distill` on the command line: `velora train`'s flags (every one works here too), with the student in
place of the base model, plus the teacher, the loss's temperature and weight, and the unlabelled rows."""

from __future__ import annotations

import click

from velora.train.cli import TrainCommand, config_option, config_options, given_flags, help_all_option

DISTILL_FLAGS = ["teacher", "model_name_or_path", "temperature", "alpha", "unlabeled_file",
                 "lora_r", "train_resnet", "test_file", "teacher_batch_size", "report_latency_runs", "report_onnx"]


class DistillCommand(TrainCommand):
    lead_sections = {"Distillation": DISTILL_FLAGS}

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not any(p.name == "output_dir" for p in self.params):
            from velora.distill.config import DistillConfig  # deferred: transformers takes seconds to import

            self.params.extend(config_options(DistillConfig))
        return super().get_params(ctx)


@click.command("distill", cls=DistillCommand)
@config_option
@help_all_option
@click.pass_context
def distill_command(ctx: click.Context, config: str | None, **values):
    """Teach a smaller OFA student what a fine-tuned teacher does on your data, for the edge: KL divergence to the
    teacher's probabilities (softened by --temperature) plus cross-entropy on the gold labels (--alpha weighs
    them). The teacher's answers are computed once and cached in OUTPUT_DIR. Checkpoints, resume, evaluation and
    logs are `velora train`'s; OUTPUT_DIR is a normal velora model (predict, eval, serve, export onnx) with
    distill_report.json: student vs teacher accuracy, agreement, calibration, size, GFLOP and latency.

    \b
    Examples:
      velora distill --teacher ./lora_finetuned --student ./ofa_tiny \\
          --dataset_name ./data/hf_dataset --output_dir ./student
      velora distill ... --unlabeled_file ./data/more_pictures.csv --temperature 2 --alpha 0.5
      velora distill ... --student_lora_r 16          # a LoRA adapter on a larger student
      velora distill ... --resume_from_checkpoint auto
    """
    from velora.distill.recipe import distill  # deferred: transformers, peft and datasets take seconds to import
    from velora.distill.config import load_distill_config  # deferred: imports transformers

    return distill(load_distill_config(config, given_flags(ctx, values)))
