"""Training data for `velora train`: a converted dataset becomes tokenised prompts plus one entry per distinct
image, and a collator batches them for `OFAModel.forward`.

The ResNet is frozen and its BatchNorm stays in eval mode, so an image's features are the same in every epoch:
by default they are computed once before training and reused (the largest saving on CPU).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from velora.errors import VeloraError
from velora.labels import LABELS, normalize_label
from velora.ofa.model import OFAModel
from velora.ofa.processor import OFAProcessor


@dataclass
class ImageStore:
    """Distinct images, either as cached ResNet features or as encoded bytes decoded per batch."""

    processor: OFAProcessor
    encoded: list[bytes]
    features: torch.Tensor | None = None  # (N_images, 1024, h, w) when cached

    @property
    def input_name(self) -> str:
        return "image_features" if self.features is not None else "patch_images"

    def batch(self, indices: list[int]) -> torch.Tensor:
        if self.features is not None:
            return self.features[indices]
        return self.processor.pixel_values([self.encoded[i] for i in indices])

    @torch.inference_mode()
    def cache_features(self, model: OFAModel, device: torch.device, batch_size: int = 8) -> None:
        """Run the (frozen, eval-mode) ResNet once over every distinct image."""
        was_training = model.training
        model.eval()
        dtype = next(model.parameters()).dtype
        chunks = []
        for start in tqdm(range(0, len(self.encoded), batch_size), desc="Image features (computed once)",
                          unit="batch"):
            pixels = self.batch(list(range(start, min(start + batch_size, len(self.encoded)))))
            chunks.append(model.image_features(pixels.to(device, dtype)).float().cpu())
        self.features = torch.cat(chunks) if chunks else torch.empty(0)
        model.train(was_training)


class VEDataset(torch.utils.data.Dataset):
    """(prompt token ids, image index, label index) per example."""

    def __init__(self, prompts: list[list[int]], images: list[int], labels: list[int]):
        self.prompts, self.images, self.labels = prompts, images, labels

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": self.prompts[i], "image": self.images[i], "label": self.labels[i]}


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


def label_names(split, split_name: str) -> list[str]:
    """The dataset's label names, checked against velora's three labels."""
    feature = split.features.get("label")
    names = getattr(feature, "names", None)
    if names is None:
        raise VeloraError(f"{split_name} split: 'label' is not a ClassLabel; convert the data with `velora convert`")
    unknown = [n for n in names if normalize_label(n) is None]
    if unknown:
        raise VeloraError(f"{split_name} split: label set {names} does not match {list(LABELS)} "
                          f"(unknown: {unknown})")
    return [normalize_label(n) for n in names]


def build_split(split, split_name: str, store: ImageStore, image_index: dict[str, int]) -> VEDataset:
    """Tokenise one split and register its images (deduplicated by content across splits) in `store`."""
    names = label_names(split, split_name)
    missing = [c for c in ("image", "hypothesis", "label") if c not in split.column_names]
    if missing:
        raise VeloraError(f"{split_name} split lacks column(s) {missing}; convert the data with `velora convert`")
    from datasets import Image

    split = split.cast_column("image", Image(decode=False))
    prompts, images, labels = [], [], []
    premises = split["premise"] if "premise" in split.column_names else [None] * len(split)
    for row, (image, premise, hypothesis, label) in enumerate(
            zip(split["image"], premises, split["hypothesis"], split["label"])):
        data = image["bytes"] if image.get("bytes") else open(image["path"], "rb").read()
        key = hashlib.blake2b(data, digest_size=16).hexdigest()
        if key not in image_index:
            image_index[key] = len(store.encoded)
            store.encoded.append(data)
        try:
            prompts.append(store.processor.encode_text(hypothesis, premise))
        except VeloraError as e:
            raise VeloraError(f"{split_name} split, row {row}: {e}") from None
        images.append(image_index[key])
        labels.append(LABELS.index(names[label]))
    return VEDataset(prompts, images, labels)
