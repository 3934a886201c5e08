"""The review page's server: `create_review_app(review, store)`, a FastAPI app with the static page at `/` and the
JSON API it uses (the same API a script can use):

    GET  /api/summary                   progress: done / left, per reason; the decisions file
    GET  /api/next?after=ID             the next example to look at (undecided first, then skipped), with progress
    GET  /api/examples?offset=&limit=   examples in review order, with their decisions
    GET  /api/examples/{id}             one example
    GET  /api/examples/{id}/image       its image, re-encoded at most 640 px a side
    POST /api/decisions                 {"id", "example", "action", "label", "premise", "hypothesis", "seen"} or
                                        {"id", "action": "undo", "undoes"}: stored and fsynced before the answer

Bounds: only the examples under review have images to ask for (by id, never by path); a request body is at most
64 KiB and its texts as long as velora.review.store allows; bound to a loopback address, only loopback host
names are answered (a web page elsewhere cannot reach the API through DNS rebinding).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import uvicorn

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from velora import __version__
from velora.errors import VeloraError
from velora.labels import LABELS
from velora.review.items import REASON_WORDS, ReviewSet
from velora.review.store import ACTIONS, MAX_NAME, MAX_TEXT, Decision, DecisionStore

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
SHORTCUTS = [("1 / 2 / 3", "label: entailment / contradiction / neutral"), ("k or Enter", "keep the label"),
             ("e", "edit premise / hypothesis (Ctrl+Enter saves, Esc cancels)"), ("d", "drop the example"),
             ("s", "skip (come back later)"), ("u or Ctrl+Z", "undo the last decision")]


class DecisionIn(BaseModel):
    id: str | None = Field(None, max_length=64)
    example: str | None = Field(None, max_length=MAX_NAME)
    action: Literal[ACTIONS]
    label: str | None = Field(None, max_length=40)
    premise: str | None = Field(None, max_length=MAX_TEXT)
    hypothesis: str | None = Field(None, max_length=MAX_TEXT)
    undoes: str | None = Field(None, max_length=64)
    seen: str | None = Field(None, max_length=64)
    reviewer: str | None = Field(None, max_length=MAX_NAME)


class Review:
    """The review set and its decisions, as the endpoints see them."""

    def __init__(self, review: ReviewSet, store: DecisionStore, reviewer: str = ""):
        self.set, self.store, self.reviewer = review, store, reviewer
        self.position = {item.id: i for i, item in enumerate(review.items)}

    def example(self, example: str, decisions: dict[str, Decision]) -> dict:
        item = self.set.by_id.get(example)
        if item is None:
            raise HTTPException(404, f"example {example!r} is not under review")
        decision = decisions.get(example)
        return {**item.to_dict(), "position": self.position[example] + 1,
                "decision": decision.to_dict() if decision else None}

    def next_id(self, decisions: dict[str, Decision], after: str | None) -> str | None:
        """The first example without a decision after `after` (wrapping around), else the first skipped one."""
        items = self.set.items
        start = self.position.get(after, -1) + 1 if after else 0
        order = items[start:] + items[:start]
        fresh = next((i.id for i in order if i.id not in decisions), None)
        return fresh or next((i.id for i in order if decisions[i.id].action == "skip"), None)

    def summary(self, decisions: dict[str, Decision]) -> dict:
        reasons: dict[str, dict] = {}
        actions = dict.fromkeys(("keep", "relabel", "edit", "drop", "skip"), 0)
        for item in self.set.items:
            counts = reasons.setdefault(item.reason, {"done": 0, "left": 0, "why": REASON_WORDS.get(item.reason)})
            decision = decisions.get(item.id)
            counts["done" if decision is not None and decision.done else "left"] += 1
            if decision is not None:
                actions[decision.action] += 1
        done = sum(r["done"] for r in reasons.values())
        return {"source": str(self.set.source), "origin": str(self.set.origin), "total": len(self.set.items),
                "done": done, "left": len(self.set.items) - done, "by_reason": reasons, "actions": actions,
                "decisions_file": str(self.store.path), "damaged_lines": self.store.state.damaged_lines,
                "labels": list(LABELS), "reviewer": self.reviewer, "notes": self.set.notes[:20],
                "shortcuts": SHORTCUTS}


def get_review(request: Request) -> Review:
    return request.app.state.review


router = APIRouter(prefix="/api", tags=["review"])


@router.get("/summary")
def summary(review: Review = Depends(get_review)) -> dict:
    return review.summary(review.store.current())


@router.get("/next")
def next_example(after: str | None = Query(None, max_length=MAX_NAME), review: Review = Depends(get_review)) -> dict:
    decisions = review.store.current()
    example = review.next_id(decisions, after)
    return {"example": review.example(example, decisions) if example else None,
            "summary": review.summary(decisions)}


@router.get("/examples")
def examples(offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500),
             review: Review = Depends(get_review)) -> dict:
    decisions = review.store.current()
    chosen = review.set.items[offset:offset + limit]
    return {"total": len(review.set.items), "examples": [review.example(i.id, decisions) for i in chosen]}


@router.get("/examples/{example}")
def example(example: str, review: Review = Depends(get_review)) -> dict:
    return review.example(example, review.store.current())


@router.get("/examples/{example}/image")
def image(example: str, review: Review = Depends(get_review)) -> Response:
    try:
        data, media_type = review.set.image_bytes(example)
    except KeyError:
        raise HTTPException(404, f"example {example!r} is not under review") from None
    except VeloraError as e:
        raise HTTPException(404, f"example {example}: {e}") from None
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/decisions")
def decide(body: DecisionIn, review: Review = Depends(get_review)) -> dict:
    """Only a JSON body is read (FastAPI answers 422 to a form or text/plain one, which a page elsewhere could send
    without asking)."""
    values = body.model_dump(exclude_none=True)
    values.setdefault("reviewer", review.reviewer)
    if body.action != "undo" and body.example not in review.set.by_id:
        raise HTTPException(404, f"example {body.example!r} is not under review")
    try:
        decision, overtaken = review.store.append(values)
    except VeloraError as e:
        raise HTTPException(400, str(e)) from None
    decisions = review.store.current()
    return {"decision": decision.to_dict(), "overtaken": overtaken.to_dict() if overtaken else None,
            "example": review.example(decision.example, decisions), "summary": review.summary(decisions)}


class BodyLimit:
    """Refuse request bodies over MAX_BODY bytes (413), by Content-Length or as they stream in."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return await _too_large(send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY:
                raise HTTPException(413, f"request body over {MAX_BODY // 1024} KiB")
            return message

        return await self.app(scope, limited, send)


async def _too_large(send) -> None:
    body = b'{"detail":"request body over 64 KiB"}'
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_review_app(review: ReviewSet, store: DecisionStore, *, reviewer: str = "",
                      loopback_only: bool = True) -> FastAPI:
    """The review page and its API over `review`, deciding into `store`."""
    app = FastAPIOffline(title="velora review", version=__version__,
                         description="Review examples: keep, relabel, edit or drop each; every decision is appended "
                                     "to the decisions file at once. The page is at `/`.")
    app.state.review = Review(review, store, reviewer)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.add_middleware(BodyLimit)
    if loopback_only:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)
    return app


@contextmanager
def serve_in_thread(app: FastAPI, timeout: float = 60.0) -> Iterator[str]:
    """`app` under uvicorn on a free 127.0.0.1 port, in a thread of this process (scripted reviews, tests); yields
    its base URL and stops the server afterwards."""
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as sock:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not (server.started or time.monotonic() > deadline or not thread.is_alive()):
            time.sleep(0.02)
        if not server.started:
            raise VeloraError("the review server did not start")
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(30)
