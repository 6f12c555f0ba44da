"""Prometheus metrics, one registry per ``Gateway`` so several can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Creates metrics on first use and hands back the same object afterwards."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._made: dict[str, Counter | Gauge | Histogram] = {}

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._get(Counter, name, doc, labels)  # type: ignore[return-value]

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return self._get(Gauge, name, doc, labels)  # type: ignore[return-value]

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> Histogram:
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = Histogram(
                name, doc, labels, registry=self.registry, buckets=DURATION_BUCKETS
            )
        return made  # type: ignore[return-value]

    def _get(self, kind: type, name: str, doc: str, labels: Sequence[str]) -> Counter | Gauge:
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = kind(name, doc, labels, registry=self.registry)
        elif not isinstance(made, kind):
            raise ValueError(f"metric {name!r} already exists as a {type(made).__name__}")
        return made  # type: ignore[return-value]

    def render(self) -> bytes:
        return generate_latest(self.registry)
