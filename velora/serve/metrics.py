"""Prometheus metrics of one server, in its own registry (several apps may live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from velora.predictor import Prediction

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, low_confidence: float):
        self.low_confidence_threshold = low_confidence
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("velora_requests", "HTTP requests by endpoint and status code "
                                "(client_closed: the client left mid-upload).",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("velora_request_latency_seconds", "HTTP request latency, body read to response.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("velora_batch_size", "Examples scored together in one model call.",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("velora_batch_seconds", "Duration of one model call.",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.predictions = Counter("velora_predictions", "Predictions by adapter and label.",
                                   ["adapter", "label"], registry=registry)
        self.low_confidence = Counter("velora_low_confidence", f"Predictions with confidence < {low_confidence}.",
                                      ["adapter"], registry=registry)
        self.queue_depth = Gauge("velora_queue_depth", "Examples waiting for the model.", registry=registry)
        self.info = Gauge("velora_model_info", "The model being served, by name (value is always 1).",
                          ["model", "adapters"], registry=registry)
        self.open_connections = Gauge("velora_open_connections", "HTTP connections open now.", registry=registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_prediction(self, adapter: str, prediction: Prediction) -> None:
        self.predictions.labels(adapter, prediction.label).inc()
        if prediction.confidence < self.low_confidence_threshold:
            self.low_confidence.labels(adapter).inc()

    def observe_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
