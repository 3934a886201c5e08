"""The student folder's README.md (what was distilled from what, and what it costs against its teacher) and the
end-of-run lines on the console: both read the metrics and the edge report, never measure anything themselves."""

from __future__ import annotations

from pathlib import Path

from velora.train.card import size_text

COST_ROWS = (("weights_bytes", "weights on disk (MB)", 1e-6), ("parameters", "parameters (M)", 1e-6),
             ("gflop_per_example", "GFLOP per example", 1.0),
             ("latency_ms_torch_fp32", "latency, torch fp32 (ms)", 1.0),
             ("latency_ms_forward_fp32", "the model's forward alone, fp32 (ms)", 1.0),
             ("onnx_int8_bytes", "int8 ONNX file (MB)", 1e-6), ("latency_ms_onnx_int8", "latency, int8 ONNX (ms)", 1.0))


def report_table(report: dict) -> list[str]:
    """Markdown rows: quality per split, then each cost, student vs teacher with the ratio."""
    rows = ["| | student | teacher | student / teacher |", "|---|---|---|---|"]
    for split, entry in report.get("splits", {}).items():
        s, t = entry["student"], entry["teacher"]
        rows += [f"| {split} accuracy ({entry['examples']} examples) | {s['accuracy']:.1%} | {t['accuracy']:.1%} | "
                 f"{report['ratios'].get(f'{split}_accuracy_kept', float('nan')):.2f} |",
                 f"| {split} macro-F1 | {s['macro_f1']:.3f} | {t['macro_f1']:.3f} | |",
                 f"| {split} agreement with the teacher | {s['agreement_with_teacher']:.1%} | | |",
                 f"| {split} calibration error (ECE) | {s['ece']:.3f} | {t['ece']:.3f} | |"]
    student, teacher = report["cost"]["student"], report["cost"]["teacher"]
    for key, name, scale in COST_ROWS:
        if key in student and key in teacher:
            rows.append(f"| {name} | {student[key] * scale:,.3g} | {teacher[key] * scale:,.3g} | "
                        f"{report['ratios'].get(key, float('nan')):.3f} |")
    return rows


def distill_card(output_dir: Path, config, metrics: dict, report: dict) -> str:
    out = str(output_dir)
    how = ("fully fine-tuned (ResNet stem " + ("trained)" if config.train_resnet else "frozen)")
           if config.full_fine_tuning else f"a LoRA adapter of rank {config.lora_r}")
    final = metrics.get("final") or {}
    lines = [
        "---", "library_name: velora", f"base_model: {metrics['student']}",
        "tags: [velora, ofa, visual-entailment, distillation]", "---", "",
        "# OFA visual-entailment student, distilled", "",
        f"Distilled with `velora distill` from the teacher `{config.teacher}` into the student "
        f"`{metrics['student']}` ({how}), at {metrics['image_size']} px.", "",
        "## Training", "",
        f"- loss: {config.alpha:g} x T^2 x KL(teacher || student) at temperature T = {config.temperature:g}, plus "
        f"{1 - config.alpha:g} x cross-entropy on the gold labels",
        f"- data: {metrics['data']}; {metrics['unlabeled_rows']} unlabelled rows labelled by the teacher",
        f"- learning rate {float(config.learning_rate):g}, effective batch {config.effective_batch}, "
        f"{metrics.get('train_steps')} steps, seed {config.seed}",
        f"- {metrics['selection']}",
        f"- validation accuracy {final.get('accuracy', float('nan')):.4f}, macro-F1 "
        f"{final.get('macro_f1', float('nan')):.4f}" if final else "- no validation split", "",
        "## Student vs teacher (distill_report.json, measured on the machine that trained it)", "",
        *report_table(report), "",
        "## Use", "", "```bash",
        f"velora predict --model_path {out} --image IMG --premise \"...\" --hypothesis \"...\"",
        f"velora eval --model_path {out} --test_file data/test_set.csv",
        f"velora export onnx --model_path {out} --output student.onnx --quantize int8", "```", "",
    ]
    return "\n".join(lines)


def summary_lines(output_dir: Path, metrics: dict, report: dict) -> list[str]:
    """The edge report as a table, the step kept, where the student is."""
    rows = [row for row in report_table(report) if not row.startswith("|---")]
    lines = ["", "Edge report (student vs teacher, " + str(output_dir / "distill_report.json") + "):"]
    lines += ["  " + " | ".join(cell.strip() for cell in row.strip("|").split("|")) for row in rows]
    size = size_text(output_dir / "model.safetensors") if (output_dir / "model.safetensors").exists() else None
    lines += [metrics["selection"],
              f"Student: {output_dir}" + (f" (model.safetensors {size})" if size else "") + "; teacher answers: "
              f"{metrics['teacher_rows']['scored']} scored, {metrics['teacher_rows']['from_cache']} from the cache",
              f"Try: velora predict --model_path {output_dir} --image IMG --premise ... --hypothesis ..."]
    return lines
