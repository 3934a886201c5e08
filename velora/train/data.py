"""Training data: a converted dataset's splits become tokenised prompts plus row indexes into the Arrow datasets,
and a collator batches them for `OFAForVisualEntailment.forward`.

Images stay in the Arrow dataset: each distinct image (deduplicated by content across splits) is remembered as the
(split, row) to read it from, and its bytes are read when a batch or the feature cache needs them. The ResNet is
frozen and its BatchNorm stays in eval mode, so an image's features are the same in every epoch: by default they are
computed once per distinct image before training and reused (the largest saving on CPU).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from velora.data import image_source
from velora.errors import VeloraError
from velora.labels import LABELS, normalize_label
from velora.ofa.model import OFAModel
from velora.ofa.processor import OFAProcessor

READ_ROWS = 256  # rows read from Arrow at a time while indexing (bounds memory whatever the dataset's size)


def _image_bytes(image) -> bytes:
    source = image_source(image)
    return source if isinstance(source, bytes) else Path(source).read_bytes()


@dataclass
class ImageStore:
    """Distinct images, as (split, row) places in the Arrow datasets, or as cached ResNet features."""

    processor: OFAProcessor
    splits: dict[str, object] = field(default_factory=dict)  # split name -> datasets.Dataset of its image column
    places: list[tuple[str, int]] = field(default_factory=list)  # distinct image -> (split, row) holding it
    features: torch.Tensor | None = None  # (N_images, 1024, h, w) when cached

    def __len__(self) -> int:
        return len(self.places)

    @property
    def input_name(self) -> str:
        return "image_features" if self.features is not None else "patch_images"

    def read(self, index: int) -> bytes | str:
        split, row = self.places[index]
        return image_source(self.splits[split][row]["image"])

    def batch(self, indices: list[int]) -> torch.Tensor:
        if self.features is not None:
            return self.features[indices]
        return self.processor.pixel_values([self.read(i) for i in indices])

    @torch.inference_mode()
    def cache_features(self, model: OFAModel, device: torch.device, batch_size: int = 8, progress: bool = True
                       ) -> None:
        """Run the (frozen, eval-mode) ResNet once over every distinct image."""
        was_training = model.training
        model.eval()
        dtype = next(model.parameters()).dtype
        chunks = []
        for start in tqdm(range(0, len(self), batch_size), desc="Image features (computed once)", unit="batch",
                          disable=not progress):
            pixels = self.batch(list(range(start, min(start + batch_size, len(self)))))
            chunks.append(model.image_features(pixels.to(device, dtype)).float().cpu())
        self.features = torch.cat(chunks) if chunks else torch.empty(0)
        model.train(was_training)


class VEDataset(torch.utils.data.Dataset):
    """(prompt token ids, image index, label index) per example; `keys` tells duplicates apart across sources."""

    def __init__(self, prompts: list[list[int]], images: list[int], labels: list[int],
                 keys: list[tuple] | None = None):
        self.prompts, self.images, self.labels = prompts, images, labels
        self.keys = keys if keys is not None else [()] * len(prompts)  # (image content, premise, hypothesis)

    def subset(self, rows: list[int]) -> "VEDataset":
        return VEDataset([self.prompts[i] for i in rows], [self.images[i] for i in rows],
                         [self.labels[i] for i in rows], [self.keys[i] for i in rows])

    @classmethod
    def joined(cls, parts: list["VEDataset"]) -> "VEDataset":
        return cls([p for d in parts for p in d.prompts], [i for d in parts for i in d.images],
                   [label for d in parts for label in d.labels], [k for d in parts for k in d.keys])

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": self.prompts[i], "image": self.images[i], "label": self.labels[i]}

    def label_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {label: counts[i] for i, label in enumerate(LABELS)}


@dataclass
class VECollator:
    store: ImageStore

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """The keyword arguments of OFAForVisualEntailment.forward, plus `labels`."""
        text = self.store.processor.collate([item["prompt"] for item in items])
        return {
            **text.model_inputs(),
            self.store.input_name: self.store.batch([item["image"] for item in items]),
            "labels": torch.tensor([item["label"] for item in items]),
        }


@dataclass
class TrainingData:
    train: VEDataset
    validation: VEDataset | None  # None when the dataset has no (or an empty) validation split
    store: ImageStore
    source: str
    fingerprint: str  # of every row's image content, texts and label: the same data gives the same fingerprint
    note: str | None = None  # what combining several sources did (duplicates removed, labels overridden)

    def summary(self) -> dict[str, dict[str, int]]:
        """Rows per label of each split."""
        splits = {"train": self.train, "validation": self.validation}
        return {name: split.label_counts() for name, split in splits.items() if split is not None}


def _label_map(split, split_name: str) -> list[int]:
    """ClassLabel id -> index in LABELS (velora convert writes them in LABELS order; other orders are mapped)."""
    names = getattr(split.features["label"], "names", None)
    if names is None:
        raise VeloraError(f"{split_name} split: 'label' is not a ClassLabel; convert the data with `velora convert`")
    return [LABELS.index(normalize_label(name)) for name in names]


def index_split(split, split_name: str, store: ImageStore, seen: dict[str, int], digest) -> VEDataset:
    """Tokenise one split and register its images (deduplicated by content across splits) in `store`, reading the
    Arrow data a few hundred rows at a time; every row also goes into `digest` (the data's fingerprint)."""
    from datasets import Image  # deferred: datasets takes ~1 s to import

    split = split.cast_column("image", Image(decode=False))
    store.splits[split_name] = split.select_columns(["image"])
    to_label = _label_map(split, split_name)
    prompts, images, labels, keys = [], [], [], []
    for start in range(0, len(split), READ_ROWS):
        rows = split[start:start + READ_ROWS]
        premises = rows.get("premise") or [None] * len(rows["image"])
        for offset, (image, premise, hypothesis, label) in enumerate(
                zip(rows["image"], premises, rows["hypothesis"], rows["label"])):
            row = start + offset
            key = hashlib.blake2b(_image_bytes(image), digest_size=16).hexdigest()
            if key not in seen:
                seen[key] = len(store.places)
                store.places.append((split_name, row))
            try:
                prompts.append(store.processor.encode_text(hypothesis, premise))
            except VeloraError as e:
                raise VeloraError(f"{split_name} split, row {row}: {e}") from None
            images.append(seen[key])
            labels.append(to_label[label])
            keys.append((key, premise or "", hypothesis))
            digest.update(repr((split_name, key, premise, hypothesis, LABELS[labels[-1]])).encode("utf-8"))
    return VEDataset(prompts, images, labels, keys)


def build_training_data(sources, processor: OFAProcessor, source: str | None = None) -> TrainingData:
    """The train and validation splits of a `velora convert` DatasetDict, or of several (name, DatasetDict)
    sources, indexed for training. A row of one source that a later source holds too (same picture, premise and
    hypothesis) is left out: the later source wins, on a conflicting label as well."""
    if not isinstance(sources, (list, tuple)):
        sources = [(source or "dataset", sources)]
    store, seen, digest = ImageStore(processor), {}, hashlib.blake2b(digest_size=16)
    indexed = []
    for name, dataset in sources:
        prefix = f"{name} " if len(sources) > 1 else ""
        splits = {split: index_split(dataset[split], prefix + split, store, seen, digest)
                  for split in ("train", "validation") if split in dataset and len(dataset[split])}
        indexed.append((name, splits))
    joined, note = combine_sources(indexed)
    names = source or " + ".join(name for name, _ in sources)
    return TrainingData(joined["train"], joined.get("validation"), store, names, digest.hexdigest(), note)


def combine_sources(indexed: list[tuple[str, dict[str, VEDataset]]]) -> tuple[dict[str, VEDataset], str | None]:
    """Each split of every source joined, without the rows a later source also holds; and a note saying what was
    left out (None for one source)."""
    last: dict[tuple, tuple[int, int]] = {}  # row key -> (the last source holding it, its label there)
    for number, (_, splits) in enumerate(indexed):
        for split in splits.values():
            last.update((key, (number, label)) for key, label in zip(split.keys, split.labels))
    joined: dict[str, list[VEDataset]] = {}
    counts = []
    for number, (name, splits) in enumerate(indexed):
        removed = conflicting = 0
        for split_name, split in splits.items():
            kept = [i for i, key in enumerate(split.keys) if last[key][0] == number]
            removed += len(split) - len(kept)
            conflicting += sum(last[split.keys[i]][1] != split.labels[i] for i in range(len(split))
                               if last[split.keys[i]][0] != number)
            joined.setdefault(split_name, []).append(split.subset(kept))
        counts.append(f"{name}: " + ", ".join(f"{s} {len(d)}" for s, d in splits.items())
                      + (f" ({removed} replaced by a later source, {conflicting} of them with another label)"
                         if removed else ""))
    if "train" not in joined:
        raise VeloraError("no training rows: every source's train split is empty")
    note = None if len(indexed) == 1 else (f"Training data from {len(indexed)} sources (a later source wins on a "
                                           f"duplicate): {'; '.join(counts)}")
    return {name: VEDataset.joined(parts) for name, parts in joined.items()}, note


def single_label(split: VEDataset | None) -> str | None:
    """The one label a split holds, if it holds only one."""
    present = {label for label, n in split.label_counts().items() if n} if split is not None else set()
    return present.pop() if len(present) == 1 else None


def class_weights(choice: str, labels: list[int]) -> torch.Tensor | None:
    """none | balanced (scikit-learn's inverse frequency; labels absent from the data weigh 0) | three
    comma-separated weights in LABELS order."""
    if choice in ("", "none"):
        return None
    if choice == "balanced":
        present = np.unique(labels)
        weights = np.zeros(len(LABELS))
        weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
        return torch.tensor(weights, dtype=torch.float32)
    try:
        weights = [float(w) for w in choice.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(LABELS) or min(weights, default=-1) < 0:
        raise VeloraError(f"--class_weights {choice!r}: use none, balanced, or three weights like 1,1,2 "
                          f"({', '.join(LABELS)})")
    return torch.tensor(weights)
