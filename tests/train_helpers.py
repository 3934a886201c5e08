"""A small visual-entailment dataset whose labels follow the image (square colours), converted by velora."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def colour_csv(folder: Path, n_images: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    rows = []
    for i in range(n_images):
        colour = names[i % len(names)]
        pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"square_{i}.png")
        other = names[(i + 1) % len(names)]
        rows += [(f"square_{i}.png", "a coloured square", f"the square is {colour}", "entailment"),
                 (f"square_{i}.png", "a coloured square", f"the square is {other}", "contradiction"),
                 (f"square_{i}.png", "a coloured square", "the square is made of wood", "neutral")]
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "premise", "hypothesis", "label"])
        writer.writerows(rows)
    return path


def colour_dataset(folder: Path, n_images: int = 12) -> Path:
    from velora.convert import convert

    convert(colour_csv(folder / "raw", n_images), folder / "hf_dataset", val_ratio=0.25, seed=0)
    return folder / "hf_dataset"
