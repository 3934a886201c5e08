"""`velora demo`: the main job end to end on a built-in example, offline.

Until training lands this runs one prediction with a small random-weight OFA built on the fly (and says so).
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from PIL import Image, ImageDraw

from velora.ofa import OFAConfig, OFAModel
from velora.ofa.checkpoint import randomize_, save_model_dir
from velora.ofa.preprocess import PreprocessConfig
from velora.predict import predict
from velora.predictor import Predictor

SMALL_OFA = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, resnet_type="resnet18")


def build_small_model(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = randomize_(OFAModel(OFAConfig(**SMALL_OFA)), seed=seed).eval()
    return save_model_dir(model, directory, PreprocessConfig(image_size=128))


def draw_example(path: Path) -> Path:
    image = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(image).ellipse((30, 30, 98, 98), fill=(220, 30, 30))
    image.save(path)
    return path


def run_demo(output_dir: str | Path = "demo_output") -> None:
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    click.echo("No trained model yet: building a small RANDOM-weight OFA (its answers mean nothing) to show the "
               "prediction path end to end.")
    model_dir = build_small_model(output / "small_random_ofa")
    image = draw_example(output / "red_circle.png")
    predictor = Predictor.from_pretrained(model_dir)
    result = predict(predictor, image, "a red circle on a white background", "there is a round shape")
    click.echo(f"Model: {predictor.description}")
    click.echo(result.to_text())
