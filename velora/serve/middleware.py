"""One ASGI middleware around every request: the body-size limit, one log line, and the request metrics."""

from __future__ import annotations

import logging
import time

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from velora.serve.metrics import Metrics

logger = logging.getLogger("velora.serve")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=f"body: request body over the {limit / 2**20:g} MB limit "
                                                 "(--max_upload_mb); send a smaller image")
        self.field = "body"


class RequestGuard:
    """Refuses a body over `max_body` bytes (413, JSON) before reading it when Content-Length says so, else as soon
    as the streamed bytes pass it; logs `client "METHOD path" status ms [what happened]` and counts the request in
    the metrics as its answer starts."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorded = False
        received = 0

        async def send_recorded(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                # logged and counted before the answer leaves, so a client that has it can also see its line
                recorded = True
                self._record(scope, message["status"], time.perf_counter() - start)
            await send(message)

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        try:
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                error = BodyTooLarge(self.max_body)
                response = JSONResponse({"detail": error.detail, "field": error.field}, status_code=413)
                await response(scope, receive, send_recorded)
            else:
                await self.app(scope, receive_limited, send_recorded)
        finally:
            if not recorded:  # an exception with no answer yet: the server error handler outside answers 500
                self._record(scope, 500, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "other"  # the route's template, never the raw path
        self.metrics.observe_request(endpoint, status, seconds)
        client = scope.get("client")
        note = (scope.get("state") or {}).get("log", "")
        logger.info('%s "%s %s" %d %.1fms%s', f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                    scope["path"], status, seconds * 1000, f" {note}" if note else "")
