"""A bridge from a protocol's messages to a layer group: an ASGI application the router runs.

It is routed like any application (before the protocol's own routes), so it gets what routes
get: matching with named captures, MQTT subscriptions in client mode, and the acknowledgement
rule. The message is acknowledged once ``group_send`` returned; a layer that cannot take it
(unreachable) fails the instance, so the sender retries (MQTT QoS 1/2 redelivery). A message
the transform drops is acknowledged (on purpose: ``filtered``); one the transform or the
template cannot handle is acknowledged and counted as dropped, since redelivery would fail again.
"""

from __future__ import annotations

from typing import Any

from ..layers.base import LayerUnavailable
from ..types import Receive, Scope, Send
from .config import Bridge
from .runtime import transformed
from .template import MissingField


class InboundBridge:
    """``from: {PROTOCOL: ...}`` → ``to: {group: ...}``."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.__qualname__ = f"bridge {bridge.name}"
        self.__module__ = "gateway.bridges"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        event = await receive()
        bridge, runtime = self.bridge, self.bridge.runtime
        if runtime is None or bridge.group_template is None:
            raise RuntimeError(f"bridge {bridge.name!r} runs in a started gateway (or a gateway.testing harness)")
        stats = runtime.stats
        kwargs = dict(scope.get("url_route", {}).get("kwargs", {}))
        message: dict[str, Any] = {k: v for k, v in event.items() if k != "type"}
        message.update(type=bridge.message_type or event.get("type", f"{scope['type']}.message"), kwargs=kwargs, bridge=bridge.name)
        result = await transformed(bridge, stats, message)
        if result is None:
            return
        message = result
        try:
            group = bridge.group_template.fill({**message, **kwargs})
            runtime.layer.require_valid_group_name(group)
        except (MissingField, TypeError) as exc:
            stats.outcome(bridge.name, "dropped")
            stats.dropped(bridge.name, "bad_message", str(exc), template=str(bridge.group_template))
            return
        try:
            await runtime.layer.group_send(group, message)
        except LayerUnavailable as exc:
            stats.dropped(bridge.name, "layer_unavailable", str(exc), group=group)
            raise  # not acknowledged: the sender tries again
        except TypeError as exc:  # the layer cannot carry it (Redis: not msgpack-serialisable); it never will
            stats.outcome(bridge.name, "dropped")
            stats.dropped(bridge.name, "bad_message", str(exc), group=group)
            return
        stats.outcome(bridge.name, "forwarded")


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: a bridge's state is the gateway's layer."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
