"""Prometheus metrics, one registry per ``Gateway`` so several can live in one process (tests)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


_Made = TypeVar("_Made", bound="Counter | Gauge | Histogram | LoopCounter | LoopHistogram")
_Loop = TypeVar("_Loop", bound="LoopCounter | LoopHistogram")


class Metrics:
    """Creates metrics on first use and hands back the same object afterwards."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._made: dict[str, Counter | Gauge | Histogram | LoopCounter | LoopHistogram] = {}

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._once(Counter, name, lambda: Counter(name, doc, labels, registry=self.registry))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return self._once(Gauge, name, lambda: Gauge(name, doc, labels, registry=self.registry))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> Histogram:
        return self._once(
            Histogram, name, lambda: Histogram(name, doc, labels, registry=self.registry, buckets=DURATION_BUCKETS)
        )

    def loop_counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> LoopCounter:
        """A counter for the hot path, updated from the event loop's thread only (see ``LoopCounter``)."""
        return self._once(LoopCounter, name, lambda: self._registered(LoopCounter(name, doc, labels)))

    def loop_histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> LoopHistogram:
        """A duration histogram (``DURATION_BUCKETS``) for the hot path, event-loop thread only."""
        return self._once(LoopHistogram, name, lambda: self._registered(LoopHistogram(name, doc, labels)))

    def _once(self, kind: type[_Made], name: str, make: Callable[[], _Made]) -> _Made:
        """The metric called ``name``, made on first use; asking for it as another kind is a bug."""
        made = self._made.get(name)
        if made is None:
            new = self._made[name] = make()
            return new
        if not isinstance(made, kind):
            raise ValueError(f"metric {name!r} already exists as a {type(made).__name__}")
        return made

    def _registered(self, collector: _Loop) -> _Loop:
        self.registry.register(collector)
        return collector

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- metrics for the per-instance hot path -----------------------------------------------------
# prometheus_client takes a lock for every increment, as it must when any thread may call it.
# The runner counts every instance (every MQTT message, every HTTP request) from the event
# loop's thread, and /metrics is served from that thread too; so these keep plain numbers and
# build the metric families only when scraped. Same names, labels and exposition as
# prometheus_client's Counter and Histogram (without the ``_created`` samples).


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS, value)] += 1  # first bucket with value <= bound
        self.sum += value


Child = TypeVar("Child", CounterChild, HistogramChild)


class _LoopMetric(Collector, Generic[Child]):
    new_child: Callable[[], Child]

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labels)
        self._children: dict[tuple[str, ...], Child] = {}

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
            child = self._children[values] = self.new_child()
        return child


class LoopCounter(_LoopMetric[CounterChild]):
    new_child = CounterChild

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        yield family


class LoopHistogram(_LoopMetric[HistogramChild]):
    new_child = HistogramChild

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        bounds = [*map(floatToGoString, DURATION_BUCKETS), "+Inf"]
        for values, child in self._children.items():
            running, buckets = 0, []
            for bound, count in zip(bounds, child.counts, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric(values, buckets, child.sum)
        yield family
