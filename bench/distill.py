"""`velora distill` measured on the demo task: can a student at ~1/4 of the teacher's FLOPs keep its accuracy?

    python bench/distill.py [--plan full|demo|quick] [--output_dir bench/.cache/distill] [--steps N]

Teacher: the demo's tuned model (the demo's small OFA, d_model 128 at 128 px, taught task A, plus `velora train`'s
LoRA on task B: `velora demo`'s stages 1-3; `--plan demo` with the demo's own sizes, ~30 min on a shared 2-core
machine; `--plan full` shortened to ~15 min). Student: OFA's architecture at d_model 64, ffn 128,
2+2 layers, at 64 px (~1/4 of the teacher's GFLOP: the ResNet stem dominates and scales with the pixels), random
weights taught task A first with the demo's own recipe (wide LoRA, merged), as a released OFA-tiny is pretrained.
The student is then fully fine-tuned on task B four ways, same steps, batch, learning rate and seed:

    gold          alpha 0: cross-entropy on the gold labels only
    distill       alpha 1: KL to the teacher only (temperature 2)
    both          alpha 0.5
    both+unlab.   alpha 0.5, plus --unlabeled_file: as many extra task B pictures again, without labels

Every number comes from the run's own distill_report.json (the demo's held-out test pictures as --test_file),
measured in this run on this machine; the teacher is scored once for all four (--teacher_cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from velora.bundle import save_model_dir
from velora.demo import PLANS, SMALL_OFA, lora_settings, make_task, small_base
from velora.distill.recipe import distill
from velora.merge import merge_lora
from velora.ofa import OFAConfig, OFAModel
from velora.ofa.checkpoint import randomize_
from velora.ofa.processor import OFAProcessor
from velora.synthetic import write_task
from velora.train import train

STUDENT_OFA = {**SMALL_OFA, "d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}
STUDENT_PX = 64
WAYS = {"gold": {"alpha": 0.0}, "distill": {"alpha": 1.0}, "both": {"alpha": 0.5},
        "both+unlabelled": {"alpha": 0.5, "unlabeled": True}}
GOALS = "accuracy kept >= 95% of the teacher's, latency <= 1/4 of the teacher's, and beating the gold-only student"


@dataclass(frozen=True)
class Plan:
    demo: str  # the demo's plan: "full" or "quick"
    train_images: int  # task B pictures (the demo's full plan: 1000)
    teacher_steps: int  # the teacher's LoRA steps on task B (the demo's full plan: 1500)
    pretrain_steps: int  # the student's task A pretraining (wide LoRA, as the demo's base)
    steps: int  # each of the four student runs
    batch: int
    learning_rate: float
    unlabeled_images: int
    latency_runs: int
    pretrain_images: int = 500  # task A pictures the student is pretrained on


# "full": the demo's full plan shortened (500 of its 1000 task B pictures, 300 of its 1500 LoRA steps) to fit ~15
# minutes on a 2-core machine shared with other jobs; "demo": the teacher exactly as `velora demo` trains it.
PLAN_SIZES = {"full": Plan("full", train_images=500, teacher_steps=300, pretrain_steps=300, steps=200, batch=16,
                           learning_rate=1e-3, unlabeled_images=500, latency_runs=20),
              "demo": Plan("full", train_images=1000, teacher_steps=1500, pretrain_steps=300, steps=300, batch=16,
                           learning_rate=1e-3, unlabeled_images=500, latency_runs=20),
              "quick": Plan("quick", train_images=24, teacher_steps=4, pretrain_steps=4, steps=4, batch=8,
                            learning_rate=1e-3, unlabeled_images=8, latency_runs=2, pretrain_images=24)}


def demo_plan(plan: Plan):
    """The demo's plan with this bench's task size and teacher steps."""
    return dataclasses.replace(PLANS[("small", plan.demo)], train_images=plan.train_images,
                               lora_steps=plan.teacher_steps)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def teacher_model(work: Path, plan: Plan) -> tuple[Path, Path, Path]:
    """The demo's data and tuned model: (task B dataset, held-out test CSV, the teacher adapter)."""
    demo = demo_plan(plan)
    data = work / "data"
    train_set = make_task(data / "task_b_train", "B", demo.train_images, demo.seed, val_ratio=demo.val_ratio)
    test_csv = make_task(data / "task_b_test", "B", demo.test_images, demo.seed + 1)
    base = small_base(work, demo)
    adapter = work / "teacher"
    if not (adapter / "adapter_model.safetensors").exists():
        train(lora_settings(base, train_set, adapter, demo, given=False))
    return train_set, test_csv, adapter


