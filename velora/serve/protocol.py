"""uvicorn's h11 protocol plus what uvicorn lacks: a timeout on request headers, and the count of open connections
for the connection cap.

uvicorn only times idle keep-alive connections (`timeout_keep_alive`), and resets that timer on every byte, so a
client sending its headers one byte a second holds a connection forever (uvicorn issue #157; PR #1685 for
`--timeout-request-start` was closed unmerged). An ASGI middleware cannot help: the app sees a request only once its
headers are complete. So the clock runs here: from the connection's first moment, and from the first byte of each
later request, the request line and headers must be in within `header_timeout`, else 408 and close.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from velora.serve.metrics import Metrics
from velora.serve.middleware import CONNECTIONS, log_request
from velora.serve.settings import ServeSettings


def timeout_response(seconds: float) -> bytes:
    body = json.dumps({"detail": f"headers: the request line and headers did not arrive within {seconds:g} s "
                                 "(--header_timeout); connection closed", "field": "headers"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a request-header timeout; tells the app how many connections are open (scope extension
    "velora.connections") so RequestGuard can answer the cap as JSON instead of uvicorn's plain-text 503."""

    header_timeout: float = 10.0
    metrics: Metrics | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the cap is RequestGuard's (JSON answer, lingering close)
        self.app = self._count_connections(self.app)
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_started = time.perf_counter()

    def _count_connections(self, app):
        async def app_with_count(scope, receive, send) -> None:
            scope.setdefault("extensions", {})[CONNECTIONS] = len(self.connections)
            await app(scope, receive, send)
        return app_with_count

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.metrics is not None:
            self.metrics.open_connections.inc()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        if self.metrics is not None:
            self.metrics.open_connections.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:  # the first bytes of a new request: its headers are on the clock
                self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def _arm_header_timer(self) -> None:
        self._request_started = time.perf_counter()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if not self.conn.trailing_data[0]:  # nothing sent at all: close quietly, as an idle keep-alive socket
            self.transport.close()
            return
        self.transport.write(timeout_response(self.header_timeout))
        self.transport.close()
        seconds = time.perf_counter() - self._request_started
        if self.metrics is not None:
            self.metrics.observe_request("other", 408, seconds)
        log_request(self.client, "-", "-", 408, seconds, f"request headers incomplete after {self.header_timeout:g} s "
                                                         "(--header_timeout); connection closed")


def guarded_protocol(settings: ServeSettings, metrics: Metrics | None) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's `http=` with this server's header timeout and metrics."""
    return type("VeloraH11Protocol", (GuardedH11Protocol,), {"header_timeout": settings.header_timeout,
                                                              "metrics": metrics})
