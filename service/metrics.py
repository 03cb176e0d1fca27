"""Prometheus metrics on an explicit `CollectorRegistry` (one per app, so tests stay independent).

Names carry the ``ocellus_`` prefix and base units; label values are bounded
(the route label is the route template, never the raw path; model and label
values are the loaded models' own names and class names).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("decode", "preprocess", "queue", "forward", "postprocess")
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
PIXEL_BUCKETS = (32, 64, 128, 224, 320, 480, 640, 800, 1024, 1280, 1920, 2560, 3840, 7680)
BYTE_BUCKETS = tuple(1024 * 4**i for i in range(10))  # 1 KiB .. 256 MiB
# Every reason a request is refused for: each series exists (at 0) from the start, so
# a dashboard's rate() sees the first refusal instead of a series that appears.
REJECT_REASONS = ("overload", "too_large", "bad_image", "unsupported", "unauthorized", "timeout",
                  "loading", "disconnected", "insufficient_storage")


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
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        # Models: info and age are read from the store at scrape time (ModelCollector).
        self.model_loads = Counter(
            "ocellus_model_loads_total", "Model loads (start-up and reloads), by result.",
            ["model", "result"], registry=r)
        self.model_reloads = Counter(
            "ocellus_model_reloads_total", "Registry reloads that found a new version, by "
            "result (success: switched; failure: refused, the old version kept serving).",
            ["model", "result"], registry=r)
        self.model_last_load = Gauge(
            "ocellus_model_last_load_timestamp_seconds",
            "Unix time of the last successful load of the model.", ["model"], registry=r)
        self.models = ModelCollector()
        r.register(self.models)
        # Predictions and inputs, to notice drift.
        self.predictions = Counter(
            "ocellus_predictions_total", "Top-1 label of each classified image, or the class "
            "of each detection.", ["model", "label"], registry=r)
        self.confidence = Histogram(
            "ocellus_prediction_confidence", "Score of each top-1 class or detection.",
            ["model"], buckets=CONFIDENCE_BUCKETS, registry=r)
        self.image_width = Histogram(
            "ocellus_image_width_pixels", "Width of each decoded input image.", ["model"],
            buckets=PIXEL_BUCKETS, registry=r)
        self.image_height = Histogram(
            "ocellus_image_height_pixels", "Height of each decoded input image.", ["model"],
            buckets=PIXEL_BUCKETS, registry=r)
        self.image_bytes = Histogram(
            "ocellus_image_size_bytes", "Encoded size of each input image.", ["model"],
            buckets=BYTE_BUCKETS, registry=r)
        self.image_brightness = Histogram(
            "ocellus_image_mean_brightness_ratio", "Mean of each input image's RGB values, "
            "0 (black) to 1 (white).", ["model"], buckets=CONFIDENCE_BUCKETS, registry=r)
        self.decode_failures = Counter(
            "ocellus_image_decode_failures_total", "Uploads that could not be used as an "
            "image, by reason (bad_image, unsupported, too_large).", ["reason"], registry=r)

    def record_load(self, name: str, ok: bool, *, reload: bool = False) -> None:
        """Count a load attempt; a success also stamps the last load time."""
        result = "success" if ok else "failure"
        self.model_loads.labels(name, result).inc()
        if reload:
            self.model_reloads.labels(name, result).inc()
        if ok:
            self.model_last_load.labels(name).set_to_current_time()

    def observe_predictions(self, model: str, scored: Iterable[tuple[str, float]]) -> None:
        """Count (label, score) pairs: top-1 of each image, or each detection."""
        for label, score in scored:
            self.predictions.labels(model, label).inc()
            self.confidence.labels(model).observe(score)

    def observe_image(self, model: str, *, width: int, height: int, nbytes: int,
                      brightness: float | None) -> None:
        """Record one decoded input's size and mean brightness."""
        self.image_width.labels(model).observe(width)
        self.image_height.labels(model).observe(height)
        self.image_bytes.labels(model).observe(nbytes)
        if brightness is not None:
            self.image_brightness.labels(model).observe(brightness)


class ModelCollector(Collector):
    """``ocellus_model_info``, ``ocellus_model_age_seconds`` and ``ocellus_model_refused``.

    Read at scrape time, so a reload shows at once and a replaced version
    leaves no stale series behind. `source` is set in the app's lifespan to a
    callable returning the served models (objects with ``name``, ``manifest``,
    ``backend`` and ``loaded_at``).
    """

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[Any]] | None = None
        # Names whose load was refused and that no version serves (set in the lifespan).
        self.refused: Callable[[], Iterable[str]] | None = None

    def describe(self) -> list:
        # Describing nothing keeps registration free of a scrape-time call.
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("ocellus_model_info", "The served version of each model "
                                 "(value 1).", labels=["model", "version", "task", "backend"])
        age = GaugeMetricFamily("ocellus_model_age_seconds", "Seconds since the served "
                                "export was created (trained).", labels=["model"])
        now = time.time()
        for m in list(self.source() if self.source else ()):
            manifest = m.manifest
            info.add_metric([m.name, str(manifest.version), manifest.task,
                             getattr(m, "backend", "pytorch")], 1)
            created = manifest.created_at or m.loaded_at
            with contextlib.suppress(TypeError, ValueError):  # no or odd timestamp
                age.add_metric([m.name], max(0.0, now - datetime.fromisoformat(created)
                                             .timestamp()))
        yield info
        yield age
        refused = GaugeMetricFamily("ocellus_model_refused", "1 for each model refused at "
                                    "its load and not served (the reason: /readyz).",
                                    labels=["model"])
        for name in list(self.refused() if self.refused else ()):
            refused.add_metric([name], 1)
        yield refused
