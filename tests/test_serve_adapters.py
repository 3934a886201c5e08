"""Each served adapter is scored with its own processor, and a text's token limit is checked when its request is
read: an adapter trained at another image size answers exactly as `velora predict` on it does, and an over-long
text is its own request's 400 (naming the field), never a failed batch."""

from __future__ import annotations

import base64
import io
import logging
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from conftest import write_tiny_adapter
from serve_helpers import image_bytes, live_server
from velora.ofa.processor import ProcessorConfig
from velora.predictor import Predictor
from velora.serve import ServeSettings, create_app

PREMISE, HYPOTHESIS = "an animal in a park", "a dog is running."
TOO_LONG = "狗" * 900  # one 'word' after cleaning, about 1,800 BPE tokens: over the model's 1,024 text positions


@pytest.fixture(scope="module")
def adapter_96px(tiny_model_dir, tmp_path_factory):
    """An adapter trained (as far as its configuration.json says) at 96 px, on a base served at 64 px."""
    adapter = write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("a96") / "lora96", seed=11)
    ProcessorConfig(image_size=96).save(adapter)
    return adapter


@pytest.fixture(scope="module")
def url(tiny_adapter_dir, adapter_96px):
    settings = ServeSettings(model_path=str(tiny_adapter_dir), adapters={"big": str(adapter_96px)},
                             max_batch_size=8, max_wait_ms=200)
    with live_server(create_app(settings)) as base_url:
        yield base_url


def post(url: str, data: bytes, hypothesis: str = HYPOTHESIS, **fields) -> httpx.Response:
    return httpx.post(f"{url}/check", files={"image": ("photo.png", data, "image/png")},
                      data={"premise": PREMISE, "hypothesis": hypothesis, **fields}, timeout=60)


def test_an_adapter_is_served_with_its_own_image_size(url, adapter_96px, tiny_adapter_dir):
    data = image_bytes(5)
    own = Predictor.from_pretrained(adapter_96px).predict(Image.open(io.BytesIO(data)), PREMISE, HYPOTHESIS)
    served = post(url, data, adapter="big")
    assert served.status_code == 200, served.text
    assert served.json()["probs"] == pytest.approx(own.probabilities, abs=1e-5)
    default = Predictor.from_pretrained(tiny_adapter_dir).predict(Image.open(io.BytesIO(data)), PREMISE, HYPOTHESIS)
    assert post(url, data).json()["probs"] == pytest.approx(default.probabilities, abs=1e-5)
    assert httpx.get(f"{url}/info").json()["image_sizes"] == {"default": 64, "base": 64, "big": 96}


def test_one_image_for_two_adapters_in_one_batch(url, adapter_96px):
    data = image_bytes(6)
    shared = base64.b64encode(data).decode()
    items = [{"image": shared, "premise": PREMISE, "hypothesis": HYPOTHESIS, "adapter": name}
             for name in ("default", "big")]
    results = httpx.post(f"{url}/check_batch", json={"items": items}, timeout=60).json()["results"]
    own = Predictor.from_pretrained(adapter_96px).predict(Image.open(io.BytesIO(data)), PREMISE, HYPOTHESIS)
    assert results[1]["probs"] == pytest.approx(own.probabilities, abs=1e-5)
    assert results[0]["probs"] != results[1]["probs"]


def test_an_over_long_text_is_its_own_400_and_never_fails_a_batch(url, caplog):
    caplog.set_level(logging.WARNING, logger="velora.serve")
    data = image_bytes(7)
    with ThreadPoolExecutor(6) as pool:  # arriving together, so good ones share model calls
        good = [pool.submit(post, url, data, f"{HYPOTHESIS} {i}") for i in range(5)]
        bad = pool.submit(post, url, data, TOO_LONG)
    refused = bad.result()
    assert refused.status_code == 400 and refused.json()["field"] == "hypothesis"
    assert "tokens" in refused.json()["detail"] and "limit of 1,024" in refused.json()["detail"]
    assert all(f.result().status_code == 200 for f in good)
    assert not [r for r in caplog.records if "one by one" in r.getMessage()]  # no batch had to be re-run

    batch = {"items": [{"image": base64.b64encode(data).decode(), "hypothesis": text} for text in
                       (HYPOTHESIS, TOO_LONG)]}
    results = httpx.post(f"{url}/check_batch", json=batch, timeout=60).json()["results"]
    assert results[0]["relation"] and results[1]["field"] == "items[1].hypothesis"
