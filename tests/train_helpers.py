"""A small visual-entailment dataset whose labels follow the image (square colours), converted by velora, and
helpers that run `velora train` on it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_model

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


def train_argv(base_model: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    """`velora train` flags for a fast, deterministic run on the colour dataset."""
    return ["--model_name_or_path", str(base_model), "--dataset_name", str(dataset), "--output_dir", str(output),
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--lora_dropout", "0",
            "--logging_steps", "2", "--save_steps", "4", "--report_to", "none", "--seed", "7", *extra]


def run_train(argv: list[str]):
    """`velora train ARGV` in this process through the real click command; errors propagate as raised."""
    from velora.train.cli import train_command

    return train_command.main(list(argv), prog_name="velora train", standalone_mode=False)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """Tiny OFA without dropout, so runs are deterministic across processes and resumptions."""
    return write_tiny_model(tmp_path_factory.mktemp("base") / "model", dropout=0.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return colour_dataset(tmp_path_factory.mktemp("data"))
