"""What /check and /check_batch accept and refuse, on a real server (localhost): text fields in the query string (as
the guide's FastAPI sketch sent them), fields sent twice, invisible text, JSON that is not UTF-8 or not JSON, bounded
echoes in 422s, the API key before the body, /info and /metrics without filesystem paths, memory after big decodes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import image_bytes, keyed_client, live_server

from velora.predictor import Predictor
from velora.serve import ServeSettings, create_app

KEY = "inputs-key"


@pytest.fixture(scope="module")
def url(tiny_adapter_dir):
    with live_server(create_app(ServeSettings(model_path=str(tiny_adapter_dir), api_key=KEY, max_upload_mb=1))) as url:
        yield url


@pytest.fixture()
def client(url):
    with keyed_client(url, KEY) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_adapter_dir):
    return Predictor.from_pretrained(tiny_adapter_dir)


def probs(reference, data: bytes, premise: str | None, hypothesis: str) -> dict:
    return reference.predict(data, premise, hypothesis, adapter="default").probabilities


def assert_field_error(response, status: int, field: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and message in response.json()["detail"], response.text


# -- text fields from the query string (issue 11 item 2) ---------------------------------------------------------------

def test_query_string_fields_as_the_guide_sends_them(client, reference):
    data = image_bytes(30)
    response = client.post("/check", params={"premise": "a red car", "hypothesis": "a vehicle is parked."},
                           files={"image": ("car.png", data)})
    assert response.status_code == 200, response.text
    assert response.json()["probs"] == pytest.approx(probs(reference, data, "a red car", "a vehicle is parked."),
                                                     abs=1e-5)


def test_form_and_json_win_over_the_query_string(client, reference):
    data = image_bytes(31)
    wanted = probs(reference, data, "form premise", "form hypothesis.")
    assert wanted != pytest.approx(probs(reference, data, "query premise", "query hypothesis."), abs=1e-6)
    query = {"premise": "query premise", "hypothesis": "query hypothesis."}
    form = client.post("/check", params=query, files={"image": ("a.png", data)},
                       data={"premise": "form premise", "hypothesis": "form hypothesis."})
    body = {"image": base64.b64encode(data).decode(), "premise": "form premise", "hypothesis": "form hypothesis."}
    as_json = client.post("/check", params=query, json=body)
    for response in (form, as_json):
        assert response.status_code == 200, response.text
        assert response.json()["probs"] == pytest.approx(wanted, abs=1e-5)
    mixed = client.post("/check", params={"hypothesis": "query hypothesis."}, json={"image": body["image"]})
    assert mixed.json()["probs"] == pytest.approx(probs(reference, data, None, "query hypothesis."), abs=1e-5)


def test_a_request_with_no_fields_says_what_to_send_and_how(client):
    for response in (client.post("/check"), client.post("/check", files={"image": ("a.png", image_bytes(0))}),
                     client.post("/check", json={"image": "eA=="})):
        assert response.status_code == 422, response.text
        hypothesis = [e for e in response.json()["detail"] if e["loc"] == ["body", "hypothesis"]]
        assert hypothesis, response.text
        for way in ("form field", "JSON key", "query string"):
            assert way in hypothesis[0]["msg"]
    nothing = client.post("/check").json()["detail"]
    assert any(e["loc"] == ["body", "image"] and "multipart file part" in e["msg"] for e in nothing)


def test_query_string_values_are_checked_like_the_others(client):
    files = {"image": ("a.png", image_bytes(0))}
    assert_field_error(client.post("/check", params={"hypothesis": "h", "adapter": "nope"}, files=files), 400,
                       "adapter", "unknown adapter")
    assert_field_error(client.post("/check?hypothesis=a&hypothesis=b", files=files), 400, "hypothesis",
                       "sent 2 times in the query string")


# -- fields sent twice, invisible text, long text --------------------------------------------------------------------

@pytest.mark.parametrize("field", ["hypothesis", "premise", "adapter", "image"])
def test_a_field_sent_twice_is_400_naming_it(client, field):
    values = {"image": ("a.png", image_bytes(0)), "hypothesis": (None, "h"), "premise": (None, "p"),
              "adapter": (None, "default")}
    parts = [("image", values["image"]), ("hypothesis", values["hypothesis"]), (field, values[field])]
    if field not in ("image", "hypothesis"):
        parts.append((field, values[field]))
    response = client.post("/check", files=parts)
    assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert "2 times" in response.text or "files" in response.text


@pytest.mark.parametrize("text", ["\x00", " \t\x01\x7f\r\n", "\u200b\u200b", "\x00\u3000"])
def test_a_hypothesis_of_control_characters_is_empty(client, text):
    assert_field_error(client.post("/check", files={"image": ("a.png", image_bytes(0))}, data={"hypothesis": text}),
                       400, "hypothesis", "empty")


def test_a_text_over_the_part_limit_names_the_field_and_the_documented_limit(client):
    response = client.post("/check", files={"image": ("a.png", image_bytes(0))}, data={"hypothesis": "é" * 3000})
    assert_field_error(response, 400, "hypothesis", "3,000 characters, over the limit of 1,000")


# -- JSON, 422 echoes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["/check", "/check_batch"])
def test_json_that_is_not_utf8_is_422(client, endpoint):
    response = client.post(endpoint, content=b'{"hypothesis": "\xff\xfe", "image": "eA=="}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("endpoint", ["/check", "/check_batch"])
def test_a_422_echoes_a_bounded_part_of_the_body(client, endpoint):
    body = b'{"hypothesis": "h", "image": "' + b"A" * 900_000  # not JSON: no closing quote
    response = client.post(endpoint, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and len(response.content) < 2000, response.content[:300]
    assert f"({len(body):,} bytes)" in response.text
    huge_item = {"image": "A" * 900_000}  # valid JSON, missing hypothesis: FastAPI echoes the whole object
    response = client.post("/check", json=huge_item)
    assert response.status_code == 422 and len(response.content) < 2000, response.content[:300]
    assert "(900,000 characters)" in response.text


def test_a_misspelled_file_field_does_not_dump_the_upload(client):
    response = client.post("/check", files={"imagee": ("b.png", image_bytes(1))}, data={"hypothesis": "h"})
    assert response.status_code == 422, response.text
    assert "_max_size" not in response.text and "_rolled" not in response.text and "SpooledTemporaryFile" \
        not in response.text
    errors = {tuple(e["loc"]): e for e in response.json()["detail"]}
    assert set(errors) == {("body", "image"), ("body", "imagee")}
    assert errors["body", "imagee"]["type"] == "extra_forbidden" and "b.png" in errors["body", "imagee"]["input"]


# -- the key before the body; names, not paths ------------------------------------------------------------------------

def test_check_batch_checks_the_key_before_parsing_the_body(url):
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = httpx.post(f"{url}/check_batch", content=b"{not json", timeout=30,
                              headers={"Content-Type": "application/json", **headers})
        assert response.status_code == 401, response.text


def model_info_labels(url: str) -> dict:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text)
    return next(s.labels for f in families for s in f.samples if s.name == "velora_model_info")


def test_info_and_metrics_show_names_unless_the_key_is_given(url, tiny_adapter_dir):
    anonymous = httpx.get(f"{url}/info", timeout=30)
    assert anonymous.json()["model"] == tiny_adapter_dir.name and "paths" not in anonymous.json()
    assert str(tiny_adapter_dir.parent) not in anonymous.text
    assert str(tiny_adapter_dir.parent) not in json.dumps(model_info_labels(url))
    assert model_info_labels(url)["model"] == tiny_adapter_dir.name
    with_key = httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert with_key["paths"] == {"model": str(tiny_adapter_dir)}
    assert "paths" not in httpx.get(f"{url}/info", headers={"X-API-Key": "wrong"}, timeout=30).json()


def test_a_server_without_a_key_shows_names_only(tiny_adapter_dir):
    with live_server(create_app(ServeSettings(model_path=str(tiny_adapter_dir), warmup=False))) as url:
        info = httpx.get(f"{url}/info", headers={"X-API-Key": "anything"}, timeout=30)
    assert info.json()["model"] == tiny_adapter_dir.name and str(tiny_adapter_dir.parent) not in info.text


# -- memory after large decodes ---------------------------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def test_memory_of_large_decodes_is_given_back(client, url):
    """12-megapixel phone photos, 4 at a time: the server (a thread of this process) returns to its size."""
    out = io.BytesIO()
    Image.fromarray(np.full((3000, 4000, 3), 90, dtype=np.uint8)).save(out, format="PNG")
    photo = out.getvalue()
    client.post("/check", files={"image": ("warm.png", image_bytes(0))}, data={"hypothesis": "h"})
    before = rss_mb()

    async def burst():
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as c:
            for _ in range(3):
                answers = await asyncio.gather(*(c.post("/check", files={"image": ("p.png", photo)},
                                                        data={"hypothesis": "h"}) for _ in range(4)))
                assert [a.status_code for a in answers] == [200] * 4, answers[0].text

    asyncio.run(burst())
    assert rss_mb() - before < 100, f"{before:.0f} MB before, {rss_mb():.0f} MB after"
