"""Relays from the layer's outbound channels (``email.send``, ``mqtt.publish``, ...) to the
adapters that deliver them.

A relay takes one message at a time from its channel and hands it to the adapter. The message
is the relay's from the moment the layer gave it up, so a stop must not cut it short: stopping
first interrupts only the wait for the next message, then gives the message in hand the drain
to finish; one still running when the drain ends is cancelled, and counted and logged as
abandoned. Before, the relay task was cancelled at once and such a message vanished silently.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .layers.base import BaseChannelLayer
    from .metrics import Metrics
    from .plugins import Adapter

log = structlog.get_logger("gateway.outbound")

RECEIVE_RETRY = 1.0
"""Seconds between attempts to receive while the layer is unreachable."""
CANCEL_GRACE = 1.0
"""Seconds a cancelled delivery gets to end before the stop goes on without it."""
OUTCOMES = ("handled", "failed", "abandoned")


class OutboundRelay:
    """One layer channel to one adapter, message by message."""

    def __init__(self, layer: BaseChannelLayer, adapter: Adapter, channel: str, metrics: Metrics) -> None:
        self.layer = layer
        self.adapter = adapter
        self.channel = channel
        counter = metrics.counter(
            "gateway_outbound_messages_total",
            "Messages taken from an outbound layer channel, by outcome: handled (given to the adapter), failed (the "
            "adapter raised: not delivered), abandoned (still being delivered when the drain ended).",
            ("channel", "outcome"),
        )
        self._counted = {outcome: counter.labels(channel, outcome) for outcome in OUTCOMES}
        self._stopping = False
        self._receiving: asyncio.Future[dict[str, Any]] | None = None
        self._message: dict[str, Any] | None = None  # taken from the channel, not yet delivered
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"outbound {channel}")

    async def _run(self) -> None:
        while not self._stopping:
            self._receiving = asyncio.ensure_future(self.layer.receive(self.channel))
            try:
                message = await self._receiving
            except asyncio.CancelledError:
                if self._stopping and self._receiving.cancelled():
                    return  # stop() interrupted the wait: nothing was taken
                if not self._receiving.done():
                    self._receiving.cancel()  # no orphan receive that would take a message nobody handles
                if self._receiving.done() and not self._receiving.cancelled() and self._receiving.exception() is None:
                    self._message = self._receiving.result()  # taken, then cancelled before it was handed over
                    self._abandoned(self._message)
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. Redis away: keep the relay alive
                log.warning("outbound.receive_failed", adapter=self.adapter.name, channel=self.channel,
                            error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(RECEIVE_RETRY)
                continue
            self._message = message
            try:
                await self.adapter.handle_outbound(self.channel, message)
            except asyncio.CancelledError:
                self._abandoned(message)
                raise
            except Exception as exc:  # logged, counted, and the relay goes on
                self._counted["failed"].inc()
                log.error("outbound.failed", adapter=self.adapter.name, channel=self.channel,
                          error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            else:
                if self._message is not None:  # None: stop() gave up on it and counted it abandoned
                    self._counted["handled"].inc()
            self._message = None

    def _abandoned(self, message: dict[str, Any]) -> None:
        if self._message is None:
            return  # counted already
        self._message = None
        self._counted["abandoned"].inc()
        log.error("outbound.abandoned", adapter=self.adapter.name, channel=self.channel,
                  why="still being delivered when the drain ended: not delivered",
                  to=message.get("to"), topic=message.get("topic"))

    async def stop(self, drain: float) -> None:
        """Take no more messages; let the one in hand finish within ``drain`` seconds."""
        self._stopping = True
        if self._receiving is not None and not self._receiving.done():
            self._receiving.cancel()
        await asyncio.wait([self.task], timeout=max(drain, 0.0))
        if self.task.done():
            return
        self.task.cancel()
        await asyncio.wait([self.task], timeout=CANCEL_GRACE)
        if not self.task.done():  # a library swallowed the cancellation (aiosmtplib can) and waits on
            self._abandoned(self._message or {})  # its peer: give up on it rather than hang the stop
