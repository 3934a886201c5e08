"""Text and image preprocessing: the reference prompt ids, caption cleaning, every image mode, refused files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from velora.errors import VeloraError
from velora.images import ImageError, load_image
from velora.labels import normalize_label
from velora.ofa.preprocess import (PreprocessConfig, answer_token_ids, build_prompt, clean_caption,
                                   collate_prompts, encode_prompt, image_to_tensor, load_tokenizer)


@pytest.fixture(scope="module")
def tokenizer(parity_dir):
    return load_tokenizer(parity_dir / "model")


def test_prompt_ids_match_the_reference_fixture(tokenizer, parity_dir):
    inputs = torch.load(parity_dir / "inputs.pt", weights_only=False)
    batch = collate_prompts([encode_prompt(tokenizer, h, p, PreprocessConfig()) for p, h in inputs["samples"]])
    assert torch.equal(batch.input_ids, inputs["input_ids"])
    assert torch.equal(batch.decoder_input_ids, inputs["decoder_input_ids"])
    lengths = inputs["input_ids"].ne(1).sum(1)
    assert batch.answer_positions.tolist() == (lengths - 2).tolist()  # the "?" before eos
    assert answer_token_ids(tokenizer) == inputs["answer_ids"] == [4420, 117, 2085]


def test_prompt_without_premise(tokenizer):
    prompt = build_prompt("There are TWO birds.", None, PreprocessConfig())
    assert prompt == ' does the image describe " there are two birds. "?'
    assert build_prompt("x", "   ", PreprocessConfig()) == build_prompt("x", None, PreprocessConfig())
    ids = encode_prompt(tokenizer, "there are two birds.", None, PreprocessConfig())
    assert ids[0] == 0 and ids[-1] == 2 and ids[-2] == 116  # " ?" closes the question


@pytest.mark.parametrize("raw, cleaned", [
    ("...A Man -- rides/ a BIKE!  ", "a man rides a bike!"),
    ("  ...leading spaces stop the strip", "...leading spaces stop the strip"),
    ("#Tag: hello\tworld", "tag: hello\tworld"),
    ("<person> waves", "person waves"),
    ("multi   space\n\nlines", "multi space lines"),
])
def test_caption_cleaning_follows_ofa(raw, cleaned):
    assert clean_caption(raw, None) == cleaned


def test_caption_keeps_max_words():
    assert clean_caption(" ".join(f"w{i}" for i in range(100)), 80).split() == [f"w{i}" for i in range(80)]


def test_empty_hypothesis_is_refused(tokenizer):
    with pytest.raises(VeloraError, match="hypothesis is empty"):
        encode_prompt(tokenizer, "  ", "premise", PreprocessConfig())


def test_configuration_json_sets_image_size_prompt_and_length(tmp_path):
    (tmp_path / "configuration.json").write_text(json.dumps({"model": {
        "patch_image_size": 384, "max_src_length": 20, "prompt": ' does "{}" hold?'}}))
    config = PreprocessConfig.from_model_dir(tmp_path)
    assert (config.image_size, config.max_src_length, config.prompt_without_premise) == (384, 20, ' does "{}" hold?')
    assert PreprocessConfig.from_model_dir(tmp_path, image_size=224).image_size == 224
    assert PreprocessConfig.from_model_dir(tmp_path / "missing").image_size == 480
    (tmp_path / "out").mkdir()
    config.save(tmp_path / "out")
    assert PreprocessConfig.from_model_dir(tmp_path / "out") == config
    with pytest.raises(VeloraError, match="multiple of 16"):
        PreprocessConfig(image_size=500)


def test_image_transform_is_bicubic_resize_then_half_normalisation():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    tensor = image_to_tensor(image, PreprocessConfig(image_size=32))
    expected = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255.0
    assert tensor.shape == (3, 32, 32)
    torch.testing.assert_close(tensor, torch.from_numpy((expected - 0.5) / 0.5).permute(2, 0, 1))


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("make, fmt, expected_rgb", [
    (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
    (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent -> white
    (lambda: Image.new("LA", (8, 8), (10, 255)), "PNG", (10, 10, 10)),
    (lambda: Image.new("L", (8, 8), 77), "PNG", (77, 77, 77)),
    (lambda: Image.new("1", (8, 8), 1), "PNG", (255, 255, 255)),
    (lambda: Image.new("P", (8, 8), 0), "GIF", None),
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
    (lambda: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), "PNG", (255, 255, 255)),
    (lambda: Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)), "PNG", (128, 128, 128)),
])
def test_every_image_mode_becomes_rgb(make, fmt, expected_rgb):
    image = load_image(_encoded(make(), fmt))
    assert image.mode == "RGB" and image.size == (8, 8)
    if expected_rgb is not None:
        assert np.abs(np.asarray(image)[4, 4].astype(int) - expected_rgb).max() <= 2


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    upright = load_image(_encoded(image, "JPEG", exif=exif))
    assert upright.size == (20, 40)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = io.BytesIO()
    frames[0].save(data, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(data.getvalue()))[0, 0, 0] > 200


def test_refused_images_name_the_problem(tmp_path):
    jpeg = _encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "huge.png").write_bytes(_encoded(Image.new("1", (12000, 10000)), "PNG"))
    cases = {"truncated.jpg": "truncated", "empty.jpg": "empty", "text.jpg": "not an image",
             "dir.jpg": "directory", "missing.jpg": "not found", "huge.png": "decompression bomb"}
    for name, reason in cases.items():
        with pytest.raises(ImageError, match=reason) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)


@pytest.mark.parametrize("raw, label", [("Entailment", "entailment"), (" NEUTRAL ", "neutral"), ("yes", "entailment"),
                                        ("No", "contradiction"), ("maybe", "neutral"), ("unknown", None), ("", None)])
def test_label_normalisation(raw, label):
    assert normalize_label(raw) == label
