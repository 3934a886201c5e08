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
from velora.ofa.processor import OFAProcessor, ProcessorConfig, clean_caption


@pytest.fixture(scope="module")
def processor(parity_dir):
    return OFAProcessor.from_pretrained(parity_dir / "model")


def test_prompt_ids_match_the_reference_fixture(processor, parity_dir):
    inputs = torch.load(parity_dir / "inputs.pt", weights_only=False)
    batch = processor.collate([processor.encode_text(h, p) for p, h in inputs["samples"]])
    assert torch.equal(batch.input_ids, inputs["input_ids"])
    assert torch.equal(batch.decoder_input_ids, inputs["decoder_input_ids"])
    lengths = inputs["input_ids"].ne(1).sum(1)
    assert batch.answer_positions.tolist() == (lengths - 2).tolist()  # the "?" before eos
    assert torch.equal(batch.attention_mask, inputs["input_ids"].ne(1))
    assert processor.answer_ids == inputs["answer_ids"] == [4420, 117, 2085]


def test_prompt_without_premise(processor):
    prompt = processor.prompt("There are TWO birds.", None)
    assert prompt == ' does the image describe " there are two birds. "?'
    assert processor.prompt("x", "   ") == processor.prompt("x", None)
    ids = processor.encode_text("there are two birds.", None)
    assert ids[0] == 0 and ids[-1] == 2 and ids[-2] == 116  # " ?" closes the question
    assert processor.collate([ids, ids]).attention_mask is None  # nothing padded: no mask to apply


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


def test_empty_hypothesis_is_refused(processor):
    for blank in ("  ", "\x00", "\u200b\t"):
        with pytest.raises(VeloraError, match="hypothesis is empty") as info:
            processor.encode_text(blank, "premise")
        assert info.value.field == "hypothesis"


def test_prompt_over_the_token_limit_names_the_longer_field(processor):
    limited = processor.with_overrides(max_text_tokens=40)
    with pytest.raises(VeloraError, match="premise too long: the prompt is .* over the model's limit of 40") as info:
        limited.encode_text("a dog.", "a very long premise " * 10)
    assert info.value.field == "premise"
    assert len(limited.encode_text("a dog.", "a cat.")) <= 40


def test_configuration_json_sets_image_size_prompt_and_length(tmp_path):
    (tmp_path / "configuration.json").write_text(json.dumps({"model": {
        "patch_image_size": 384, "max_src_length": 20, "prompt": ' does "{}" hold?'}}))
    config = ProcessorConfig.from_model_dir(tmp_path)
    assert (config.image_size, config.max_src_length, config.prompt_without_premise) == (384, 20, ' does "{}" hold?')
    assert ProcessorConfig.from_model_dir(tmp_path, image_size=224).image_size == 224
    assert ProcessorConfig.from_model_dir(tmp_path / "missing").image_size == 480
    (tmp_path / "out").mkdir()
    config.save(tmp_path / "out")
    assert ProcessorConfig.from_model_dir(tmp_path / "out") == config
    with pytest.raises(VeloraError, match="multiple of 16"):
        ProcessorConfig(image_size=500)


def test_processor_round_trips_through_save_pretrained(tmp_path):
    processor = OFAProcessor.default(image_size=96, max_src_length=12)
    processor.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"configuration.json", "vocab.json", "merges.txt"}
    again = OFAProcessor.from_pretrained(tmp_path)
    assert again.config == processor.config and again.same_preprocessing(processor)
    assert again.encode_text("two dogs.", "a park") == processor.encode_text("two dogs.", "a park")
    assert not again.same_preprocessing(OFAProcessor.default(image_size=64, max_src_length=12))


def test_image_transform_is_bicubic_resize_then_half_normalisation():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    tensor = OFAProcessor.default(image_size=32).image_tensor(image)
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
