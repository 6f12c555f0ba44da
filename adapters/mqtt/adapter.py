"""``MqttAdapter``: the plugin class the core loads; the two modes do the protocol work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from gateway.plugins import Adapter, AdapterContext
from gateway.schema import parse_listen
from gateway.types import Message, Scope

from .bridge import MqttBridgeTarget
from .config import MqttConfig, MqttRoute
from .events import SEND_EVENTS, outgoing
from .topics import TopicMatcher

ASGI = {"version": "3.0", "spec_version": "1.0"}


class MqttAdapter(Adapter):
    """MQTT in and out: an embedded broker (``mode: broker``) or a client of an external one."""

    name = "mqtt"
    config_model = MqttConfig
    scope_types = ("mqtt",)
    route_models: ClassVar[dict[str, type[MqttRoute]]] = {"mqtt": MqttRoute}
    send_events = SEND_EVENTS
    outbound_channels = ("mqtt.publish",)
    bridge_target = MqttBridgeTarget

    config: MqttConfig

    def __init__(self, config: MqttConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        self.mode: Any
        if config.mode == "client":
            from .client import ClientMode

            self.mode = ClientMode(self)
        else:
            from .broker import BrokerMode

            self.mode = BrokerMode(self)

    @classmethod
    def listen_addresses(cls, config: MqttConfig) -> list[str]:
        if config.mode != "broker":
            return []
        return [f"tcp:{parse_listen(a)}" for a in (*config.listen, *config.tls_listen, *config.ws_listen)]

    @classmethod
    def for_workers(cls, config: MqttConfig) -> MqttConfig:
        if config.mode == "broker":
            raise ValueError(
                "the embedded broker keeps its sessions, subscriptions and retained messages in one process, so "
                "devices on different workers would not see each other; run it in one process, or use client mode "
                "(mode: client) with an external broker and 'shared:' subscriptions to spread messages over workers"
            )
        return config

    @classmethod
    def mount_paths(cls, config: MqttConfig) -> list[tuple[str, tuple[str, ...]]]:
        return [(config.ws_path, ("websocket",))] if config.mode == "broker" and config.ws_path else []

    async def start(self) -> None:
        await self.mode.start()

    async def routes_changed(self) -> None:
        await self.mode.routes_changed()

    async def stop(self, drain: float) -> None:
        await self.mode.stop(drain)

    async def handle_outbound(self, channel: str, message: dict[str, Any]) -> None:
        await self.mode.publish(outgoing(message), wait=False)

    @property
    def addresses(self) -> list[str]:
        return self.mode.addresses

    # -- shared by both modes ----------------------------------------------------------------
    def subscriptions(self) -> list[tuple[str, int]]:
        """The topic filters the routes need (names removed, duplicates merged, highest QoS)."""
        filters: dict[str, int] = {}
        for route in self.context.router_for("mqtt").routes:
            matcher = route.matcher
            if not isinstance(matcher, TopicMatcher):
                continue
            qos = getattr(route.config, "qos", 1)
            filters[matcher.subscription] = max(qos, filters.get(matcher.subscription, 0))
        group = self.config.shared
        return [(f"$share/{group}/{f}" if group else f, q) for f, q in filters.items()]

    def scope(
        self, topic: str, qos: int, retain: bool, *, client_id: str | None, username: str | None,
        broker: str | None = None, properties: dict[str, Any] | None = None,
    ) -> Scope:
        return {
            "type": "mqtt",
            "asgi": ASGI,
            "mode": self.config.mode,
            "topic": topic,
            "qos": qos,
            "retain": retain,
            "client_id": client_id,
            "username": username,
            "broker": broker,
            "properties": properties or {},
        }

    def send_for(self, scope: Scope) -> Callable[[Message], Awaitable[None]]:
        publish = self.mode.publish

        async def send(event: Message) -> None:
            await publish(outgoing(event), wait=True)

        return send
