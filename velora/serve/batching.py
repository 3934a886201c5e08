"""Micro-batching: requests from many connections share one model through one worker thread.

The worker takes the first waiting example, then gathers more until it has `max_batch_size` or `max_wait_ms` have
passed since the first, splits them by adapter and makes one model call per adapter. It only waits while other
requests are on their way (inside `incoming()`: body arriving, image decoded); an upload whose bytes stopped coming
no longer counts after `STALL_GRACE`, so a lone request is never held back, not even by a stalled client. While it
computes, new requests queue up, so under load batches fill without waiting. A failed batch is retried example by
example, so one bad example fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from velora.predictor import Prediction

logger = logging.getLogger("velora.serve")
STALL_GRACE = 0.1  # s without a byte after which an upload stops counting as "on its way"
POLL = 0.02  # s between re-checks while the worker waits for company


class Arrival:
    """A request on its way to the queue, as its body arrives (`touch` per chunk, `complete` at the end)."""

    def __init__(self, complete: bool = False):
        self.last_byte = time.monotonic()
        self.complete = complete  # body in: decoding follows, worth waiting for

    def touch(self) -> None:
        self.last_byte = time.monotonic()

    def expected(self, now: float) -> bool:
        return self.complete or now - self.last_byte < STALL_GRACE


@dataclass
class Job:
    image: Image.Image  # decoded, validated and resized by the adapter's processor before it is queued
    premise: str | None
    hypothesis: str
    adapter: str
    prompt: list[int]  # the adapter's processor's token ids, checked against its limits when the request was read


@dataclass
class Scored:
    prediction: Prediction
    batch_size: int  # examples in the model call that scored this one


PredictFn = Callable[[Sequence[Job], str], list[Prediction]]  # jobs sharing one adapter -> one prediction each


class QueueFull(Exception):
    """More examples are waiting than `max_queue`; the caller should retry later."""


class BatcherClosed(RuntimeError):
    """The server is shutting down."""


_STOP = object()


class MicroBatcher:
    def __init__(self, predict: PredictFn, max_batch_size: int = 16, max_wait_ms: float = 10.0,
                 max_queue: int = 1024, on_batch: Callable[[int, float], None] | None = None):
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch  # (examples, seconds) after each model call, from the worker thread
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="velora-batcher", daemon=True)
        self._closed = False
        self._arrivals: set[Arrival] = set()  # requests being read/decoded that will submit soon
        self._arrivals_lock = threading.Lock()

    # -- caller side -----------------------------------------------------------------------------------------

    def start(self) -> "MicroBatcher":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def incoming_count(self) -> int:
        """Requests inside `incoming()` now, stalled or not."""
        with self._arrivals_lock:
            return len(self._arrivals)

    @contextmanager
    def incoming(self, arrival: Arrival | None = None):
        """Wrap a request's work before `submit` (not the submit itself) so the worker knows it is worth waiting
        for: while `arrival`'s bytes keep coming, or always when no arrival is given (body already in)."""
        arrival = arrival or Arrival(complete=True)
        with self._arrivals_lock:
            self._arrivals.add(arrival)
        try:
            yield
        finally:
            with self._arrivals_lock:
                self._arrivals.discard(arrival)

    def _someone_coming(self) -> bool:
        now = time.monotonic()
        with self._arrivals_lock:
            return any(arrival.expected(now) for arrival in self._arrivals)

    def submit(self, job: Job) -> Future:
        """Queue one example; the Future resolves to a Scored. Raises QueueFull or BatcherClosed at once."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        future: Future = Future()
        try:
            self._queue.put_nowait((job, future))
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} examples already waiting") from None
        return future

    async def score(self, job: Job) -> Scored:
        return await asyncio.wrap_future(self.submit(job))

    def close(self, timeout: float = 30.0) -> None:
        """Finish the batches already queued, then stop the worker; later submits raise BatcherClosed."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        while True:  # anything left (worker gone or timed out) fails instead of hanging its caller
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item[1].set_running_or_notify_cancel():
                item[1].set_exception(BatcherClosed("the server is shutting down"))

    # -- worker side -----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            self._run(batch)
            if stop:
                return

    def _gather(self, first) -> tuple[list, bool]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if self._queue.empty() and (remaining <= 0 or not self._someone_coming()):
                break  # nobody else is coming (or the wait is over): do not hold these back
            try:  # short waits: an upload that stalls meanwhile must stop holding this batch
                item = self._queue.get(timeout=min(remaining, POLL)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                continue
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list) -> None:
        live = [(job, future) for job, future in batch if future.set_running_or_notify_cancel()]
        groups: dict[str, list] = {}
        for job, future in live:
            groups.setdefault(job.adapter, []).append((job, future))
        for adapter, group in groups.items():
            self._run_group(adapter, group)

    def _run_group(self, adapter: str, group: list) -> None:
        start = time.perf_counter()
        try:
            predictions = self.predict([job for job, _ in group], adapter)
            if len(predictions) != len(group):
                raise RuntimeError(f"predict returned {len(predictions)} predictions for {len(group)} examples")
        except Exception as e:
            if len(group) == 1:
                group[0][1].set_exception(e)
                return
            logger.warning("batch of %d failed (%s); scoring its examples one by one", len(group), e)
            for item in group:
                self._run_group(adapter, [item])
            return
        for (_, future), prediction in zip(group, predictions):
            future.set_result(Scored(prediction, len(group)))
        if self.on_batch is not None:
            try:
                self.on_batch(len(group), time.perf_counter() - start)
            except Exception:  # metrics must never stop the worker
                logger.exception("on_batch callback failed")