def pretrained_student(work: Path, plan: Plan) -> Path:
    """Random weights at the student's size, taught task A with the demo's recipe (wide LoRA, merged)."""
    merged = work / "student_base"
    if (merged / "config.json").exists():
        return merged
    demo = demo_plan(plan)
    random_dir = save_model_dir(randomize_(OFAModel(OFAConfig(**STUDENT_OFA)), seed=demo.seed).eval(),
                                OFAProcessor.default(image_size=STUDENT_PX), work / "student_random")
    task_a = make_task(work / "data" / "task_a", "A", plan.pretrain_images, demo.seed + 2, val_ratio=0.1)
    every = max(plan.pretrain_steps // 2, 1)
    train({"model_name_or_path": str(random_dir), "dataset_name": str(task_a), "output_dir": str(work / "student_a"),
           "overwrite_output_dir": True, "max_steps": plan.pretrain_steps, "per_device_train_batch_size": plan.batch,
           "learning_rate": 3e-3, "lora_r": 32, "lora_alpha": 32, "lora_dropout": 0.0,
           "lora_target_modules": "q_proj,k_proj,v_proj,out_proj,fc1,fc2", "save_steps": every,
           "save_total_limit": 1, "logging_steps": max(plan.pretrain_steps // 10, 1), "report_to": "none",
           "seed": demo.seed})
    merge_lora(work / "student_a", merged, overwrite=True)
    return merged


def student_runs(work: Path, plan: Plan, dataset: Path, test_csv: Path, teacher: Path, student: Path) -> dict:
    demo = demo_plan(plan)
    unlabeled = write_task(work / "data" / "unlabelled", "B", plan.unlabeled_images, demo.seed + 7)
    every = max(plan.steps // 2, 1)
    reports = {}
    for name, way in WAYS.items():
        out = work / "students" / name.replace("+", "_")
        started = time.monotonic()
        result = distill(
            teacher=str(teacher), student=str(student), dataset_name=str(dataset), output_dir=str(out),
            overwrite_output_dir=True, test_file=str(test_csv), teacher_cache=str(work / "teacher_cache.json"),
            unlabeled_file=str(unlabeled) if way.get("unlabeled") else None, alpha=way["alpha"], temperature=2.0,
            max_steps=plan.steps, per_device_train_batch_size=plan.batch, learning_rate=plan.learning_rate,
            save_steps=every, save_total_limit=1, logging_steps=max(plan.steps // 10, 1), report_to="none",
            seed=demo.seed, report_latency_runs=plan.latency_runs)
        reports[name] = {**result.report, "minutes": (time.monotonic() - started) / 60}
    return reports


def table(reports: dict) -> list[str]:
    first = next(iter(reports.values()))
    teacher_test = first["splits"]["test"]["teacher"]
    lines = [f"| student ({STUDENT_OFA['d_model']} d_model, {STUDENT_PX} px) | test accuracy | kept of teacher's | "
             "macro-F1 | agreement with teacher | ECE | GFLOP ratio | latency ratio, end to end | latency ratio, "
             "forward | minutes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        s, ratios = r["splits"]["test"]["student"], r["ratios"]
        lines.append(f"| {name} | {s['accuracy']:.1%} | {ratios['test_accuracy_kept']:.1%} | "
                     f"{s['macro_f1']:.3f} | {s['agreement_with_teacher']:.1%} | {s['ece']:.3f} | "
                     f"{ratios['gflop_per_example']:.3f} | {ratios['latency_ms_torch_fp32']:.3f} | "
                     f"{ratios.get('latency_ms_forward_fp32', float('nan')):.3f} | {r['minutes']:.1f} |")
    cost = first["cost"]["teacher"]
    lines.append(f"| teacher (demo's tuned model, 128 d_model, 128 px) | {teacher_test['accuracy']:.1%} | 100% | "
                 f"{teacher_test['macro_f1']:.3f} | 100% | {teacher_test['ece']:.3f} | 1 "
                 f"({cost['gflop_per_example']:.2f} GFLOP) | 1 ({cost['latency_ms_torch_fp32']:.1f} ms) | 1 "
                 f"({cost.get('latency_ms_forward_fp32', float('nan')):.1f} ms) | |")
    return lines


def verdict(reports: dict) -> list[str]:
    gold = reports["gold"]["splits"]["test"]["student"]["accuracy"]
    lines = [f"Goals: {GOALS}."]
    for name, r in reports.items():
        if name == "gold":
            continue
        kept, latency = r["ratios"]["test_accuracy_kept"], r["ratios"]["latency_ms_torch_fp32"]
        accuracy = r["splits"]["test"]["student"]["accuracy"]
        met = [kept >= 0.95, latency <= 0.25, accuracy > gold]
        lines.append(f"  {name}: kept {kept:.1%} ({'met' if met[0] else 'NOT met'}), latency x{latency:.3f} "
                     f"({'met' if met[1] else 'NOT met'}), vs gold-only {accuracy:.1%} vs {gold:.1%} "
                     f"({'met' if met[2] else 'NOT met'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / ".cache" / "distill"))
    parser.add_argument("--plan", choices=sorted(PLAN_SIZES), default="full",
                        help="full: ~15 min; demo: the teacher as `velora demo` trains it (~30 min); quick: toy sizes")
    parser.add_argument("--quick", action="store_true", help="= --plan quick: checks the script, measures nothing")
    parser.add_argument("--steps", type=int, default=None, help="steps of each student run (default: the plan's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a machine shared with other jobs, more only oversubscribe it)")
    parser.add_argument("--from_results", action="store_true",
                        help="print the tables of OUTPUT_DIR/distill_results.json (an earlier run) and stop")
    args = parser.parse_args()
    if args.from_results:
        reports = json.loads((Path(args.output_dir) / "distill_results.json").read_text())["reports"]
        print("\n".join(table(reports) + [""] + verdict(reports)))
        return
    plan = PLAN_SIZES["quick" if args.quick else args.plan]
    if args.steps:
        plan = dataclasses.replace(plan, steps=args.steps)
    torch.set_num_threads(args.threads)
    work = Path(args.output_dir)
    cached_base = Path(__file__).resolve().parent / ".cache" / "loop" / "small_ofa"  # the demo's, if bench/loop ran
    if not args.quick and cached_base.is_dir() and not (work / "small_ofa").exists():
        shutil.copytree(cached_base, work / "small_ofa")
    say(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; plan: {plan}")
    started = time.monotonic()
    dataset, test_csv, teacher = teacher_model(work, plan)
    say(f"teacher ready after {(time.monotonic() - started) / 60:.1f} min")
    student = pretrained_student(work, plan)
    say(f"student pretrained after {(time.monotonic() - started) / 60:.1f} min")
    reports = student_runs(work, plan, dataset, test_csv, teacher, student)
    lines = table(reports) + [""] + verdict(reports)
    lines.append(f"Total {(time.monotonic() - started) / 60:.1f} min; load average at the end "
                 f"{os.getloadavg()[0]:.1f} (a shared machine)")
    print("\n".join(lines))
    (work / "distill_results.json").write_text(json.dumps({"plan": plan.__dict__, "reports": reports}, indent=2)
                                               + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
