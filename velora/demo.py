"""`velora demo`: the main job end to end on a built-in synthetic task, offline, in minutes on a CPU.

    1. data     pictures of coloured shapes whose labels follow from what is drawn (velora.synthetic): task B to
                train on, converted by `velora convert`, and a held-out test CSV of other pictures
    2. base     the OFA checkpoint given by --model_path / VELORA_MODEL or found in the hub cache; without one, a
                small OFA built here: random weights taught the related task A with `velora train` (a wide LoRA)
                and `velora merge`, cached for re-runs
    3. train    `velora train`: LoRA on task B, the best adapter by validation macro-F1
    4. eval     `velora eval --compare_base` on the held-out test CSV: base (adapter off) vs tuned
    5. predict  one held-out example, with the base model's answer beside it
    6. summary  the gain, as measured in step 4

Every stage is velora's own (convert, train, merge, Predictor, evaluate, predict), and every number printed is
measured, whatever it comes out as.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch

from velora.bundle import ModelBundle, save_model_dir
from velora.convert import convert
from velora.data import load_examples, metadata_of
from velora.evaluate import evaluate
from velora.hub import DEFAULT_MODEL_ID, find_cached
from velora.merge import merge_lora
from velora.ofa import OFAConfig, OFAModel
from velora.ofa.checkpoint import randomize_
from velora.ofa.processor import OFAProcessor
from velora.predict import predict
from velora.predictor import Predictor
from velora.synthetic import TASKS, write_task
from velora.train import train

# The small OFA built when no checkpoint is given: OFA's architecture, scaled down to train in minutes on 2 cores.
SMALL_OFA = dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, resnet_type="resnet18",
                 dropout=0.0)
BASE_RECIPE_FILE = "velora_demo_base.json"  # how the cached small base was made; another recipe rebuilds it
KIND_WORDS = {"exists": "what is there", "place": "where things are", "count": "how many",
              "unseen": "properties only the premise states", "outside": "what no picture can tell"}


@dataclass(frozen=True)
class Plan:
    """How big each stage is."""
    train_images: int  # task B pictures for `velora train` (convert holds out val_ratio of them for validation)
    test_images: int  # task B pictures for the base-vs-tuned test, never seen in training
    lora_steps: int
    lora_batch: int
    lora_lr: float
    image_size: int
    pretrain_images: int = 0  # task A pictures that teach the small base (small base only)
    pretrain_steps: int = 0
    val_ratio: float = 0.15
    seed: int = 0


PLANS = {
    ("small", "full"): Plan(train_images=1000, test_images=100, lora_steps=1500, lora_batch=16, lora_lr=3e-3,
                            image_size=128, pretrain_images=1000, pretrain_steps=1500),
    ("small", "quick"): Plan(train_images=24, test_images=8, lora_steps=4, lora_batch=8, lora_lr=3e-3,
                             image_size=64, pretrain_images=24, pretrain_steps=4),
    # OFA-large on a CPU: 256 px instead of 480 and a small task, to stay within minutes
    ("real", "full"): Plan(train_images=24, test_images=12, lora_steps=30, lora_batch=4, lora_lr=5e-4,
                           image_size=256),
    ("real", "quick"): Plan(train_images=8, test_images=4, lora_steps=2, lora_batch=2, lora_lr=5e-4,
                            image_size=256),
}


@dataclass
class DemoResult:
    base: str  # "given" (a checkpoint given or found in the hub cache) or "small" (built here)
    base_model: str
    adapter: str
    test_csv: str
    test_examples: int
    base_accuracy: float
    tuned_accuracy: float
    base_macro_f1: float
    tuned_macro_f1: float
    by_kind: dict
    seconds: float

    @property
    def gain(self) -> float:
        return self.tuned_accuracy - self.base_accuracy


def _say(text: str = "") -> None:
    click.echo(text)


def _stage(number: int, title: str) -> None:
    _say("")
    _say(click.style(f"[{number}/6] {title}", bold=True))


def _task_words(task: str) -> str:
    return ", ".join(KIND_WORDS[kind] for kind in TASKS[task])


# ----------------------------------------------------------------------------------------------------------------
# 1. Data


def make_task(folder: Path, task: str, n_images: int, seed: int, val_ratio: float | None = None) -> Path:
    """FOLDER/NAME.csv of `task` (and, with `val_ratio`, its `velora convert` dataset FOLDER/dataset)."""
    csv_path = write_task(folder, task, n_images, seed, name=folder.name)
    _say(f"  {csv_path}: {n_images} pictures of task {task} ({_rows(csv_path)} rows)")
    if val_ratio is None:
        return csv_path
    report = convert(csv_path, folder / "dataset", val_ratio=val_ratio, seed=seed, overwrite=True)
    splits = ", ".join(f"{split} {s['rows']} rows / {s['images']} pictures" for split, s in report.splits.items())
    _say(f"  velora convert -> {folder / 'dataset'} ({splits})")
    return folder / "dataset"


def _rows(csv_path: Path) -> int:
    with open(csv_path, encoding="utf-8") as f:
        return sum(1 for _ in f) - 1


# ----------------------------------------------------------------------------------------------------------------
# 2. Base model


def find_checkpoint(model_path: str | None) -> Path | None:
    """The OFA to build on: `model_path` if given, else the hub cache's copy of the default model, else None."""
    if model_path:
        return ModelBundle.resolve_base(model_path, advice="the demo needs a full OFA model directory as its "
                                                           "base").base_dir
    return find_cached(DEFAULT_MODEL_ID)


