"""The frozen ResNet's image features, computed once for a whole sweep.

Every run of a sweep trains LoRA weights on the same base model, image size and data, so the features of its
images are the same in every run (the ResNet is frozen and its BatchNorm stays in eval mode). They are computed by
the first run, kept in memory for the next ones, and saved in SWEEP/image_features/KEY.safetensors, so a resumed
sweep does not compute them again. KEY covers everything the features depend on: the ResNet's weights, the
preprocessing (image size, mean/std) and the data (the rows' fingerprint, which fixes the images' order).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from velora.train.data import ImageStore

FOLDER = "image_features"


def feature_key(model: torch.nn.Module, store: ImageStore, data_fingerprint: str) -> str:
    """What the features of `store`'s images depend on, as a short hash."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in model.state_dict().items():
        if ".embed_images." in f".{name}":
            digest.update(name.encode("utf-8"))
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(store.processor.config.to_dict(), sort_keys=True, default=str).encode("utf-8"))
    digest.update(data_fingerprint.encode("utf-8"))
    return digest.hexdigest()


class SharedImageFeatures:
    """Image features by key: in memory for this process, on disk under `folder` for the next one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.loaded: dict[str, torch.Tensor] = {}
        self.computed = 0  # how many times the ResNet ran over the images in this process

    def fill(self, store: ImageStore, model: torch.nn.Module, device: torch.device, data_fingerprint: str) -> None:
        """Set `store.features`: from memory, else from disk, else computed now (and saved)."""
        key = feature_key(model, store, data_fingerprint)
        path = self.folder / f"{key}.safetensors"
        if key not in self.loaded and path.exists():
            self.loaded[key] = load_file(path)["features"]
            print(f"Image features: loaded from {path} (computed earlier in this sweep)")
        if key in self.loaded:
            store.features = self.loaded[key]
            return
        store.cache_features(model, device)
        self.computed += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file({"features": store.features.contiguous()}, partial)
        os.replace(partial, path)  # whole or absent: a kill never leaves half a file under the key's name
        self.loaded[key] = store.features
        print(f"Image features: computed once for the sweep, saved in {path}")
