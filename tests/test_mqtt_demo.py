"""The demo route: a reading published on the embedded broker reaches the demo page's group."""

from __future__ import annotations

import asyncio

import pytest
from mqtt_helpers import Peer, broker_yaml, port_of

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt"), pytest.mark.timeout(30)]


async def test_temperature_reading_reaches_the_demo_group() -> None:
    yaml = broker_yaml(
        '    - {topic: "sensors/+device/temperature", app: "gateway.demo.sensors:TemperatureConsumer"}\n',
        extra="shutdown: {drain_timeout: 1}",
    )
    async with Gateway.from_text(yaml) as gw:
        page = await gw.layer.new_channel()
        await gw.layer.group_add("demo", page)
        device = await asyncio.to_thread(Peer, port_of(gw))
        try:
            await asyncio.to_thread(device.publish, "sensors/kitchen/temperature", b"21.5", 1)
            event = await asyncio.wait_for(gw.layer.receive(page), 5)
            await asyncio.to_thread(device.publish, "sensors/attic/temperature", b"warm", 1)
            odd = await asyncio.wait_for(gw.layer.receive(page), 5)
        finally:
            device.close()
    assert event == {"type": "demo.event", "source": "mqtt", "text": "kitchen: 21.5 °C"}
    assert odd["text"].startswith("attic: unreadable reading")