def base_recipe(plan: Plan) -> dict:
    return {"config": SMALL_OFA, "image_size": plan.image_size, "task": "A", "images": plan.pretrain_images,
            "steps": plan.pretrain_steps, "seed": plan.seed, "recipe": 2}


def cached_small_base(base_dir: Path, plan: Plan) -> dict | None:
    """What an earlier run recorded, when `base_dir` holds a small base made with this very recipe."""
    try:
        record = json.loads((base_dir / BASE_RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("recipe") == base_recipe(plan) else None


def build_small_base(work: Path, base_dir: Path, plan: Plan) -> dict:
    """Random weights, then task A taught through velora's own stages: `velora train` with a wide LoRA (every
    linear layer of the transformer, rank 32) and `velora merge` into a plain model directory."""
    torch.manual_seed(plan.seed)
    random_dir = save_model_dir(randomize_(OFAModel(OFAConfig(**SMALL_OFA)), seed=plan.seed).eval(),
                                OFAProcessor.default(image_size=plan.image_size), work / "random_ofa")
    _say(f"  Random-weight small OFA: {random_dir}")
    task_a = make_task(work / "task_a", "A", plan.pretrain_images, plan.seed + 2, val_ratio=0.1)
    settings = lora_settings(random_dir, task_a, work / "task_a_lora", plan, given=False) | {
        "max_steps": plan.pretrain_steps, "lora_r": 32, "lora_alpha": 32, "lora_dropout": 0,
        "lora_target_modules": "q_proj,k_proj,v_proj,out_proj,fc1,fc2", "save_steps": max(plan.pretrain_steps // 2, 1),
        "logging_steps": max(plan.pretrain_steps // 4, 1)}
    _say("  velora train " + as_flags(settings))
    metrics = train(settings).metrics
    merged = merge_lora(work / "task_a_lora", base_dir, overwrite=True)
    _say(f"  velora merge -> {merged.output_dir}")
    final = metrics["final"]
    record = {"recipe": base_recipe(plan), "task_a_validation": {
        "examples": final.get("examples"), "accuracy": final["accuracy"], "macro_f1": final["macro_f1"]}}
    (base_dir / BASE_RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def small_base(output: Path, plan: Plan) -> Path:
    base_dir = output / "small_ofa"
    record = cached_small_base(base_dir, plan)
    if record is not None:
        _say(f"  Reusing the small OFA built by an earlier run: {base_dir} (delete it to build it again)")
    else:
        _say(f"  Building a small OFA (d_model {SMALL_OFA['d_model']}, {SMALL_OFA['encoder_layers']}+"
             f"{SMALL_OFA['decoder_layers']} layers, {SMALL_OFA['resnet_type']} stem) and teaching it task A "
             f"({_task_words('A')})")
        record = build_small_base(output / "small_ofa_build", base_dir, plan)
    v = record["task_a_validation"]
    _say(f"  Small base on task A validation: accuracy {v['accuracy']:.1%}, macro-F1 {v['macro_f1']:.3f}")
    return base_dir


# ----------------------------------------------------------------------------------------------------------------
# 3-5. Train, evaluate, predict


def lora_settings(base: Path, dataset: Path, output: Path, plan: Plan, given: bool) -> dict:
    """The `velora train` settings of the LoRA stage: the guide's defaults, sized by `plan`."""
    every = max(plan.lora_steps // 4, 1)
    settings = {"model_name_or_path": str(base), "dataset_name": str(dataset), "output_dir": str(output),
                "overwrite_output_dir": True, "max_steps": plan.lora_steps,
                "per_device_train_batch_size": plan.lora_batch, "learning_rate": plan.lora_lr,
                "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "save_steps": every, "save_total_limit": 1,
                "logging_steps": max(plan.lora_steps // 20, 1), "report_to": "none", "seed": plan.seed}
    return settings | ({"image_size": plan.image_size} if given else {})


def as_flags(settings: dict) -> str:
    """The command line that runs `settings` (what the demo shows)."""
    return " ".join(f"--{name}" if value is True else f"--{name} {value}" for name, value in settings.items())


def pick_example(test_csv: Path) -> dict:
    """The first held-out row of a kind task A never had (else the first row): fixed before any model answers."""
    new_kinds = set(TASKS["B"]) - set(TASKS["A"])
    with open(test_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row = next((r for r in rows if r["kind"] in new_kinds), rows[0])
    return {**row, "image_path": str(test_csv.parent / row["image_path"])}


def accuracy_by_kind(examples, result) -> dict:
    """Base and tuned accuracy for each kind of hypothesis (the test CSV's `kind` column), from `result`'s
    per-example predictions."""
    columns = {"metadata": examples.dataset["metadata"]}
    kinds = [metadata_of(columns, i).get("kind", "?") for i in range(len(examples))]
    by_kind = {}
    for name in sorted(set(kinds)):
        rows = [i for i, k in enumerate(kinds) if k == name]
        accuracy = lambda predictions: sum(predictions[i] == examples.labels[i] for i in rows) / len(rows)  # noqa: E731
        by_kind[name] = {"examples": len(rows), "base_accuracy": accuracy(result.base_predictions),
                         "tuned_accuracy": accuracy(result.predictions)}
    return by_kind


# ----------------------------------------------------------------------------------------------------------------
# The demo


def run_demo(output_dir: str | Path = "demo_output", quick: bool = False, model_path: str | None = None,
             small: bool = False) -> DemoResult:
    started = time.monotonic()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    given_dir = None if small else find_checkpoint(model_path)
    kind = "given" if given_dir is not None else "small"
    plan = PLANS[("real" if given_dir is not None else "small", "quick" if quick else "full")]
    _say(click.style("velora demo: LoRA-adapt OFA visual entailment to a new task, end to end, offline", bold=True))
    if given_dir is not None:
        _say(f"Base model: the OFA checkpoint at {given_dir}. On a CPU OFA-large is slow, so this run uses "
             f"{plan.image_size} px pictures (480 in the released recipe) and a small task: "
             f"{plan.train_images} training pictures, {plan.lora_steps} LoRA steps.")
    else:
        _say("Base model: no OFA checkpoint given or in the hub cache (set VELORA_MODEL or pass --model_path DIR), "
             "so the demo builds a SMALL OFA here and teaches it a related task first. It is NOT the released "
             "OFA-large: the numbers show the pipeline at work, not what OFA-large would reach.")

    _stage(1, "Data: synthetic pictures whose labels follow from what is drawn")
    data = output / "data"
    train_set = make_task(data / "task_b_train", "B", plan.train_images, plan.seed, val_ratio=plan.val_ratio)
    test_csv = make_task(data / "task_b_test", "B", plan.test_images, plan.seed + 1)

    _stage(2, "Base model")
    base_dir = given_dir if given_dir is not None else small_base(output, plan)
    _say(f"  {base_dir}")

    _stage(3, f"velora train: LoRA on task B ({_task_words('B')})")
    adapter_dir = output / "lora_finetuned"
    settings = lora_settings(base_dir, train_set, adapter_dir, plan, given_dir is not None)
    _say("  velora train " + as_flags(settings))
    train(settings)

    _stage(4, "velora eval --compare_base on the held-out test set")
    predictor = Predictor.from_pretrained(adapter_dir)
    examples = load_examples(test_csv)
    result = evaluate(predictor, examples, compare_base=True, progress=True)
    result.save_text(output / "eval_report.txt")
    result.save_json(output / "eval.json")
    result.plot(output / "confusion_matrix.png")
    _say(result.to_text())
    by_kind = accuracy_by_kind(examples, result)

    _stage(5, "velora predict --compare_base on one held-out example")
    example = pick_example(test_csv)
    shown = predict(predictor, example["image_path"], example["premise"], example["hypothesis"], compare_base=True)
    _say(shown.to_text())
    _say(f"Gold label: {example['label']}")

    demo = DemoResult(
        base=kind, base_model=str(base_dir), adapter=str(adapter_dir), test_csv=str(test_csv),
        test_examples=result.metrics.examples, base_accuracy=result.base_metrics.accuracy,
        tuned_accuracy=result.metrics.accuracy, base_macro_f1=result.base_metrics.macro_avg["f1"],
        tuned_macro_f1=result.metrics.macro_avg["f1"], by_kind=by_kind, seconds=time.monotonic() - started)
    summary = summary_text(demo, output)
    (output / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    (output / "summary.json").write_text(json.dumps({**asdict(demo), "gain": demo.gain}, indent=2) + "\n",
                                         encoding="utf-8")
    _stage(6, "Summary")
    _say(summary)
    return demo


def summary_text(demo: DemoResult, output: Path) -> str:
    which = ("the OFA checkpoint given" if demo.base == "given"
             else "a small OFA built here and taught task A (not the released OFA-large)")
    points = 100 * demo.gain
    verdict = ("LoRA improved the held-out accuracy" if points >= 5 else
               "the gain is small" if points > 0 else "LoRA did not improve the held-out accuracy")
    lines = [
        f"Base model:      {which}",
        f"                 {demo.base_model}",
        f"LoRA adapter:    {demo.adapter}",
        f"Held-out test:   {demo.test_examples} examples of task B on pictures never used in training "
        f"({demo.test_csv})",
        f"Accuracy:        base {demo.base_accuracy:.1%} -> tuned {demo.tuned_accuracy:.1%} ({points:+.1f} points: "
        f"{verdict})",
        f"Macro-F1:        base {demo.base_macro_f1:.3f} -> tuned {demo.tuned_macro_f1:.3f}",
        "By kind of hypothesis (accuracy, base -> tuned):",
    ]
    for name, k in demo.by_kind.items():
        lines.append(f"  {name:<10} {k['base_accuracy']:>6.1%} -> {k['tuned_accuracy']:>6.1%}   "
                     f"({k['examples']} examples: {KIND_WORDS.get(name, name)})")
    lines += [
        f"Reports:         {output / 'eval_report.txt'}, {output / 'eval.json'}, {output / 'confusion_matrix.png'}, "
        f"{Path(demo.adapter) / 'training_curve.png'}",
        f"Try:             velora predict --model_path {demo.adapter} --image IMG --premise ... --hypothesis ... "
        "--compare_base",
        f"Time:            {demo.seconds / 60:.1f} min",
    ]
    return "\n".join(lines)
