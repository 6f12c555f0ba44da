"""AsyncMqttConsumer: the message hook, publish(), the layer, and acknowledgement on return."""

from __future__ import annotations

import asyncio
import json

import mqtt_helpers
import pytest
from mqtt_helpers import Peer, broker_yaml, port_of, wait_for

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt"), pytest.mark.timeout(30)]

YAML = broker_yaml('    - {topic: "sensors/+device/temperature", app: "mqtt_helpers:ThermoConsumer"}\n', extra="shutdown: {drain_timeout: 1}")


async def test_consumer_hook_publish_and_group_send() -> None:
    mqtt_helpers.CONSUMED.clear()
    async with Gateway.from_text(YAML) as gw:
        listener = await gw.layer.new_channel()
        await gw.layer.group_add("readings", listener)
        watcher = await asyncio.to_thread(Peer, port_of(gw))
        device = await asyncio.to_thread(Peer, port_of(gw))
        try:
            await asyncio.to_thread(watcher.subscribe, "readings/#", 1)
            await asyncio.to_thread(device.publish, "sensors/k1/temperature", b"21.5", 1)
            reply = await watcher.get()
            event = await asyncio.wait_for(gw.layer.receive(listener), 5)
        finally:
            device.close()
            watcher.close()
    assert reply.topic == "readings/k1" and json.loads(reply.payload) == {"device": "k1", "celsius": 21.5}
    assert event == {"type": "reading", "device": "k1", "celsius": 21.5}
    topic, payload, info, kwargs = mqtt_helpers.CONSUMED[0]
    assert (topic, payload, kwargs) == ("sensors/k1/temperature", b"21.5", {"device": "k1"})
    assert info == {"qos": 1, "retain": False, "dup": False}


async def test_consumer_that_raises_leaves_the_message_unacknowledged() -> None:
    async with Gateway.from_text(YAML) as gw:
        device = await asyncio.to_thread(Peer, port_of(gw))
        try:
            bad = device.client.publish("sensors/k2/temperature", b"fail", 1)
            good = device.client.publish("sensors/k2/temperature", b"20", 1)
            await wait_for(good.is_published, what="the good reading acknowledged")
            await asyncio.sleep(0.2)
            assert not bad.is_published()
        finally:
            device.close()
        text = gw.metrics.render().decode()
    assert 'gateway_mqtt_messages_total{outcome="failed"} 1.0' in text
