"""The hot-path metrics (``loop_counter``, ``loop_histogram``) expose exactly what
prometheus_client's own Counter and Histogram do for the same updates."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import DURATION_BUCKETS, Metrics

# on each side of bucket bounds, on a bound itself (le is inclusive), and past the last one
SAMPLES = [0.0, 0.0005, 0.001, 0.0011, 0.05, 0.3, 0.3, 2.5, 59.9, 60, 61, 1e6]


def _samples(text: bytes) -> set[str]:
    """Exposition lines without the ``_created`` timestamps only prometheus_client has."""
    return {line for line in text.decode().splitlines() if "_created" not in line}


def test_loop_metrics_expose_what_prometheus_client_would() -> None:
    ours = Metrics()
    counter = ours.loop_counter("demo_things_total", "Things.", ("kind",))
    histogram = ours.loop_histogram("demo_seconds", "Durations.", ("kind",))
    ref_registry = CollectorRegistry()
    ref_counter = Counter("demo_things_total", "Things.", ("kind",), registry=ref_registry)
    ref_histogram = Histogram("demo_seconds", "Durations.", ("kind",), registry=ref_registry, buckets=DURATION_BUCKETS)
    for i, value in enumerate(SAMPLES):
        kind = "a" if i % 3 else "b"
        counter.labels(kind).inc()
        ref_counter.labels(kind).inc()
        histogram.labels(kind).observe(value)
        ref_histogram.labels(kind).observe(value)
    counter.labels("a").inc(2.5)
    ref_counter.labels("a").inc(2.5)
    assert _samples(ours.render()) == _samples(generate_latest(ref_registry))
    assert ours.registry.get_sample_value("demo_seconds_bucket", {"kind": "a", "le": "60.0"}) == 6


def test_loop_metric_names_and_labels_are_checked() -> None:
    metrics = Metrics()
    counter = metrics.loop_counter("demo_total", "Demo.", ("a", "b"))
    assert metrics.loop_counter("demo_total", "Demo.", ("a", "b")) is counter
    with pytest.raises(ValueError, match="already exists as a LoopCounter"):
        metrics.loop_histogram("demo_total", "Demo.")
    with pytest.raises(ValueError, match=r"expected labels \('a', 'b'\)"):
        counter.labels("only-one")
