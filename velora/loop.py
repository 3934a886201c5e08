"""`velora demo --loop` and bench/loop.py: the guide's review loop (6.2) measured on the demo task, whose true
labels are known from the pictures.

    1. data      task B pictures (velora.synthetic) converted by `velora convert`; a held-out test CSV
    2. noise     a seeded share of the training split's labels flipped to another label (validation kept clean)
    3. train     the same `velora train` run on the clean and on the noisy data: the accuracy the noise costs
    4. mine      the noisy training rows ranked three ways: the noisy model's own probabilities (velora's
                 confidence rule, and cleanlab), and out-of-fold probabilities (k LoRA folds) with cleanlab
    5. review    a scripted reviewer answers from the true labels for the top K rows only (K = the budget),
                 through the review page's HTTP API; the same budget spent on K random rows is the baseline
    6. apply     `velora review --apply` for both; `velora train` again on each corrected dataset
    7. report    mining precision / recall in the top K, held-out accuracy clean vs noisy vs after one round, and
                 the share of the noise gap the round closed

Every number is measured in the run; nothing is assumed.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import torch

from velora.convert.dataset import quiet_datasets
from velora.data import load_examples, open_dataset, score_examples
from velora.demo import Plan, lora_settings, make_task, small_base
from velora.evaluate import evaluate
from velora.io import staged_dir
from velora.mine import list_hard, select_hard, select_label_issues
from velora.predictor import Predictor
from velora.review import DecisionStore, apply_review, load_review
from velora.review.app import create_review_app, serve_in_thread
from velora.train import train
from velora.train.folds import fold_config, out_of_fold_probabilities


@dataclass(frozen=True)
class LoopPlan:
    demo: Plan  # data and training sizes (the demo's), and the small base's recipe
    noise: float = 0.2  # share of training labels flipped
    noisy_splits: tuple[str, ...] = ("train",)  # ("train", "validation"): the checkpoint is chosen on noisy labels too
    budget: float = 0.1  # share of training rows a reviewer looks at
    folds: int = 4


LOOP_PLANS = {
    # sized for ~20 minutes on 2 CPU cores with the small base (built once and cached by `velora demo`)
    "full": LoopPlan(Plan(train_images=400, test_images=150, lora_steps=600, lora_batch=16, lora_lr=3e-3,
                          image_size=128, pretrain_images=1000, pretrain_steps=1500)),
    "quick": LoopPlan(Plan(train_images=24, test_images=8, lora_steps=4, lora_batch=8, lora_lr=3e-3, image_size=64,
                           pretrain_images=24, pretrain_steps=4), folds=2),
}


@dataclass
class LoopResult:
    train_rows: int
    flipped: int
    budget: int  # K
    test_examples: int
    mining: dict = field(default_factory=dict)  # way -> {found, precision, recall}
    accuracy: dict = field(default_factory=dict)  # clean / noisy / reviewed / random -> held-out accuracy
    reviewed_way: str = ""
    seconds: dict = field(default_factory=dict)

    def gap_closed(self, which: str) -> float | None:
        gap = self.accuracy["clean"] - self.accuracy["noisy"]
        return (self.accuracy[which] - self.accuracy["noisy"]) / gap if gap > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "gap_closed": {w: self.gap_closed(w) for w in ("reviewed", "random")}}

    def table(self) -> str:
        k = self.budget
        lines = [f"{self.train_rows} training rows, {self.flipped} labels flipped; review budget K = {k}; "
                 f"held-out test: {self.test_examples} examples", "",
                 "| way of picking the K rows | flipped labels in the top K | precision | recall |",
                 "|---|---:|---:|---:|"]
        lines += [f"| {way} | {m['found']} | {m['precision']:.1%} | {m['recall']:.1%} |"
                  for way, m in self.mining.items()]
        best = max((w for w in self.mining if w != "random"), key=lambda w: self.mining[w]["found"])
        random_found = self.mining["random"]["found"]
        ratio = f"{self.mining[best]['found'] / random_found:.1f}x" if random_found else "n/a (random found none)"
        lines += ["", f"Best mining ({best}) vs random review: {ratio} the flipped labels.", "",
                  "| training data | held-out accuracy | noise gap closed |", "|---|---:|---:|"]
        for which, name in (("clean", "clean labels"), ("noisy", f"{self.flipped} labels flipped"),
                            ("reviewed", f"after one round: top {k} by {self.reviewed_way}, reviewed"),
                            ("random", f"after one round: {k} random rows, reviewed")):
            closed = self.gap_closed(which) if which in ("reviewed", "random") else None
            lines.append(f"| {name} | {self.accuracy[which]:.1%} | "
                         f"{'' if closed is None else f'{closed:.0%}'} |")
        minutes = ", ".join(f"{k} {v / 60:.1f}" for k, v in self.seconds.items())
        return "\n".join(lines + ["", f"Minutes: {minutes}"])


def _say(text: str = "") -> None:
    click.echo(text)


def flip_labels(clean: Path, noisy: Path, share: float, seed: int, splits: tuple[str, ...] = ("train",)
                ) -> dict[str, str]:
    """A copy of the dataset `clean` at `noisy` with `share` of the labels of `splits` flipped to another label
    (seeded); returns the true label of every row of those splits, by source_row."""
    from datasets import DatasetDict, Image  # deferred: datasets takes ~1 s to import

    data, truth, rng = open_dataset(clean), {}, random.Random(seed)
    copy = dict(data)
    for name in splits:
        split = data[name].cast_column("image", Image(decode=False))
        names = split.features["label"].names
        truth.update({str(r): names[label] for r, label in zip(split["source_row"], split["label"])})
        flipped = set(rng.sample(range(len(split)), round(share * len(split))))

        def flip(labels, indices):
            return {"label": [rng.choice([x for x in range(len(names)) if x != label]) if i in flipped else label
                              for label, i in zip(labels, indices)]}

        copy[name] = split.map(flip, batched=True, with_indices=True, input_columns=["label"],
                               features=split.features, keep_in_memory=True).cast_column("image", Image())
    with staged_dir(noisy) as staged, quiet_datasets():
        DatasetDict(copy).save_to_disk(str(staged))
    return truth


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def scripted_review(url: str, truth: dict[str, str], k: int, examples: list[str] | None = None) -> int:
    """A reviewer who knows the true labels: through the page's API, the next K examples in review order (or the
    given `examples`), each kept or relabelled to its true label. Returns how many were relabelled."""
    relabelled = 0
    after = None
    for i in range(k):
        if examples is None:
            example = _get(f"{url}/api/next" + (f"?after={after}" if after else ""))["example"]
            if example is None:
                break
        else:
            example = _get(f"{url}/api/examples/{examples[i]}")
        true = truth[example["id"]]
        body = {"id": uuid.uuid4().hex, "example": example["id"], "action": "keep", "reviewer": "scripted"}
        if example["label"] != true:
            body.update(action="relabel", label=true)
            relabelled += 1
        _post(f"{url}/api/decisions", body)
        after = example["id"]
    return relabelled


def mining_quality(order: list[int], flipped: set[int], k: int) -> dict:
    found = len(set(order[:k]) & flipped)
    return {"found": found, "precision": found / k, "recall": found / len(flipped) if flipped else 0.0}


class Loop:
    """One measured run; each stage a method, in order (see the module docstring)."""

    def __init__(self, output: Path, plan: LoopPlan, base_root: Path, reuse: bool = False):
        self.output, self.plan, self.base_root, self.seconds = output, plan, base_root, {}
        self.reuse = reuse  # keep adapters an earlier run of the same plan trained (the data is made the same)
        self.data = output / "data"

    def timed(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started

    def train_and_test(self, name: str, dataset: Path) -> float:
        started = time.monotonic()
        settings = lora_settings(self.base, dataset, self.output / f"lora_{name}", self.plan.demo, given=False)
        if self.reuse and (Path(settings["output_dir"]) / "metrics.json").exists():
            _say(f"  reusing {settings['output_dir']}, trained by an earlier run of this plan")
        else:
            _say(f"  velora train --dataset_name {dataset} --output_dir {settings['output_dir']} ...")
            train(settings)
        predictor = Predictor.from_pretrained(settings["output_dir"])
        accuracy = evaluate(predictor, self.test).metrics.accuracy
        _say(f"  held-out accuracy ({name}): {accuracy:.1%}")
        self.timed("training", started)
        return accuracy

    def run(self) -> LoopResult:
        demo = self.plan.demo
        started = time.monotonic()
        clean = make_task(self.data / "task_b_train", "B", demo.train_images, demo.seed, val_ratio=demo.val_ratio)
        self.test = load_examples(make_task(self.data / "task_b_test", "B", demo.test_images, demo.seed + 1))
        noisy = self.data / "noisy_dataset"
        self.truth = flip_labels(clean, noisy, self.plan.noise, demo.seed, tuple(self.plan.noisy_splits))
        reviewed_split = "train" if tuple(self.plan.noisy_splits) == ("train",) else "all"
        self.base = small_base(self.base_root, demo)
        self.timed("data and base", started)
        examples = load_examples(noisy, reviewed_split)
        ids = [str(r) for r in examples.dataset["source_row"]]
        flipped = {i for i, (example, label) in enumerate(zip(ids, examples.labels)) if self.truth[example] != label}
        k = max(1, round(self.plan.budget * len(examples)))
        result = LoopResult(len(examples), len(flipped), k, len(self.test))
        _say(f"  {len(flipped)} of {len(examples)} training labels flipped; review budget K = {k}")

        result.accuracy["clean"] = self.train_and_test("clean", clean)
        result.accuracy["noisy"] = self.train_and_test("noisy", noisy)
        started = time.monotonic()
        model_probs = score_examples(Predictor.from_pretrained(self.output / "lora_noisy"), examples)
        oof_probs = out_of_fold_probabilities(fold_config(self.output / "lora_noisy"), examples.dataset,
                                              folds=self.plan.folds)
        self.timed("out-of-fold mining", started)
        orders = rankings(examples.labels, model_probs, oof_probs, demo.seed)
        result.mining = {way: mining_quality(order, flipped, k) for way, order in orders.items()}
        best = max((w for w in orders if w != "random"), key=lambda w: result.mining[w]["found"])
        result.reviewed_way = best
        probs = oof_probs if best.startswith("out-of-fold") else model_probs
        method = "model" if best == "model's own, confidence rule" else "out_of_fold"

        started = time.monotonic()
        mined = self.data / "hard_examples.csv"
        list_hard(examples, probs, mined, method=method, confidence_threshold=1.0, origin=noisy)
        reviewed = self.review(mined, load_review(mined), k, None, noisy.with_name("noisy_dataset-reviewed"))
        random_ids = [ids[i] for i in orders["random"][:k]]
        baseline = self.review(noisy, load_review(noisy, split=reviewed_split), k, random_ids,
                               noisy.with_name("noisy_dataset-random"))
        self.timed("review and apply", started)
        result.accuracy["reviewed"] = self.train_and_test("reviewed", reviewed)
        result.accuracy["random"] = self.train_and_test("random", baseline)
        result.seconds = self.seconds
        return result

    def review(self, source: Path, review, k: int, examples: list[str] | None, output: Path) -> Path:
        store = DecisionStore(output.with_suffix(".decisions.jsonl"))
        with serve_in_thread(create_review_app(review, store)) as url:
            relabelled = scripted_review(url, self.truth, k, examples)
        report = apply_review(source, decisions_file=store.path, output=output, overwrite=True)
        _say(f"  reviewed {k} rows of {source.name} through the page's API: {relabelled} relabelled -> {output}")
        return Path(report.output)


def rankings(labels: list[str], model_probs: torch.Tensor, oof_probs: torch.Tensor, seed: int) -> dict[str, list]:
    """Training rows in the order each way would have them reviewed."""
    everything = {"confidence_threshold": 1.0}
    order = random.Random(f"random-review-{seed}").sample(range(len(labels)), len(labels))  # not the noise's seed
    return {
        "model's own, confidence rule": [i for i, _ in select_hard(model_probs, labels, **everything)],
        "model's own, cleanlab": [i for i, _ in select_label_issues(model_probs, labels, **everything)],
        "out-of-fold, cleanlab": [i for i, _ in select_label_issues(oof_probs, labels, **everything)],
        "random": order,
    }


def run_loop(output_dir: str | Path = "demo_output", quick: bool = False, plan: LoopPlan | None = None,
             reuse: bool = False) -> LoopResult:
    """The measured loop (module docstring) in OUTPUT_DIR/loop, on the demo's small base (OUTPUT_DIR/small_ofa,
    built once); its table is printed and saved as OUTPUT_DIR/loop/loop.json and loop.md."""
    root = Path(output_dir)
    output = root / "loop"
    output.mkdir(parents=True, exist_ok=True)
    plan = plan or LOOP_PLANS["quick" if quick else "full"]
    _say(click.style("velora demo --loop: review, relabel, retrain, measured on the demo task", bold=True))
    result = Loop(output, plan, root, reuse).run()
    (output / "loop.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    (output / "loop.md").write_text(result.table() + "\n", encoding="utf-8")
    _say("")
    _say(result.table())
    return result

