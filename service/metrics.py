"""Prometheus metrics on an explicit `CollectorRegistry` (one per app, so tests stay independent).

Names carry the ``ocellus_`` prefix and base units; label values are bounded
(the route label is the route template, never the raw path; model and label
values are the loaded models' own names and class names).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("decode", "preprocess", "queue", "forward", "postprocess")
REJECT_REASONS = ("overload", "too_large", "bad_image", "unsupported", "unauthorized", "timeout")


class Metrics:
    """The service's metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # HTTP
        self.http_requests = Counter(
            "ocellus_http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.http_duration = Histogram(
            "ocellus_http_request_duration_seconds", "HTTP request latency by route template.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        # Inference
        self.stage_duration = Histogram(
            "ocellus_inference_duration_seconds",
            "Time per image (decode, preprocess) or per batch (queue wait, forward, "
            "postprocess), by model and stage.",
            ["model", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "ocellus_batch_size", "Images per forward pass.", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.queue_depth = Gauge(
            "ocellus_queue_depth", "Images waiting for a forward pass.", ["model"], registry=r)
        self.in_flight = Gauge(
            "ocellus_requests_in_flight", "Inference requests being handled.", registry=r)
        self.rejected = Counter(
            "ocellus_rejected_requests_total", "Requests refused, by reason.", ["reason"],
            registry=r)
