"""`velora serve` on a real uvicorn (localhost, free port) with a tiny checkpoint and two LoRA adapters.

Answers are checked against an independent in-process Predictor; every kind of bad input must give its 4xx with
the field named, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from conftest import write_tiny_adapter
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import bomb_png, image_bytes, keyed_client, live_server, truncated_png

from velora.cli import cli
from velora.labels import LABELS
from velora.predictor import BASE, Predictor
from velora.serve import ServeSettings, create_app

KEY = "test-key-123"
LOW_CONFIDENCE = 0.99  # above most tiny-model answers, so both branches of the counter are exercised


@pytest.fixture(scope="module")
def second_adapter_dir(tiny_model_dir, tmp_path_factory):
    return write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("second") / "lora", seed=7)


@pytest.fixture(scope="module")
def reference(tiny_adapter_dir, second_adapter_dir):
    predictor = Predictor.from_pretrained(tiny_adapter_dir)
    predictor.load_adapter("second", second_adapter_dir)
    return predictor


@pytest.fixture(scope="module")
def server(tiny_adapter_dir, second_adapter_dir):
    settings = ServeSettings(model_path=str(tiny_adapter_dir), adapters={"second": str(second_adapter_dir)},
                             api_key=KEY, max_batch_size=16, max_wait_ms=50, max_upload_mb=1,
                             low_confidence=LOW_CONFIDENCE)
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture()
def client(server):
    with keyed_client(server, KEY) as c:
        yield c


def post_image(client, data: bytes, hypothesis="a dog is running.", premise="an animal in a park", **fields):
    form = {"hypothesis": hypothesis, **({"premise": premise} if premise is not None else {}), **fields}
    return client.post("/check", files={"image": ("photo.png", data, "image/png")}, data=form)


def expected(reference, data, premise, hypothesis, adapter):
    return reference.predict(data, premise, hypothesis, adapter=adapter).probabilities


def assert_probs(actual: dict, wanted: dict):
    assert list(actual) == list(LABELS)
    for label in LABELS:
        assert actual[label] == pytest.approx(wanted[label], abs=1e-5), (label, actual, wanted)


def metric_samples(client) -> dict[tuple, float]:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- answers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter, used", [(None, "default"), ("default", "default"), ("second", "second"),
                                           (BASE, BASE)])
def test_check_matches_the_predictor_for_each_adapter(client, reference, adapter, used):
    data = image_bytes(1)
    fields = {"adapter": adapter} if adapter else {}
    response = post_image(client, data, **fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["adapter"] == used
    assert_probs(body["probs"], expected(reference, data, "an animal in a park", "a dog is running.", used))
    assert body["relation"] == max(body["probs"], key=body["probs"].get)
    assert body["score"] == body["probs"][body["relation"]]
    assert body["batch_size"] >= 1 and body["latency_ms"] > 0


def test_adapters_really_differ(client):
    answers = {name: post_image(client, image_bytes(2), adapter=name).json()["probs"]
               for name in ("default", "second", BASE)}
    assert answers["default"] != answers[BASE] and answers["second"] != answers["default"]


def test_json_body_with_base64_image_and_data_url(client, reference):
    data = image_bytes(3)
    b64 = base64.b64encode(data).decode()
    for image in (b64, "data:image/png;base64," + b64):
        response = client.post("/check", json={"image": image, "hypothesis": "two birds.", "adapter": "second"})
        assert response.status_code == 200, response.text
        assert_probs(response.json()["probs"], expected(reference, data, None, "two birds.", "second"))


def test_check_batch_answers_in_order_and_isolates_bad_items(client, reference):
    shared = base64.b64encode(image_bytes(4)).decode()
    other = base64.b64encode(image_bytes(5, size=(64, 64), fmt="JPEG")).decode()
    items = [
        {"image": shared, "premise": "a street", "hypothesis": "there are cars."},
        {"image": shared, "hypothesis": "it is night.", "adapter": BASE},
        {"image": "not base64 at all!", "hypothesis": "x"},
        {"image": other, "hypothesis": "a cat sleeps.", "adapter": "second"},
        {"image": base64.b64encode(b"GIF89a nonsense").decode(), "hypothesis": "x"},
        {"image": shared, "hypothesis": "y" * 1001},
        {"image": shared, "hypothesis": "x", "adapter": "nope"},
    ]
    response = client.post("/check_batch", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert body["errors"] == 4
    assert [r.get("field") for r in results] == [None, None, "items[2].image", None, "items[4].image",
                                                 "items[5].hypothesis", "items[6].adapter"]
    assert "base64" in results[2]["error"] and "not an image" in results[4]["error"]
    assert "1,000" in results[5]["error"] and "default, base, second" in results[6]["error"]
    for i, adapter in ((0, "default"), (1, BASE), (3, "second")):
        item = items[i]
        wanted = expected(reference, base64.b64decode(item["image"]), item.get("premise"), item["hypothesis"], adapter)
        assert results[i]["adapter"] == adapter
        assert_probs(results[i]["probs"], wanted)


def test_64_concurrent_requests_all_correct_and_batched(server, client, reference):
    adapters = ["default", "second", BASE]
    cases = [(image_bytes(100 + i), f"hypothesis number {i}", adapters[i % 3]) for i in range(64)]
    before = metric_samples(client)

    async def fire():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server, headers={"X-API-Key": KEY}, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(
                c.post("/check", files={"image": ("i.png", data)}, data={"hypothesis": hyp, "adapter": adapter})
                for data, hyp, adapter in cases))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 64
    for adapter in adapters:
        rows = [i for i, case in enumerate(cases) if case[2] == adapter]
        wanted = reference.predict_batch([cases[i][0] for i in rows], [None] * len(rows),
                                         [cases[i][1] for i in rows], adapter=adapter)
        for i, prediction in zip(rows, wanted):
            assert responses[i].json()["adapter"] == adapter
            assert_probs(responses[i].json()["probs"], prediction.probabilities)
    assert max(r.json()["batch_size"] for r in responses) > 1
    after = metric_samples(client)
    examples = sample(after, "velora_batch_size_sum") - sample(before, "velora_batch_size_sum")
    calls = sample(after, "velora_batch_size_count") - sample(before, "velora_batch_size_count")
    assert examples == 64 and calls < 64


# -- bad input ---------------------------------------------------------------------------------------------------

def multipart(client, parts: dict, **headers):
    return client.post("/check", files=parts, headers=headers)


BAD_UPLOADS = [
    ("not an image", lambda: b"hello, I am text", "not an image"),
    ("truncated", truncated_png, "truncated"),
    ("decompression bomb", bomb_png, "decompression bomb"),
    ("empty file", lambda: b"", "empty"),
]


@pytest.mark.parametrize("case, make, message", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_images_are_400_naming_the_field(client, case, make, message):
    response = post_image(client, make())
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "image" and message in response.json()["detail"]
    assert "photo.png" in response.json()["detail"]


@pytest.mark.parametrize("fields, field, message", [
    ({"hypothesis": "x" * 1001}, "hypothesis", "over the limit of 1,000"),
    ({"premise": "p" * 1001}, "premise", "over the limit of 1,000"),
    ({"hypothesis": "   "}, "hypothesis", "empty"),
    ({"adapter": "nope"}, "adapter", "this server has: default, base, second"),
])
def test_bad_text_fields_are_400_naming_the_field(client, fields, field, message):
    response = post_image(client, image_bytes(0), **{"hypothesis": "ok", **fields})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and message in response.json()["detail"]


def test_missing_and_unknown_fields_are_422(client):
    cases = [
        (multipart(client, {"image": ("a.png", image_bytes(0)), "premise": (None, "p")}), ["body", "hypothesis"]),
        (multipart(client, {"hypothesis": (None, "h"), "premise": (None, "p")}), ["body", "image"]),
        (multipart(client, {"image": (None, "text, not a file"), "hypothesis": (None, "h")}), ["body", "image"]),
        (multipart(client, {"image": ("a.png", image_bytes(0)), "hypothesis": (None, "h"),
                            "hypotesis": (None, "typo")}), ["body", "hypotesis"]),
        (client.post("/check", json={"hypothesis": "h"}), ["body", "image"]),
        (client.post("/check", content=b"{not json", headers={"Content-Type": "application/json"}), ["body"]),
        (client.post("/check_batch", json={"items": []}), ["body", "items"]),
    ]
    for response, loc in cases:
        assert response.status_code == 422, response.text
        assert any(error["loc"][:len(loc)] == loc for error in response.json()["detail"]), (loc, response.text)


def test_bad_base64_and_wrong_content_type(client):
    response = client.post("/check", json={"image": "%%%", "hypothesis": "h"})
    assert response.status_code == 400 and response.json()["field"] == "image"
    response = client.post("/check", content=b"hypothesis=h", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]


def test_too_many_batch_items_is_400(client):
    items = [{"image": base64.b64encode(image_bytes(0, size=(8, 8))).decode(), "hypothesis": "h"}] * 65
    response = client.post("/check_batch", json={"items": items})
    assert response.status_code == 400 and response.json()["field"] == "items"


def test_no_bad_input_caused_a_500(client):
    assert post_image(client, image_bytes(9)).status_code == 200  # still serving
    samples = metric_samples(client)
    assert not [key for key, value in samples.items() if key[0] == "velora_requests_total"
                and ("status", "500") in key[1] and value > 0]


# -- auth, probes, metrics, logs ------------------------------------------------------------------------------------

def test_api_key(server):
    data = {"hypothesis": "h"}
    files = {"image": ("a.png", image_bytes(0))}
    with httpx.Client(base_url=server, timeout=60) as anonymous:
        missing = anonymous.post("/check", files=files, data=data)
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert anonymous.post("/check", files=files, data=data, headers={"X-API-Key": "wrong"}).status_code == 401
        assert anonymous.post("/check_batch", json={"items": []}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert anonymous.post("/check", files=files, data=data,
                              headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/info", "/", "/openapi.json"):
            assert anonymous.get(open_path).status_code == 200, open_path


def test_probes_info_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["adapters"] == ["default", BASE, "second"]
    info = client.get("/info").json()
    assert info["default_adapter"] == "default" and info["auth"] is True and info["labels"] == list(LABELS)
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]["/check"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                            "application/json"}
    assert "/check_batch" in spec["paths"] and "/metrics" in spec["paths"]
    assert "swagger" in client.get("/docs").text.lower()


def test_metrics_counters_move(client):
    before = metric_samples(client)
    body = post_image(client, image_bytes(11), adapter="second").json()
    post_image(client, b"not an image")
    after = metric_samples(client)

    def moved(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("velora_requests_total", endpoint="/check", status="200") == 1
    assert moved("velora_requests_total", endpoint="/check", status="400") == 1
    assert moved("velora_request_latency_seconds_count", endpoint="/check") == 2
    assert moved("velora_predictions_total", adapter="second", label=body["relation"]) == 1
    assert moved("velora_low_confidence_total", adapter="second") == (1 if body["score"] < LOW_CONFIDENCE else 0)
    assert moved("velora_batch_size_count") >= 1
    assert sample(after, "velora_queue_depth") == 0


def test_one_log_line_per_request(client, caplog):
    caplog.set_level(logging.INFO, logger="velora.serve")
    post_image(client, image_bytes(12))
    post_image(client, b"junk")
    client.get("/healthz", headers={"X-API-Key": ""})
    lines = [r.getMessage() for r in caplog.records if r.name == "velora.serve"]
    assert len(lines) == 3, lines
    assert '"POST /check" 200' in lines[0] and "adapter=default relation=" in lines[0]
    assert '"POST /check" 400' in lines[1]
    assert '"GET /healthz" 200' in lines[2]


def test_plain_model_serves_base_by_default_and_is_unready_before_startup(tiny_model_dir):
    app = create_app(ServeSettings(model_path=str(tiny_model_dir), warmup=False))
    cold = TestClient(app)  # lifespan not run: nothing loaded yet
    assert cold.get("/readyz").status_code == 503 and cold.get("/healthz").status_code == 200
    assert cold.post("/check", json={"image": "", "hypothesis": "h"}).status_code == 503
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/info").json()["adapters"] == [BASE]
        files = {"image": ("a.png", image_bytes(0))}
        assert client.post("/check", files=files, data={"hypothesis": "h"}).json()["adapter"] == BASE
        response = client.post("/check", files=files, data={"hypothesis": "h", "adapter": "default"})
        assert response.status_code == 400 and "this server has: base" in response.json()["detail"]


# -- the command line ---------------------------------------------------------------------------------------------

def test_serve_help_lists_the_guide_flags():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--model_path", "--adapter", "--host", "--port", "--api_key", "--max_batch_size", "--max_wait_ms",
                 "--max_upload_mb", "VELORA_API_KEY", "--header_timeout", "--body_timeout", "--keep_alive_timeout",
                 "--limit_concurrency"):
        assert flag in result.output


@pytest.mark.parametrize("adapter, message", [
    ("no-equals-sign", "NAME=PATH"),
    ("x=/definitely/not/here", "no adapter_config.json"),
    ("base=/somewhere", "reserved"),
])
def test_serve_refuses_bad_adapter_flags_before_loading(tiny_model_dir, adapter, message):
    result = CliRunner().invoke(cli, ["serve", "--model_path", str(tiny_model_dir), "--adapter", adapter])
    assert result.exit_code == 2 and message in result.output


def test_serve_refuses_a_taken_port(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--model_path", str(tiny_model_dir), "--port", str(port)])
    assert result.exit_code == 2 and f"127.0.0.1:{port}" in result.output and "--port" in result.output


def test_velora_serve_end_to_end(tiny_adapter_dir, second_adapter_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-c", "from velora.cli import cli; cli()", "serve", "--model_path", str(tiny_adapter_dir),
         "--adapter", f"second={second_adapter_dir}", "--port", str(port), "--max_batch_size", "4"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VELORA_API_KEY": KEY})
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(600):
                assert process.poll() is None, open(log.name).read()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            response = c.post("/check", files={"image": ("a.png", image_bytes(0))},
                              data={"hypothesis": "h", "adapter": "second"},
                              headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code == 200 and response.json()["adapter"] == "second"
            assert c.post("/check", data={"hypothesis": "h"}).status_code == 401
    finally:
        process.terminate()
        process.wait(30)
    output = open(log.name).read()
    assert "Application shutdown complete" in output  # uvicorn then re-raises SIGTERM, so the exit code is -15
    assert "API key required" in output and '"POST /check" 200' in output and '"POST /check" 401' in output
