"""One ASGI middleware around every request: the body's size and time limits, the connection cap, a lingering close
after an early answer, one log line and the request metrics.

Request headers are timed by the protocol (velora/serve/protocol.py): an ASGI app only sees a request once its
headers are in.
"""

from __future__ import annotations

import logging
import time

import anyio
from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from velora.serve.batching import Arrival
from velora.serve.metrics import Metrics
from velora.serve.settings import ServeSettings

logger = logging.getLogger("velora.serve")

LINGER_SECONDS = 5.0  # after answering before the body is in, read and drop the rest for up to this long...
LINGER_BYTES = 64 * 2**20  # ...or this many bytes, then close (nginx's "lingering close")
BODY_RATE_BYTES = 16 * 1024  # each 16 KB received extends the body's deadline by one second
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the answer"
CONNECTIONS = "velora.connections"  # scope["extensions"] key: open connections, set by the protocol
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # answered even over the connection cap


class GuardError(HTTPException):
    """An answer the guard gives itself, JSON with `field` like every other error."""

    def __init__(self, status_code: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.field = field

    def response(self) -> JSONResponse:
        body = {"detail": self.detail, **({"field": self.field} if self.field else {})}
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


class BodyTooLarge(GuardError):
    def __init__(self, limit: int):
        super().__init__(413, f"body: request body over the {limit / 2**20:g} MB limit (--max_upload_mb); "
                              "send a smaller image", "body")


class BodyTimeout(GuardError):
    def __init__(self, received: int, seconds: float):
        super().__init__(408, f"body: only {received:,} bytes arrived in {seconds:.0f} s (--body_timeout, plus 1 s "
                              f"per {BODY_RATE_BYTES // 1024} KB); send the request again on a faster connection",
                         "body")


def log_request(client: tuple | None, method: str, path: str, status: int, seconds: float, note: str = "") -> None:
    logger.info('%s "%s %s" %d %.1fms%s', f"{client[0]}:{client[1]}" if client else "-", method, path, status,
                seconds * 1000, f" {note}" if note else "")


def has_body(headers: Headers) -> bool:
    length = headers.get("content-length", "")
    return (length.isdigit() and int(length) > 0) or "chunked" in headers.get("transfer-encoding", "").lower()


class Exchange:
    """One request as the guard sees it: how much of its body arrived and when, and what was answered."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, guard: "RequestGuard"):
        self.scope, self._receive, self._send, self.guard = scope, receive, send, guard
        self.start = time.perf_counter()
        self.headers = Headers(scope=scope)
        self.arrival = Arrival(complete=not has_body(self.headers))  # the batcher waits for it while bytes come
        self.received = 0
        self.body_deadline = time.monotonic() + guard.settings.body_timeout
        self.recorded = self.client_closed = self.timed_out = False

    @property
    def body_in(self) -> bool:
        return self.arrival.complete

    async def receive(self) -> Message:
        if self.body_in:
            return await self._receive()
        try:
            with anyio.fail_after(max(self.body_deadline - time.monotonic(), 0)):
                message = await self._receive()
        except TimeoutError:
            self.timed_out = True
            raise BodyTimeout(self.received, time.perf_counter() - self.start) from None
        if message["type"] == "http.disconnect":
            self.client_closed = True  # Starlette turns it into ClientDisconnect; the guard answers nobody
        elif message["type"] == "http.request":
            chunk = len(message.get("body", b""))
            self.received += chunk
            self.body_deadline += chunk / BODY_RATE_BYTES
            self.arrival.touch()
            if self.received > self.guard.max_body:
                raise BodyTooLarge(self.guard.max_body)
            self.arrival.complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.client_closed:
            return  # nobody to answer; recorded as 499 at the end
        if message["type"] == "http.response.start":
            # logged and counted before the answer leaves, so a client that has it can also see its line
            self.record(message["status"])
            if not self.body_in:  # the rest of the body will not be read: say so, and close after answering
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            if not self.body_in and not self.timed_out:
                await self._send({**message, "more_body": True})
                await self.linger()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self._send(message)

    async def linger(self) -> None:
        """Read and drop the rest of the body (bounded), so that closing does not reset the connection under a
        client still sending, which would then never read the answer."""
        drained = 0
        with anyio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                message = await self._receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
                drained += len(message.get("body", b""))

    def record(self, status: int, note: str = "") -> None:
        if self.recorded:
            return
        self.recorded = True
        route = self.scope.get("route")
        endpoint = getattr(route, "path", None) or "other"  # the route's template, never the raw path
        seconds = time.perf_counter() - self.start
        self.guard.metrics.observe_request(endpoint, "client_closed" if status == CLIENT_CLOSED else status, seconds)
        note = note or (self.scope.get("state") or {}).get("log", "")
        log_request(self.scope.get("client"), self.scope["method"], self.scope["path"], status, seconds, note)

    def finish(self) -> None:
        if self.client_closed:
            length = self.headers.get("content-length")
            self.record(CLIENT_CLOSED, f"client closed the connection during the upload, after {self.received:,}"
                                       + (f" of {int(length):,}" if length and length.isdigit() else "") + " bytes")
        elif not self.recorded:  # an exception with no answer yet: the server error handler outside answers 500
            self.record(500)


class RequestGuard:
    """Refuses a body over `max_upload_mb` (413) before reading it when Content-Length says so, else as soon as the
    streamed bytes pass it; a body that does not arrive in time (408); requests over the connection cap (503). After
    an answer given before the body is in, it drains the rest for a few seconds (so every client reads the answer)
    and closes. A client gone mid-upload is one log line with 499 and `client_closed` in the metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, settings: ServeSettings):
        self.app = app
        self.metrics = metrics
        self.settings = settings
        self.max_body = settings.max_body_bytes
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(scope, receive, send, self)
        scope.setdefault("state", {})["arrival"] = exchange.arrival
        self.in_flight += 1
        try:
            refusal = self.refusal(scope, exchange.headers)
            if refusal is not None:
                await refusal.response()(scope, exchange.receive, exchange.send)
            else:
                await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            if not exchange.client_closed:
                raise
            # the client left mid-upload (Starlette's ClientDisconnect, or FastAPI's 400 wrapping it): no traceback
        finally:
            self.in_flight -= 1
            exchange.finish()

    def refusal(self, scope: Scope, headers: Headers) -> GuardError | None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return BodyTooLarge(self.max_body)
        cap = self.settings.limit_concurrency
        if cap is None or scope["path"] in PROBES:
            return None
        connections = scope.get("extensions", {}).get(CONNECTIONS, 0)
        if connections > cap or self.in_flight > cap:
            return GuardError(503, f"server busy: {connections} connections open, {self.in_flight} requests in "
                                   f"progress, over the cap of {cap} (--limit_concurrency); retry shortly",
                              headers={"Retry-After": "1"})
        return None
