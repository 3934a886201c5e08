"""Builders for the eval / mine / merge / export tests: small labelled CSVs with their images, and converted
datasets made from them by `velora convert`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from velora.labels import LABELS

HYPOTHESES = ["there is a dog.", "the sky is blue.", "a person is cooking dinner in a small kitchen.",
              "nothing is here.", "two cars race on a track.", "the cat sleeps."]


def noise_image(path: Path, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(path)
    return path


def write_labelled_csv(directory: Path, rows: int = 12, images: int = 4, name: str = "test.csv",
                       extra_column: bool = True) -> Path:
    """`rows` labelled examples over `images` distinct PNGs, labels cycling through LABELS; the images live in
    `directory/images/` and the CSV refers to them relative to itself (as the guide lays data out)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        noise_image(directory / "images" / f"img_{i}.png", seed=i)
    path = directory / name
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "premise", "hypothesis", "label"] + (["batch"] if extra_column else []))
        for i in range(rows):
            premise = "" if i % 4 == 3 else f"a photo number {i}"
            row = [f"images/img_{i % images}.png", premise, HYPOTHESES[i % len(HYPOTHESES)], LABELS[i % 3]]
            writer.writerow(row + ([f"b{i // 4}"] if extra_column else []))
    return path


def read_csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
