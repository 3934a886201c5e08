"""velora.pipeline: the guide's `pipeline("visual-entailment", model=...)` call shape, and ModelScope's input names."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import velora
from velora.errors import VeloraError
from velora.predictor import Predictor

PREMISE, HYPOTHESIS = "a coffee maker on a counter", "this appliance brews hot beverages."


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "product photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_guide_call_shapes_give_the_predictors_answer(tiny_adapter_dir, photo):
    ve = velora.pipeline("visual-entailment", model=str(tiny_adapter_dir),
                         tokenizer="iic/ofa_visual-entailment_snli-ve_large_en")  # the guide passes one; unused
    expected = Predictor.from_pretrained(tiny_adapter_dir).predict(photo, PREMISE, HYPOTHESIS)
    with open(photo, "rb") as upload:  # FastAPI's UploadFile.file, as in the guide's server.py
        guide = ve(upload, PREMISE, HYPOTHESIS)
    modelscope = ve({"image": str(photo), "text": HYPOTHESIS, "text2": PREMISE})
    keywords = ve(photo, text=HYPOTHESIS, text2=PREMISE)
    for result in (guide, modelscope, keywords):
        assert result["label"] == expected.label
        assert result["score"] == pytest.approx(expected.confidence, abs=1e-6)
        assert result["scores"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert abs(sum(guide["scores"].values()) - 1) < 1e-5


def test_pipeline_refusals(tiny_model_dir, photo, monkeypatch):
    with pytest.raises(VeloraError, match="serves 'visual-entailment'"):
        velora.pipeline("image-classification", model=str(tiny_model_dir))
    monkeypatch.delenv("VELORA_MODEL", raising=False)
    with pytest.raises(VeloraError, match="no model"):
        velora.pipeline("visual-entailment")
    ve = velora.pipeline(model=str(tiny_model_dir))
    with pytest.raises(VeloraError, match="hypothesis is empty"):
        ve(photo, PREMISE, "  ")
    with pytest.raises(VeloraError, match="no image"):
        ve({"text": HYPOTHESIS})
