"""The MQTT part of the demo: temperature readings published to the embedded broker show up on
the demo page, e.g. ``mosquitto_pub -p 1883 -t sensors/kitchen/temperature -m 21.5`` gives
``[mqtt] kitchen: 21.5 °C``."""

from __future__ import annotations

from typing import Any

from gateway.consumers import AsyncMqttConsumer

from .chat import FEED_GROUP


class TemperatureConsumer(AsyncMqttConsumer):
    """Forwards each reading to the page; returning acknowledges the message."""

    async def message(self, topic: str, payload: bytes, **info: Any) -> None:
        device = self.kwargs.get("device", "?")
        try:
            text = f"{device}: {float(payload):g} °C"
        except ValueError:
            text = f"{device}: unreadable reading {payload[:40]!r}"
        await self.channel_layer.group_send(FEED_GROUP, {"type": "demo.event", "source": "mqtt", "text": text})
