"""What bridges share while the gateway runs: the layer, and counting what they forward, filter and drop.

Every message a bridge takes is counted once in ``gateway_bridge_messages_total`` by outcome
(``forwarded``, ``filtered`` by its transform, ``dropped``); every delivery lost is counted in
``gateway_bridge_dropped_total`` by reason and logged once per incident (the first drop of a
bridge for a reason, or the first after a quiet minute), never once per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ..layers.base import BaseChannelLayer
from ..layers.incidents import Incidents
from ..metrics import Metrics
from .target import call

if TYPE_CHECKING:
    from .config import Bridge

log = structlog.get_logger("gateway.bridges")

OUTCOMES = ("forwarded", "filtered", "dropped")
DROP_REASONS = ("transform_error", "bad_message", "channel_full", "layer_unavailable")
"""Why a bridge lost a delivery: its transform raised; the message did not fit the target (a field
its template names is missing, a callable it needs raised, the event would be invalid); the
outbound (or, inbound, a member's) channel was full; the layer could not be reached."""


class Stats:
    """The bridges' counters on one gateway's ``/metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._messages = metrics.counter(
            "gateway_bridge_messages_total", "Messages bridges took, by bridge and outcome (forwarded, filtered, dropped).",
            ("bridge", "outcome"),
        )
        self._dropped = metrics.counter(
            "gateway_bridge_dropped_total", "Deliveries bridges lost, by bridge and reason (transform_error, bad_message, "
            "channel_full, layer_unavailable).", ("bridge", "reason"),
        )
        self._incidents = Incidents()

    def register(self, bridge: str) -> None:
        """Show every series of ``bridge`` on /metrics from the start, at 0."""
        for outcome in OUTCOMES:
            self._messages.labels(bridge, outcome)
        for reason in DROP_REASONS:
            self._dropped.labels(bridge, reason)

    def outcome(self, bridge: str, outcome: str) -> None:
        self._messages.labels(bridge, outcome).inc()

    def dropped(self, bridge: str, reason: str, error: str, count: int = 1, **fields: Any) -> None:
        """``count`` deliveries lost: counted always, logged when an incident starts."""
        self._dropped.labels(bridge, reason).inc(count)
        if self._incidents.opens((bridge, reason)):
            log.warning("bridge.dropped", bridge=bridge, reason=reason, error=error, **fields)


@dataclass
class Runtime:
    """Lent to every bridge by the running gateway."""

    layer: BaseChannelLayer
    stats: Stats


async def transformed(bridge: Bridge, stats: Stats, message: dict[str, Any]) -> dict[str, Any] | None:
    """``message`` after the bridge's transform; ``None`` when it goes no further (filtered on
    purpose, or dropped because the transform failed: both counted here)."""
    if bridge.transform is None:
        return message
    try:
        result = await call(bridge.transform, message)
    except Exception as exc:  # noqa: BLE001 - the user's hook: counted and logged
        stats.outcome(bridge.name, "dropped")
        stats.dropped(bridge.name, "transform_error", f"{type(exc).__name__}: {exc}", transform=bridge.transform_spec)
        return None
    if result is None:
        stats.outcome(bridge.name, "filtered")
        return None
    if not isinstance(result, dict):
        stats.outcome(bridge.name, "dropped")
        stats.dropped(bridge.name, "transform_error", f"the transform returned {type(result).__name__}, not a dict or None",
                      transform=bridge.transform_spec)
        return None
    return result
