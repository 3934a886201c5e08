"""The shared Predictor: batched equals one-at-a-time, image features computed once per image, adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from velora.errors import VeloraError
from velora.predictor import BASE, Predictor


def image(seed: int, size=(70, 50)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


EXAMPLES = [
    (0, "a red car parked near a tree.", "there is a vehicle."),
    (1, None, "two dogs are playing"),
    (0, "a red car parked near a tree.", "the car is blue and it is raining heavily on the empty street"),
    (2, "kids on a beach", "people are outside"),
    (1, "", "a cat"),
]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir)


def test_batched_equals_one_at_a_time(predictor):
    images = {seed: image(seed) for seed in (0, 1, 2)}
    batch = predictor.probabilities([images[s] for s, _, _ in EXAMPLES], [p for _, p, _ in EXAMPLES],
                                    [h for _, _, h in EXAMPLES], batch_size=3)
    for row, (seed, premise, hypothesis) in enumerate(EXAMPLES):
        alone = predictor.predict(images[seed], premise, hypothesis)
        torch.testing.assert_close(batch[row], torch.tensor(list(alone.probabilities.values())), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.sum(1), torch.ones(len(EXAMPLES)))
    assert batch.std(0).max() > 1e-3, "a random model should not give identical answers to different inputs"


def test_image_features_computed_once_per_distinct_image(predictor, tmp_path, monkeypatch):
    path = tmp_path / "shared.png"
    image(3).save(path)
    seen = []
    original = predictor.model.image_features
    monkeypatch.setattr(predictor.model, "image_features", lambda pixels: seen.append(len(pixels)) or original(pixels))
    predictor.predict_batch([path, str(path), image(4), path], ["p"] * 4, ["a", "b", "c", "d"], batch_size=8)
    assert seen == [2]


def test_prediction_fields_and_label_order(predictor):
    result = predictor.predict(image(0), "premise", "hypothesis")
    assert list(result.probabilities) == ["entailment", "contradiction", "neutral"]
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert result.confidence == result.probabilities[result.label]
    assert json.loads(json.dumps(result.to_dict()))["label"] == result.label


def test_adapter_directory_as_model_path(tiny_model_dir, tiny_adapter_dir):
    tuned = Predictor.from_pretrained(tiny_adapter_dir)
    base = Predictor.from_pretrained(tiny_model_dir)
    args = ([image(0), image(1)], ["a red car", None], ["a vehicle", "two dogs"])
    tuned_probs, base_probs = tuned.probabilities(*args), base.probabilities(*args)
    assert (tuned_probs - base_probs).abs().max() > 0.05
    torch.testing.assert_close(tuned.probabilities(*args, adapter=BASE), base_probs, atol=1e-6, rtol=0)
    assert tuned.adapter_names == ["default"]
    with pytest.raises(VeloraError, match="unknown adapter 'other'"):
        tuned.predict(image(0), None, "x", adapter="other")


def test_adapter_with_missing_base_names_the_fix(tiny_adapter_dir, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(VeloraError, match="no such model directory"):
        Predictor.from_pretrained(adapter)


def tiny_adapter_dir_for(model_dir, tmp_path):
    from conftest import write_tiny_adapter

    return write_tiny_adapter(model_dir, tmp_path / "adapter_for_wide")


def test_adapter_on_wrong_base_is_refused(tiny_adapter_dir, tiny_model_dir, tmp_path):
    from conftest import write_tiny_model

    wide = write_tiny_model(tmp_path / "wide", d_model=48, encoder_attention_heads=4, decoder_attention_heads=4)
    with pytest.raises(VeloraError, match=r"does not fit .*q_proj.lora_A.weight has shape \[4, 32\]"):
        Predictor.from_pretrained(tiny_adapter_dir, base_model=str(wide))
    deeper = write_tiny_model(tmp_path / "deeper", decoder_layers=3)  # PEFT alone would only warn
    with pytest.raises(VeloraError, match=r"does not fit .*: no weights for .*decoder.layers.2"):
        Predictor.from_pretrained(tiny_adapter_dir, base_model=str(deeper))
    predictor = Predictor.from_pretrained(tiny_model_dir)
    with pytest.raises(VeloraError, match="does not fit"):
        predictor.load_adapter("other", tiny_adapter_dir_for(wide, tmp_path))


def test_int8_dynamic_quantization_stays_close(tiny_model_dir):
    fp32 = Predictor.from_pretrained(tiny_model_dir)
    int8 = Predictor.from_pretrained(tiny_model_dir, quantize="int8")
    args = ([image(0)], ["a red car"], ["a vehicle"])
    assert (fp32.probabilities(*args) - int8.probabilities(*args)).abs().max() < 0.05
    assert any("quantized" in type(m).__module__ for m in int8.model.modules())


def test_explicit_device_and_dtype(tiny_model_dir):
    predictor = Predictor.from_pretrained(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert predictor.dtype == torch.bfloat16 and next(predictor.model.parameters()).dtype == torch.bfloat16
    result = predictor.predict(image(0), "p", "h")
    assert abs(sum(result.probabilities.values()) - 1) < 1e-5
    with pytest.raises(VeloraError, match="unknown dtype"):
        Predictor.from_pretrained(tiny_model_dir, dtype="float8")
