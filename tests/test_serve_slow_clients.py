"""`velora serve` against hostile and clumsy clients, on real servers (localhost): oversize uploads answered to every
kind of client (lingering close), slow headers and bodies (408), idle connections, the connection cap, a stalled
upload that must not hold other requests back, and a client that leaves mid-upload (499, one log line).

No test measures time: each asserts what the client reads, what the server logs and counts. Timeouts on the client
side only guard against a hang.
"""

from __future__ import annotations

import json
import logging
import re
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import host_port, image_bytes, live_server, multipart_body, parse_reply, read_reply

from velora.serve import ServeSettings, create_app
from velora.serve.middleware import LINGER_BYTES
from velora.serve.run import uvicorn_config

KEY = "slow-key"
BIG = 8 * 2**20  # an upload 8 times the 1 MB limit


@pytest.fixture(scope="module")
def server(tiny_adapter_dir):
    settings = ServeSettings(model_path=str(tiny_adapter_dir), api_key=KEY, max_upload_mb=1)
    app = create_app(settings)
    with live_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def strict_url(tiny_adapter_dir):
    settings = ServeSettings(model_path=str(tiny_adapter_dir), header_timeout=1, body_timeout=1, keep_alive_timeout=1)
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture()
def server_log():
    """Records of velora's and uvicorn's loggers while the test runs (uvicorn's do not reach the root logger)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("velora.serve", "uvicorn", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield records
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def metric(url: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def connect(url: str, timeout: float = 30) -> socket.socket:
    return socket.create_connection(host_port(url), timeout=timeout)


def wait_for(condition, what: str, guard: float = 30.0):
    deadline = time.monotonic() + guard
    while not (result := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return result


def big_upload() -> tuple[bytes, str]:
    return multipart_body({"hypothesis": "h"}, b"\0" * BIG)


def assert_413_json(status: int, body: bytes) -> None:
    assert status == 413, body[:200]
    answer = json.loads(body)
    assert answer["field"] == "body" and "1 MB" in answer["detail"]


# -- the body limit; item 4: every client reads the 413 -------------------------------------------------------------

def test_oversize_body_is_413_json(url):
    response = httpx.post(f"{url}/check", files={"image": ("a.png", b"\0" * (2**20 + 1))}, data={"hypothesis": "h"},
                          headers={"X-API-Key": KEY}, timeout=60)
    assert_413_json(response.status_code, response.content)


def test_oversize_streamed_body_is_cut_at_the_limit(url):
    def chunks():  # no Content-Length: the server must count while reading
        yield b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 65536
    response = httpx.post(f"{url}/check", content=chunks(), timeout=60,
                          headers={"Content-Type": "multipart/form-data; boundary=xx", "X-API-Key": KEY})
    assert_413_json(response.status_code, response.content)


def test_2gb_content_length_is_refused_before_reading(url):
    with connect(url) as sock:
        sock.sendall(f"POST /check HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: multipart/form-data; "
                     f"boundary=xx\r\nContent-Length: {2**31}\r\n\r\n".encode() + b"\0" * 1024)
        reply = b""
        while b"}" not in reply:  # headers, then the JSON body
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    status, headers, body = parse_reply(reply)
    assert_413_json(status, body)


def test_oversize_upload_413_reaches_urllib(url):
    """urllib always sends Connection: close and reads nothing until it has sent the whole body."""
    body, content_type = big_upload()
    request = urllib.request.Request(f"{url}/check", data=body, method="POST",
                                     headers={"Content-Type": content_type, "X-API-Key": KEY})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert_413_json(refused.value.code, refused.value.read())
    assert refused.value.headers["Connection"] == "close"


def test_oversize_upload_413_reaches_requests(url):
    response = requests.post(f"{url}/check", files={"image": ("a.png", b"\0" * BIG)}, data={"hypothesis": "h"},
                             headers={"X-API-Key": KEY}, timeout=60)
    assert_413_json(response.status_code, response.content)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
@pytest.mark.parametrize("expect", ["Expect:", "Expect: 100-continue"], ids=["no-expect", "expect-100-continue"])
def test_oversize_upload_413_reaches_curl(url, tmp_path, expect):
    upload = tmp_path / "big.png"
    upload.write_bytes(b"\0" * BIG)
    out = tmp_path / "answer.json"
    done = subprocess.run(["curl", "-sS", "-o", str(out), "-w", "%{http_code}", "--max-time", "60", "-H", expect,
                           "-H", f"X-API-Key: {KEY}", "-F", f"image=@{upload}", "-F", "hypothesis=h", f"{url}/check"],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert_413_json(int(done.stdout), out.read_bytes())


def test_oversize_upload_413_reaches_a_raw_socket(url):
    body, content_type = big_upload()
    with connect(url) as sock:
        sock.sendall(f"POST /check HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nConnection: close\r\n"
                     f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status, headers, answer = parse_reply(read_reply(sock))
    assert_413_json(status, answer)


def test_unauthorized_upload_401_reaches_urllib(url):
    """Any answer given before the body is read lingers the same way, not only 413."""
    body, content_type = multipart_body({"hypothesis": "h"}, b"\0" * 900_000)
    request = urllib.request.Request(f"{url}/check", data=body, method="POST", headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 401 and "API key" in json.loads(refused.value.read())["detail"]


def test_lingering_is_bounded(url):
    """A client that keeps sending a 2 GB body is cut off after a bounded drain, having had its 413."""
    replies: list[bytes] = []
    with connect(url) as sock:
        sock.sendall(f"POST /check HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: multipart/form-data; "
                     f"boundary=x\r\nContent-Length: {2**31}\r\n\r\n".encode())
        reader = threading.Thread(target=lambda: replies.append(sock.recv(65536)), daemon=True)
        reader.start()
        sent, chunk = 0, b"\0" * 2**20
        with pytest.raises(OSError):  # reset or broken pipe once the server has closed
            while sent < 4 * LINGER_BYTES:
                sock.sendall(chunk)
                sent += len(chunk)
        reader.join(30)
    assert sent < 4 * LINGER_BYTES
    assert b" 413 " in replies[0] and b"connection: close" in replies[0].lower()


# -- item 5: slow and idle clients ----------------------------------------------------------------------------------

def trickle(sock: socket.socket, byte: bytes, guard: float = 30.0) -> bytes:
    """Send one byte every 50 ms until the server answers or closes; return what it sent."""
    deadline = time.monotonic() + guard
    while time.monotonic() < deadline:
        try:
            sock.sendall(byte)
        except OSError:
            break
        if select.select([sock], [], [], 0.05)[0]:
            break
    return read_reply(sock)


def test_headers_sent_byte_by_byte_get_408(strict_url, server_log):
    with connect(strict_url) as sock:
        sock.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        status, headers, body = parse_reply(trickle(sock, b"a"))
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["field"] == "headers" and "--header_timeout" in json.loads(body)["detail"]
    assert any(" 408 " in r.getMessage() and "request headers incomplete" in r.getMessage() for r in server_log)


def test_body_sent_byte_by_byte_gets_408(strict_url):
    with connect(strict_url) as sock:
        sock.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     b"Content-Length: 100000\r\n\r\n--x\r\n")
        status, headers, body = parse_reply(trickle(sock, b"a"))
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["field"] == "body" and "--body_timeout" in json.loads(body)["detail"]


def test_a_connection_that_sends_nothing_is_closed(strict_url):
    with connect(strict_url) as sock:
        assert read_reply(sock) == b""  # closed quietly, without an answer nobody asked for


def test_an_idle_keep_alive_connection_is_closed(strict_url, tiny_adapter_dir):
    assert uvicorn_config(create_app(ServeSettings(keep_alive_timeout=7))).timeout_keep_alive == 7
    with connect(strict_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = parse_reply(read_reply(sock))  # answered, then closed once idle
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_connection_cap_answers_503_json_and_spares_probes(tiny_adapter_dir):
    settings = ServeSettings(model_path=str(tiny_adapter_dir), limit_concurrency=2, warmup=False)
    with live_server(create_app(settings)) as url:
        idle = [connect(url) for _ in range(3)]
        try:
            # each probe is a connection of its own: 3 idle ones + the probe's
            wait_for(lambda: metric(url, "velora_open_connections") >= 4, "the server to accept the connections")
            response = httpx.post(f"{url}/check", files={"image": ("a.png", image_bytes(0))},
                                  data={"hypothesis": "h"}, timeout=30)
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "--limit_concurrency" in response.json()["detail"]
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: httpx.post(f"{url}/check", files={"image": ("a.png", image_bytes(0))},
                                    data={"hypothesis": "h"}, timeout=30).status_code == 200,
                 "the cap to free up once the idle connections closed")


def test_a_stalled_upload_does_not_hold_a_lone_request(server):
    """The batcher waits for company only while bytes arrive: a stalled upload must not make every lone request
    wait out --max_wait_ms (here 10 minutes, so the client's 60 s guard fails if it does)."""
    url, app = server
    batcher = app.state.service.batcher
    batcher.max_wait = 600.0
    body, content_type = multipart_body({"hypothesis": "h"}, image_bytes(1))
    try:
        with connect(url) as stalled:
            stalled.sendall(f"POST /check HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: {content_type}\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
            wait_for(lambda: batcher.incoming_count == 1, "the stalled upload to reach the handler")
            response = httpx.post(f"{url}/check", files={"image": ("a.png", image_bytes(2))},
                                  data={"hypothesis": "alone"}, headers={"X-API-Key": KEY}, timeout=60)
            assert response.status_code == 200 and response.json()["batch_size"] == 1
    finally:
        batcher.max_wait = app.state.settings.max_wait_ms / 1000


# -- item 6: a client gone mid-upload --------------------------------------------------------------------------------

UPLOAD_STARTS = [
    ("/check", "multipart/form-data; boundary=x",
     b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + b"\0" * 99_930),
    ("/check_batch", "application/json", b'{"items": [{"hypothesis": "h", "image": "' + b"A" * 99_958),
]


@pytest.mark.parametrize("endpoint, content_type, start", UPLOAD_STARTS, ids=["check", "check_batch"])
def test_client_gone_mid_upload_is_one_499_line(server, server_log, endpoint, content_type, start):
    url, app = server
    before = metric(url, "velora_requests_total", endpoint=endpoint, status="client_closed")
    with connect(url) as sock:
        port = sock.getsockname()[1]
        sock.sendall(f"POST {endpoint} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: {content_type}\r\n"
                     "Content-Length: 500000\r\n\r\n".encode() + start)
        wait_for(lambda: app.state.service.batcher.incoming_count == 1, "the upload to reach the handler")
    wait_for(lambda: metric(url, "velora_requests_total", endpoint=endpoint, status="client_closed") == before + 1,
             "the aborted request to be counted as client_closed")
    lines = [r.getMessage() for r in server_log if f":{port} " in r.getMessage()]
    assert len(lines) == 1, lines
    assert f'"POST {endpoint}" 499' in lines[0] and "client closed the connection during the upload" in lines[0]
    assert re.search(r"after [\d,]+ of 500,000 bytes", lines[0]), lines[0]
    assert not [r for r in server_log if r.levelno >= logging.WARNING or r.exc_info], "no traceback, no error"
    assert metric(url, "velora_requests_total", endpoint=endpoint, status="500") == 0
