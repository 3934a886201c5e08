"""The micro-batcher on its own, with a recording predict function: batches fill while the worker is busy, split by
adapter, never wait for nobody, isolate a failing example, respect the queue limit, finish queued work on close."""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
from PIL import Image

from velora.errors import VeloraError
from velora.predictor import Prediction
from velora.serve.batching import Arrival, BatcherClosed, Job, MicroBatcher, QueueFull


def recording_predict(calls: list, started: threading.Event | None = None, gate: threading.Event | None = None):
    def predict(jobs, adapter):
        if started is not None:
            started.set()
        if gate is not None:
            assert gate.wait(30)
        calls.append((adapter, [job.hypothesis for job in jobs]))
        if any(job.hypothesis == "boom" for job in jobs):
            raise VeloraError("boom cannot be scored")
        return [Prediction.from_probs([0.7, 0.2, 0.1]) for _ in jobs]
    return predict


def job(hypothesis: str, adapter: str = "a") -> Job:
    return Job(Image.new("RGB", (4, 4)), None, hypothesis, adapter, prompt=[0, 2])


def test_batcher_fills_batches_while_busy_and_splits_by_adapter():
    calls, started, gate = [], threading.Event(), threading.Event()
    batcher = MicroBatcher(recording_predict(calls, started, gate), max_batch_size=4, max_wait_ms=0).start()
    first = batcher.submit(job("first"))
    assert started.wait(10)  # the worker is busy with "first"; the rest queue up behind it
    futures = [batcher.submit(job(f"h{i}", "a" if i % 3 else "b")) for i in range(10)]
    gate.set()
    results = [f.result(10) for f in [first, *futures]]
    batcher.close()
    assert calls[0] == ("a", ["first"])
    assert all(len(hyps) <= 4 for _, hyps in calls) and len(calls) < 11
    assert sorted(h for _, hyps in calls[1:] for h in hyps) == sorted(f"h{i}" for i in range(10))
    size_of = {h: len(hyps) for _, hyps in calls for h in hyps}
    assert [r.batch_size for r in results] == [size_of[h] for h in ["first"] + [f"h{i}" for i in range(10)]]
    assert max(r.batch_size for r in results) > 1


def test_batcher_a_failing_example_fails_alone():
    calls = []
    batcher = MicroBatcher(recording_predict(calls), max_batch_size=3, max_wait_ms=5000).start()
    with batcher.incoming():  # requests still arriving: the batcher waits for all three, however fast it is
        futures = [batcher.submit(job(h)) for h in ("ok1", "boom", "ok2")]
    assert futures[0].result(10).prediction.label == "entailment"
    assert futures[2].result(10).batch_size == 1
    with pytest.raises(VeloraError, match="boom"):
        futures[1].result(10)
    batcher.close()
    assert calls[0] == ("a", ["ok1", "boom", "ok2"]) and len(calls) == 4


def test_batcher_never_waits_for_nobody_but_waits_for_incoming_requests():
    calls = []
    batcher = MicroBatcher(recording_predict(calls), max_batch_size=8, max_wait_ms=600_000).start()
    assert batcher.submit(job("alone")).result(30).batch_size == 1  # not held for the 10-minute max_wait
    with batcher.incoming():  # a request being read: worth waiting for
        first = batcher.submit(job("early"))
        with pytest.raises(FutureTimeout):
            first.result(0.3)
        second = batcher.submit(job("late"))
    assert first.result(30).batch_size == second.result(30).batch_size == 2
    batcher.close()
    assert calls == [("a", ["alone"]), ("a", ["early", "late"])]


def test_batcher_stops_waiting_for_a_stalled_upload():
    """An upload whose bytes stopped coming is not worth waiting for: the lone request is not held for the
    10-minute max_wait (the 30 s guard fails if it is)."""
    calls = []
    batcher = MicroBatcher(recording_predict(calls), max_batch_size=8, max_wait_ms=600_000).start()
    stalled = Arrival()  # its last byte came now, and no other will
    with batcher.incoming(stalled):
        assert batcher.incoming_count == 1
        assert batcher.submit(job("alone")).result(30).batch_size == 1
    assert batcher.incoming_count == 0
    batcher.close()


def test_batcher_queue_limit_and_close():
    calls, started, gate = [], threading.Event(), threading.Event()
    batcher = MicroBatcher(recording_predict(calls, started, gate), max_batch_size=1, max_queue=2).start()
    first = batcher.submit(job("first"))
    assert started.wait(10)
    queued = [batcher.submit(job("q1")), batcher.submit(job("q2"))]
    with pytest.raises(QueueFull):
        batcher.submit(job("one too many"))
    gate.set()
    batcher.close()  # finishes what was queued
    assert [f.result(0).batch_size for f in [first, *queued]] == [1, 1, 1]
    assert not batcher.alive
    with pytest.raises(BatcherClosed):
        batcher.submit(job("late"))
