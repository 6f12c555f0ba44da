"""A bridge from a layer group to an adapter, as it runs in one gateway process.

The bridge is a member of its group under one channel name shared by every process,
``bridge.<name>``: a normal (not process-specific) channel, which the layer treats as a queue.
Each group message is queued there once, whatever the number of processes, and each process
runs a receive loop on it; a receive takes a message away, so exactly one process handles it
and hands its events to the adapter's outbound channel, where again exactly one process
delivers each. Memberships expire (``group_expiry``) and can be lost (a Redis restarted
empty), so every process renews this one while it runs; a process that stops does not leave
the group, since the others still serve it (a membership nobody renews expires on its own).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from ..layers.base import ChannelFull, LayerUnavailable
from ..layers.reader import ChannelReader, Message
from .config import Bridge
from .runtime import Runtime, transformed
from .target import BridgeMessageError

log = structlog.get_logger("gateway.bridges")

RENEW_EVERY = 10.0
"""Longest time between two renewals of the group membership (seconds); a shorter
``group_expiry`` renews at a third of it. Also how soon a membership lost with Redis's data
(a restart without persistence) is back."""
FINISH_TIMEOUT = 5.0
"""Seconds a message taken when the gateway stops gets to be forwarded."""


class _Forwarder(ChannelReader):
    """Reads the bridge's channel (a stop lets the message in hand finish) and forwards each."""

    def __init__(self, bridge: OutboundBridge) -> None:
        super().__init__(bridge.runtime.layer, bridge.bridge.channel, name=f"bridge-{bridge.bridge.name}")
        self.bridge = bridge

    async def handle(self, message: Message) -> None:
        await self.bridge.forward(message)  # counts its own outcome

    def failed(self, message: Message, exc: Exception) -> None:  # a bug: the next message is forwarded
        self.bridge.runtime.stats.outcome(self.bridge.bridge.name, "dropped")
        log.error("bridge.forward_failed", bridge=self.bridge.bridge.name, error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def abandoned(self, message: Message) -> None:
        self.bridge.runtime.stats.outcome(self.bridge.bridge.name, "dropped")
        log.warning("bridge.forward_abandoned", bridge=self.bridge.bridge.name,
                    reason=f"the gateway stopped and forwarding took longer than {FINISH_TIMEOUT}s")

    def receive_failed(self, exc: Exception) -> None:
        log.warning("bridge.receive_failed", bridge=self.bridge.bridge.name, error=f"{type(exc).__name__}: {exc}")


class OutboundBridge:
    """Joins the group, keeps the membership alive, and forwards what arrives on the channel."""

    def __init__(self, bridge: Bridge, runtime: Runtime) -> None:
        self.bridge = bridge
        self.runtime = runtime
        self._forwarder: _Forwarder | None = None
        self._renewing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join before returning: a group_send made once the gateway is started reaches the bridge.
        A layer not reachable yet (Redis still coming up) does not stop the start: the gateway
        reports it not ready, and the first renewal after it answers joins the group."""
        layer, bridge = self.runtime.layer, self.bridge
        assert bridge.group is not None
        try:
            await layer.group_add(bridge.group, bridge.channel)
        except LayerUnavailable as exc:
            log.warning("bridge.join_failed", bridge=bridge.name, group=bridge.group, error=str(exc),
                        why="the layer is not reachable yet; the bridge joins at its next renewal")
        self._forwarder = _Forwarder(self)
        self._forwarder.start()
        self._renewing = asyncio.get_running_loop().create_task(self._renew(), name=f"bridge-{bridge.name}-renew")
        log.info("bridge.started", bridge=bridge.name, group=bridge.group, to=bridge.describe_target())

    async def stop(self, *, leave: bool = False) -> None:
        """Stop taking messages (one being forwarded is finished first when it is quick). The
        membership stays for the other processes, unless ``leave``: the bridge was removed from
        the config (a process still running the old config re-adds it at its next renewal)."""
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
            self._renewing = None
        if self._forwarder is not None:
            await self._forwarder.stop(FINISH_TIMEOUT)
            self._forwarder = None
        if leave:
            assert self.bridge.group is not None
            try:
                await self.runtime.layer.group_discard(self.bridge.group, self.bridge.channel)
            except Exception as exc:  # noqa: BLE001 - it expires on its own (group_expiry)
                log.warning("bridge.leave_failed", bridge=self.bridge.name, group=self.bridge.group, error=f"{type(exc).__name__}: {exc}")

    async def _renew(self) -> None:
        layer, bridge = self.runtime.layer, self.bridge
        assert bridge.group is not None
        every = max(min(layer.group_expiry / 3, RENEW_EVERY), 0.05)
        while True:
            await asyncio.sleep(every)
            try:
                await layer.group_add(bridge.group, bridge.channel)
            except Exception as exc:  # noqa: BLE001 - e.g. Redis away: try again next time
                log.warning("bridge.renew_failed", bridge=bridge.name, group=bridge.group, error=f"{type(exc).__name__}: {exc}")

    async def forward(self, message: dict[str, Any]) -> None:
        """Transform one group message, turn it into outbound events and queue them."""
        bridge, stats, layer = self.bridge, self.runtime.stats, self.runtime.layer
        assert bridge.target_config is not None
        result = await transformed(bridge, stats, message)
        if result is None:
            return
        message = result
        try:
            events = await bridge.target_config.outbound(message)
            for _, event in events:
                spec = bridge.specs.get(event.get("type", ""))
                problem = spec.problem(event) if spec is not None else None
                if problem:
                    raise BridgeMessageError(f"{event.get('type')!r} event: {problem}")
        except Exception as exc:  # noqa: BLE001 - BridgeMessageError, or a user's callable raising
            stats.outcome(bridge.name, "dropped")
            stats.dropped(bridge.name, "bad_message", f"{type(exc).__name__}: {exc}", group=bridge.group)
            return
        lost = 0
        for channel, event in events:
            try:
                await layer.send(channel, event)
            except ChannelFull:
                lost += 1
                stats.dropped(bridge.name, "channel_full", f"the outbound channel {channel!r} is full", channel=channel,
                              capacity=layer.get_capacity(channel))
            except LayerUnavailable as exc:
                lost += 1
                stats.dropped(bridge.name, "layer_unavailable", str(exc), channel=channel)
            except TypeError as exc:  # the layer cannot carry it (Redis: not msgpack-serialisable)
                lost += 1
                stats.dropped(bridge.name, "bad_message", str(exc), channel=channel)
        stats.outcome(bridge.name, "dropped" if lost else "forwarded")
