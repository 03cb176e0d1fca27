"""A real Prometheus (Debian's package) scrapes real Ocellus processes.

Two replicas, one worker each: the supported way to run more than one process
(docs/operations.md). Prometheus adds them up; no process needs another's metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import QUICK_START, png_bytes, prometheus_query, prometheus_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy/prometheus"


@pytest.fixture(scope="module")
def replicas(start_replicas, tiny_exports):
    return start_replicas(2, "--model", str(tiny_exports[0]), env=QUICK_START)


@pytest.fixture(scope="module")
def prometheus(replicas, tmp_path_factory) -> Iterator[str]:
    """The repo's config and rules, the targets swapped for the replicas, scraped and
    evaluated every second."""
    with prometheus_server([r.url.removeprefix("http://") for r in replicas],
                           tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def _wait_value(url: str, promql: str, want: float | None, timeout: float = 30) -> float:
    """Poll until the query has one sample (equal to `want` when given); bounded."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = prometheus_query(url, promql)
        if len(last) == 1:
            value = float(last[0]["value"][1])
            if (want is None and math.isfinite(value)) or value == want:
                return value
        time.sleep(0.5)
    raise AssertionError(f"{promql}: wanted {want}, last result {last}")


def _classify(server, n: int) -> None:
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            r = client.post(f"{server.url}/v1/classify",
                            files={"file": ("x.png", png_bytes(), "image/png")})
            assert r.status_code == 200, r.text


def test_prometheus_counts_requests_of_every_replica(prometheus, replicas) -> None:
    a, b = replicas
    assert _wait_value(prometheus, 'count(up{job="ocellus"} == 1)', 2) == 2
    ok = 'sum(ocellus_http_requests_total{route="/v1/classify",status="200"})'
    # Two bursts with a scrape between, so rate() over the window sees an increase.
    _classify(a, 4)
    _wait_value(prometheus, ok, 4)
    _classify(a, 2)
    _classify(b, 3)
    assert _wait_value(prometheus, ok, 9) == 9
    per_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in prometheus_query(
        prometheus, 'sum by (instance) (ocellus_http_requests_total{route="/v1/classify"})')}
    assert sorted(per_instance.values()) == [3, 6]
    p99 = _wait_value(prometheus, 'histogram_quantile(0.99, sum by (le) (rate('
                      'ocellus_http_request_duration_seconds_bucket{route="/v1/classify"}[1m])))',
                      None)
    assert 0 < p99 < 60
    assert _wait_value(prometheus, 'sum(ocellus_predictions_total{model="tiny"})', 9) == 9
    assert _wait_value(prometheus, 'count(ocellus_model_info{model="tiny"})', 2) == 2


def test_prometheus_evaluates_the_alerting_rules(prometheus, replicas) -> None:
    """Every rule of alerts.yml loads and evaluates without error on real metrics, and the
    recorded series read the real label values (route template, le="0.5", model)."""
    rules = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    want = {r.get("record") or r["alert"] for g in rules["groups"] for r in g["rules"]}
    deadline, loaded = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        r = httpx.get(f"{prometheus}/api/v1/rules", timeout=10)
        assert r.status_code == 200, r.text
        loaded = {rule["name"]: rule for g in r.json()["data"]["groups"] for rule in g["rules"]}
        if set(loaded) == want and all(rule["health"] == "ok" for rule in loaded.values()):
            break
        time.sleep(0.5)
    else:
        bad = {n: (rule["health"], rule.get("lastError")) for n, rule in loaded.items()
               if rule["health"] != "ok"}
        raise AssertionError(f"missing {sorted(want - set(loaded))}, not ok {bad}")
    _classify(replicas[0], 3)  # traffic inside the 5-minute windows, whatever ran before
    slow = _wait_value(prometheus, 'route:ocellus_http_request_duration_seconds:'
                       'slow_ratio_rate5m{route="/v1/classify"}', None)
    assert 0 <= slow <= 1
    assert 0 < _wait_value(prometheus, 'route:ocellus_http_request_duration_seconds:p99_rate5m'
                           '{route="/v1/classify"}', None) < 60
    share = _wait_value(prometheus, 'sum(model_label:ocellus_predictions:share1h{model="tiny"})',
                        None)
    assert abs(share - 1) < 1e-9
    assert 0 <= _wait_value(prometheus, 'model:ocellus_image_mean_brightness_ratio:mean1h'
                            '{model="tiny"}', None) <= 1
