"""`velora distill`: a smaller OFA student taught by a fine-tuned teacher, on `velora train`'s recipe.

    setup:  `velora train`'s output folder, resume point and refusals, with the teacher, temperature, alpha and
            unlabelled file in the run's identity -> the data (+ --unlabeled_file rows, no gold label) -> the
            teacher's answers on every row, computed once and cached in OUTPUT_DIR -> the student, fully trainable
            (its ResNet frozen, features cached) or with a LoRA adapter -> the Trainer, with the distillation loss
    train:  as `velora train`: baseline at step 0 (the student as given), evaluation, best checkpoint by macro-F1,
            complete-or-not checkpoints, resume (only by the same run)
    save:   the student as a plain OFA model folder (or adapter) that predict/eval/serve/export read, metrics.json,
            training_curve.png, a model card, and the edge report (student vs teacher: accuracy, agreement,
            calibration, size, FLOPs, latency)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from transformers import TrainerCallback

from velora.bundle import ModelBundle
from velora.distill.card import distill_card, summary_lines
from velora.distill.config import DistillConfig, load_distill_config
from velora.data import ALL_SPLITS, ExampleSet, image_source, load_examples
from velora.distill.report import REPORT_NAME, Split, edge_report
from velora.distill.teacher import CACHE_NAME, Row, TeacherCache, image_digest, teacher_identity
from velora.distill.trainer import NO_GOLD, DistillTrainer, TaughtCollator, TaughtDataset
from velora.distill.unlabeled import UnlabeledRows, read_unlabeled
from velora.errors import VeloraError
from velora.io import is_within, write_atomic, write_json_atomic
from velora.labels import LABELS
from velora.ofa.checkpoint import weights_file
from velora.predict.inputs import file_identity
from velora.predictor import Predictor
from velora.train.card import adapter_file
from velora.train.data import VEDataset, class_weights
from velora.train.outputs import RUN_FILE, read_run_file
from velora.train.recipe import LoRARecipe, TrainResult, feature_cache_allowed, run_metrics, trainable_summary
from velora.train.report import plot_training_curve, selection_reason

UNLABELED = "unlabeled"  # the ImageStore "split" holding --unlabeled_file pictures
# What a distill run writes besides `velora train`'s names (the teacher cache is kept by --overwrite_output_dir:
# it is keyed by the teacher's identity, so it can only be reused by the same teacher)
DISTILL_OUTPUTS = ("config.json", "model.safetensors", "pytorch_model.bin", REPORT_NAME)


@dataclass
class DistillResult(TrainResult):
    report: dict | None = None  # distill_report.json: student vs teacher

    @property
    def model_dir(self) -> Path:
        return self.output_dir


def distill(config: DistillConfig | Mapping[str, Any] | str | os.PathLike | None = None,
            callbacks: Sequence[TrainerCallback] = (), **settings: Any) -> DistillResult | None:
    """Teach a student OFA the behaviour of a fine-tuned teacher; `config` (a DistillConfig, a dict, or a JSON file)
    and keyword `settings` (which win) hold `velora train`'s settings plus teacher, student, temperature, alpha,
    unlabeled_file, lora_r (0: the student is fully fine-tuned).

        velora.distill(teacher="lora_finetuned", student="ofa_tiny", dataset_name="data/hf_dataset",
                       output_dir="student")
    """
    return DistillRecipe(load_distill_config(config, settings), callbacks).run()


class DistillRecipe(LoRARecipe):
    config: DistillConfig

    # -- setup -----------------------------------------------------------------------------------------------------

    def setup_output(self) -> None:
        c, out = self.config, self.output_dir
        self.teacher = ModelBundle.resolve(c.teacher, flag="--teacher")
        for folder in filter(None, (self.teacher.base_dir, self.teacher.adapter_dir)):
            if is_within(out, folder):
                raise VeloraError(f"--output_dir {out}: is inside the teacher's folder {folder}; choose a new folder")
        super().setup_output()  # the student is the "base model": its bundle, the resume point, the refusals
        if self.first and read_run_file(out) is None:
            foreign = [name for name in (*DISTILL_OUTPUTS, CACHE_NAME) if (out / name).exists()]
            if foreign:
                raise VeloraError(f"--output_dir {out}: holds {', '.join(foreign)}, which velora did not write (no "
                                  f"{RUN_FILE}); choose a new or empty folder")
        self.teacher_id = teacher_identity(self.teacher)
        digest = hashlib.blake2b(json.dumps(self.teacher_id, sort_keys=True).encode(), digest_size=8).hexdigest()
        unlabeled = file_identity(c.unlabeled_file) if c.unlabeled_file else None
        self.identity.update(teacher=f"{c.teacher} ({digest})", temperature=c.temperature, alpha=c.alpha,
                             unlabeled_file=unlabeled, train_resnet=c.train_resnet)
        self.check_identity(["teacher", "temperature", "alpha", "unlabeled_file", "train_resnet"])

    def write_output_dir(self) -> None:
        super().write_output_dir()
        run = read_run_file(self.output_dir)
        run["outputs"] = [*run["outputs"], *DISTILL_OUTPUTS]
        write_json_atomic(self.output_dir / RUN_FILE, run)

    def setup_data(self) -> None:
        """`velora train`'s data, the unlabelled rows added to the training split, then the teacher's answers."""
        super().setup_data()
        c = self.config
        self.unlabeled = None
        if c.unlabeled_file:
            self.unlabeled = read_unlabeled(c.unlabeled_file, self.bundle.processor, image_root=c.image_root)
            self.add_unlabeled(self.unlabeled)
            print(self.unlabeled.summary())
        train_rows, val_rows = teacher_rows(self.data.train), teacher_rows(self.data.validation)
        self.test = load_examples(c.test_file, ALL_SPLITS) if c.test_file else None  # fails before any scoring
        self.test_rows = test_rows(self.test) if self.test is not None else []
        self.cache = TeacherCache(Path(c.teacher_cache) if c.teacher_cache else self.output_dir / CACHE_NAME,
                                  self.teacher_id)
        self.cache.fill(train_rows + val_rows + self.test_rows, self.teacher_predictor, c.teacher_batch_size,
                        load=lambda row: self.data.store.read(row.image) if isinstance(row.image, int) else row.image)
        self.teacher_train = self.cache.log_probs(train_rows)
        self.teacher_validation = self.cache.log_probs(val_rows) if val_rows else None

    def teacher_predictor(self) -> Predictor:
        print(f"Teacher: {self.teacher.description}")
        return Predictor.from_bundle(self.teacher, device=self.config.device)

    def add_unlabeled(self, extra: UnlabeledRows) -> None:
        """The unlabelled rows join the training split without a gold label; their pictures join the image store
        (a picture the dataset holds too is shared), and rows the dataset holds already are left out."""
        store, data = self.data.store, self.data
        splits = [s for s in (data.train, data.validation) if s is not None]
        picture = {key[0]: image for split in splits for key, image in zip(split.keys, split.images)}
        known = {key for split in splits for key in split.keys}
        files: list[dict] = []
        prompts, images, keys = [], [], []
        for row, prompt in zip(extra.rows, extra.prompts):
            key = (row.image_key, row.premise or "", row.hypothesis)
            if key in known:
                continue
            known.add(key)
            if row.image_key not in picture:
                picture[row.image_key] = len(store.places)
                store.places.append((UNLABELED, len(files)))
                files.append({"image": row.image})
            prompts.append(prompt)
            images.append(picture[row.image_key])
            keys.append(key)
        store.splits[UNLABELED] = files
        data.train = VEDataset.joined([data.train, VEDataset(prompts, images, [NO_GOLD] * len(prompts), keys)])

    def setup_model(self) -> None:
        """LoRA on the student (`--student_lora_r N`: the train recipe's own), or the whole student trainable
        except its ResNet stem (unless --train_resnet), in fp32."""
        c = self.config
        if not c.full_fine_tuning:
            return super().setup_model()
        self.model = self.peft_model = self.bundle.load_model().float()
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(c.train_resnet or ".embed_images." not in name)
        print(trainable_summary(self.model))
        if c.cache_image_features and feature_cache_allowed(self.model):
            self.cache_image_features()

    def make_trainer(self, **kwargs) -> DistillTrainer:
        c, data = self.config, self.data
        validation = data.validation
        kwargs.update(
            train_dataset=TaughtDataset(data.train, self.teacher_train),
            eval_dataset=TaughtDataset(validation, self.teacher_validation) if validation is not None else None,
            data_collator=TaughtCollator(data.store),
            class_weights=class_weights(c.class_weights, [y for y in data.train.labels if y != NO_GOLD]))
        return DistillTrainer(temperature=c.temperature, alpha=c.alpha,
                              full_model_like=self.bundle.base_dir if c.full_fine_tuning else None, **kwargs)

    # -- save ------------------------------------------------------------------------------------------------------

    def report_splits(self) -> list[Split]:
        """The validation split and --test_file, each with the teacher's answers from the cache."""
        splits = []
        validation = self.data.validation
        if validation is not None:
            rows = teacher_rows(validation)
            splits.append(Split("validation", [self.data.store.read(r.image) for r in rows],
                                [r.premise for r in rows], [r.hypothesis for r in rows],
                                [LABELS[y] for y in validation.labels], self.teacher_validation.exp()))
        if self.test is not None:
            rows = self.test_rows
            splits.append(Split("test", [r.image for r in rows], [r.premise for r in rows],
                                [r.hypothesis for r in rows], self.test.labels, self.cache.log_probs(rows).exp(),
                                source=self.test.source))
        return splits

    def save(self, trainer: DistillTrainer) -> DistillResult:
        """The best student (a model folder, or an adapter on the student), its preprocessing, metrics.json and the
        training curve; then the edge report and the model card."""
        out, state = self.output_dir, trainer.state
        trainer.save_model(str(out))
        self.bundle.processor.save_pretrained(out)
        metrics = run_metrics(state.log_history, state.best_model_checkpoint, state.global_step)
        kept = metrics["final"]["step"] if metrics["final"] else state.global_step
        metrics.update(student=self.bundle.base_reference, teacher=str(self.config.teacher),
                       image_size=self.bundle.processor.config.image_size, data=self.data.summary(),
                       unlabeled_rows=len(self.unlabeled.rows) if self.unlabeled else 0,
                       teacher_rows={"scored": self.cache.scored, "from_cache": self.cache.reused},
                       selection=selection_reason(state.log_history, kept, trainer.args.metric_for_best_model,
                                                  self.selection_note))
        write_json_atomic(out / "metrics.json", metrics)
        plot_training_curve(state.log_history, out / "training_curve.png")
        report = edge_report(out, self.teacher, self.report_splits(), self.config)
        write_atomic(out / "README.md", distill_card(out, self.config, metrics, report))
        for line in summary_lines(out, metrics, report):
            print(line)
        weights = weights_file(out) if self.config.full_fine_tuning else adapter_file(out)
        return DistillResult(out, weights, metrics, report)


def test_rows(examples: ExampleSet) -> list[Row]:
    """--test_file's examples as the teacher scores them."""
    rows = examples.rows(0, len(examples))
    images = [image_source(image) for image in rows["image"]]
    premises = rows.get("premise") or [None] * len(images)
    return [Row(image, image_digest(image), premise or None, hypothesis)
            for image, premise, hypothesis in zip(images, premises, rows["hypothesis"])]


def teacher_rows(split: VEDataset | None) -> list[Row]:
    """A split's examples as the teacher scores them: each picture by its index in the ImageStore."""
    if split is None:
        return []
    return [Row(image, key[0], key[1] or None, key[2]) for image, key in zip(split.images, split.keys)]

