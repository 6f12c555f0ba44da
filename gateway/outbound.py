"""Relays from the layer's outbound channels (``email.send``, ``mqtt.publish``, ...) to the
adapters that deliver them.

A relay reads one channel message by message (``ChannelReader``: a stop lets the message in hand
finish within the drain) and hands each to its adapter. Every message taken is counted by
outcome; a failed or abandoned one is logged as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from .layers.reader import ChannelReader, Message

if TYPE_CHECKING:
    from .layers.base import BaseChannelLayer
    from .metrics import Metrics
    from .plugins import Adapter

log = structlog.get_logger("gateway.outbound")

OUTCOMES = ("handled", "failed", "abandoned")


class OutboundRelay(ChannelReader):
    """One layer channel to one adapter."""

    def __init__(self, layer: BaseChannelLayer, adapter: Adapter, channel: str, metrics: Metrics) -> None:
        super().__init__(layer, channel, name=f"outbound {channel}")
        self.adapter = adapter
        counter = metrics.counter(
            "gateway_outbound_messages_total",
            "Messages taken from an outbound layer channel, by outcome: handled (given to the adapter), failed (the "
            "adapter raised: not delivered), abandoned (still being delivered when the drain ended).",
            ("channel", "outcome"),
        )
        self._counted = {outcome: counter.labels(channel, outcome) for outcome in OUTCOMES}

    async def handle(self, message: Message) -> None:
        await self.adapter.handle_outbound(self.channel, message)

    def handled(self, message: Message) -> None:
        self._counted["handled"].inc()

    def failed(self, message: Message, exc: Exception) -> None:
        self._counted["failed"].inc()
        log.error("outbound.failed", adapter=self.adapter.name, channel=self.channel,
                  error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def abandoned(self, message: Message) -> None:
        self._counted["abandoned"].inc()
        log.error("outbound.abandoned", adapter=self.adapter.name, channel=self.channel,
                  why="still being delivered when the drain ended: not delivered",
                  to=message.get("to"), topic=message.get("topic"))

    def receive_failed(self, exc: Exception) -> None:
        log.warning("outbound.receive_failed", adapter=self.adapter.name, channel=self.channel,
                    error=f"{type(exc).__name__}: {exc}")
