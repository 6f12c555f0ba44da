"""Bridges end to end in one gateway (memory layer), with real peers: a Mosquitto and paho
clients, the SMS provider stand-in server, a local SMTP sink. The exactly-once test across two
processes on Redis is in test_bridges_processes.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import bridge_helpers
import pytest
import sms_helpers as sms
from email_helpers import Sink
from gateway_helpers import eventually
from mqtt_helpers import Peer, mosquitto
from structlog.testing import capture_logs
from test_layer_redis_helpers import RedisServer

from gateway.bridges.config import Bridge
from gateway.bridges.outbound import OutboundBridge
from gateway.bridges.runtime import Runtime, Stats
from gateway.errors import ConfigError
from gateway.layers.memory import InMemoryChannelLayer
from gateway.metrics import Metrics
from gateway.server import Gateway

pytestmark = pytest.mark.usefixtures("clean_calls")


@pytest.fixture
def clean_calls() -> Any:
    bridge_helpers.CALLS.clear()
    yield
    bridge_helpers.CALLS.clear()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with mosquitto(tmp_path) as port:
        yield port


@pytest.fixture
def redis() -> Any:
    server = RedisServer().start()
    yield server
    server.stop()


def metric(gw: Gateway, name: str, **labels: str) -> float:
    return gw.metrics.registry.get_sample_value(name, labels) or 0.0


async def started(text: str) -> Gateway:
    gw = Gateway.from_text(text, base_dir=Path(__file__).parent)
    await gw.start()
    return gw


def mqtt_client(port: int) -> str:
    return f'  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{port}"}}\n'


# -- group -> MQTT ----------------------------------------------------------------------------------
async def test_group_to_mqtt_publishes_each_group_message_on_its_templated_topic(broker: int) -> None:
    gw = await started(f"""\
adapters:
{mqtt_client(broker)}
bridges:
  alerts-to-mqtt:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/{{level}}", qos: 1, retain: true}}}}
""")
    subscriber = Peer(broker)
    try:
        subscriber.subscribe("alerts/#", qos=1)
        assert gw.layer is not None
        await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "high", "text": "smoke in the kitchen"})
        got = await subscriber.get()
        assert got.topic == "alerts/high"
        assert json.loads(got.payload) == {"level": "high", "text": "smoke in the kitchen"}
        assert got.qos == 1
        late = Peer(broker)  # retained: a subscriber that comes later still gets it
        try:
            late.subscribe("alerts/high")
            assert (await late.get()).retain
        finally:
            late.close()
        assert metric(gw, "gateway_bridge_messages_total", bridge="alerts-to-mqtt", outcome="forwarded") == 1
    finally:
        subscriber.close()
        await gw.stop(drain=1)


async def test_a_transform_reshapes_the_message_and_a_payload_field_is_sent_as_it_is(broker: int) -> None:
    gw = await started(f"""\
adapters:
{mqtt_client(broker)}
bridges:
  loud:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/{{severity}}", payload: text}}}}
    transform: bridge_helpers:shout
""")
    subscriber = Peer(broker)
    try:
        subscriber.subscribe("alerts/#")
        assert gw.layer is not None
        await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "low", "text": "door open"})
        got = await subscriber.get()
        assert (got.topic, got.payload) == ("alerts/sev-low", b"DOOR OPEN")
    finally:
        subscriber.close()
        await gw.stop(drain=1)


# -- MQTT -> group ----------------------------------------------------------------------------------
async def test_mqtt_to_group_sends_messages_of_a_topic_filter_to_the_group_its_wildcard_names(broker: int) -> None:
    gw = await started(f"""\
adapters:
{mqtt_client(broker)}
bridges:
  temperatures:
    from: {{mqtt: {{topic: "sensors/+room/temp", qos: 1}}}}
    to: {{group: "room-{{room}}"}}
  readings:
    from: {{mqtt: {{topic: "readings/+room"}}}}
    to: {{group: {{name: "readings-{{room}}", type: sensor.reading}}}}
    transform: bridge_helpers:reading
""")
    publisher = Peer(broker)
    try:
        assert gw.layer is not None
        kitchen, hall, readings = [await gw.layer.new_channel() for _ in range(3)]
        await gw.layer.group_add("room-kitchen", kitchen)
        await gw.layer.group_add("room-hall", hall)
        await gw.layer.group_add("readings-attic", readings)
        publisher.publish("sensors/kitchen/temp", b"21.5", qos=1)
        message = await asyncio.wait_for(gw.layer.receive(kitchen), 10)
        assert message["type"] == "mqtt.message"
        assert (message["topic"], message["payload"], message["kwargs"]) == ("sensors/kitchen/temp", b"21.5", {"room": "kitchen"})
        assert message["bridge"] == "temperatures"
        publisher.publish("readings/attic", b"19", qos=1)
        assert await asyncio.wait_for(gw.layer.receive(readings), 10) == {"type": "sensor.reading", "room": "attic", "celsius": 19.0}
        assert metric(gw, "gateway_bridge_messages_total", bridge="temperatures", outcome="forwarded") == 1
        assert metric(gw, "gateway_bridge_messages_total", bridge="readings", outcome="forwarded") == 1
        assert gw.layer._channels.get(hall) is None  # type: ignore[attr-defined]  # the hall got nothing
    finally:
        publisher.close()
        await gw.stop(drain=1)


# -- group -> SMS -----------------------------------------------------------------------------------
async def test_group_to_sms_texts_the_listed_numbers_and_those_a_callable_returns() -> None:
    async with sms.cloud() as cloud:
        gw = await started(f"""\
adapters:
  http: {{listen: "127.0.0.1:0"}}
  sms: {sms.twilio_account(cloud.url)}
bridges:
  alerts-to-phones:
    from: {{group: alerts}}
    to: {{sms: {{numbers: ["+447700900123"], numbers_from: "bridge_helpers:on_call", body: "{{level}}: {{text}}"}}}}
""")
        try:
            assert gw.layer is not None
            await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "high", "text": "smoke"})
            await eventually(lambda: len(cloud.requests) == 2, timeout=10)
            sent = sorted((r["form"]["To"], r["form"]["Body"]) for r in cloud.requests)
            assert sent == [("+447700900123", "high: smoke"), ("+447700900456", "high: smoke")]
            assert bridge_helpers.CALLS == [{"type": "alert.raised", "level": "high", "text": "smoke"}]
        finally:
            await gw.stop(drain=2)


async def test_group_to_sms_filters_with_its_transform_and_counts_what_it_filtered() -> None:
    async with sms.cloud() as cloud:
        gw = await started(f"""\
adapters:
  http: {{listen: "127.0.0.1:0"}}
  sms: {sms.twilio_account(cloud.url)}
bridges:
  urgent:
    from: {{group: alerts}}
    to: {{sms: {{numbers: ["+447700900123"]}}}}
    transform: bridge_helpers:only_high
""")
        try:
            assert gw.layer is not None
            await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "low", "text": "dust"})
            await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "high", "text": "fire"})
            await eventually(lambda: len(cloud.requests) == 1, timeout=10)
            await eventually(lambda: metric(gw, "gateway_bridge_messages_total", bridge="urgent", outcome="forwarded") == 1)
            assert cloud.requests[0]["form"]["Body"] == "fire"
            assert metric(gw, "gateway_bridge_messages_total", bridge="urgent", outcome="filtered") == 1
            assert metric(gw, "gateway_bridge_messages_total", bridge="urgent", outcome="dropped") == 0
        finally:
            await gw.stop(drain=2)


async def test_group_to_sms_goes_through_the_adapter_so_a_number_that_opted_out_is_not_texted() -> None:
    async with sms.cloud() as cloud:
        gw = await started(f"""\
adapters:
  http: {{listen: "127.0.0.1:0"}}
  sms: {sms.twilio_account(cloud.url)}
bridges:
  alerts-to-phones:
    from: {{group: alerts}}
    to: {{sms: {{numbers: ["{sms.UK_SENDER}", "+447700900456"]}}}}
""")
        try:
            base = f"http://{gw.addresses['http'][0]}"
            answer = await sms.post_twilio(base, sms.twilio_message(sender=sms.UK_SENDER, body="STOP", sid="SMstop"))
            assert answer.status_code == 200
            cloud.requests.clear()  # the STOP confirmation, if the provider answers inline or not
            assert gw.layer is not None
            await gw.layer.group_send("alerts", {"type": "alert.raised", "text": "smoke"})
            await eventually(lambda: metric(gw, "gateway_sms_sent_total", account="twilio", outcome="refused") == 1, timeout=10)
            await eventually(lambda: len(cloud.requests) == 1, timeout=10)
            assert [r["form"]["To"] for r in cloud.requests] == ["+447700900456"]
        finally:
            await gw.stop(drain=2)


# -- group -> e-mail --------------------------------------------------------------------------------
async def test_group_to_email_mails_the_recipients_through_the_relay() -> None:
    async with Sink() as sink:
        gw = await started(f"""\
adapters:
  email:
    relay: {{host: 127.0.0.1, port: {sink.port}, backoff: 0.05, retries: 2, default_from: gateway@example.com}}
bridges:
  alerts-by-mail:
    from: {{group: alerts}}
    to: {{email: {{to: ["oncall@example.org"], to_from: "bridge_helpers:admins", subject: "[{{level}}] alert", text: "{{text}}"}}}}
""")
        try:
            assert gw.layer is not None
            await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "high", "text": "smoke in the kitchen"})
            await eventually(lambda: len(sink.messages) == 1, timeout=10)
            _, recipients, _ = sink.messages[0]
            assert sorted(recipients) == ["oncall@example.org", "ops@example.org"]
            mail = sink.parsed()
            assert mail["subject"] == "[high] alert"
            assert mail.get_content().strip() == "smoke in the kitchen"
        finally:
            await gw.stop(drain=2)


# -- drops: counted, logged once, never lost silently -------------------------------------------------
async def test_a_raising_transform_and_a_message_missing_a_template_field_are_counted_as_drops(broker: int) -> None:
    gw = await started(f"""\
adapters:
{mqtt_client(broker)}
bridges:
  broken:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/x"}}}}
    transform: bridge_helpers:broken
  strict:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/{{level}}"}}}}
""")
    subscriber = Peer(broker)
    try:
        subscriber.subscribe("alerts/#")
        assert gw.layer is not None
        await gw.layer.group_send("alerts", {"type": "alert.raised", "text": "no level"})
        await eventually(lambda: metric(gw, "gateway_bridge_dropped_total", bridge="strict", reason="bad_message") == 1)
        await eventually(lambda: metric(gw, "gateway_bridge_dropped_total", bridge="broken", reason="transform_error") == 1)
        assert metric(gw, "gateway_bridge_messages_total", bridge="broken", outcome="dropped") == 1
        assert metric(gw, "gateway_bridge_messages_total", bridge="strict", outcome="dropped") == 1
        assert subscriber.messages.empty()
        assert b'gateway_bridge_dropped_total{bridge="strict",reason="bad_message"} 1.0' in gw.metrics.render()
    finally:
        subscriber.close()
        await gw.stop(drain=1)


async def test_an_outbound_channel_at_capacity_is_counted_as_a_drop_and_logged_once() -> None:
    """Nobody drains `mqtt.publish` here (no adapter relays it), so it fills up."""
    from gateway_adapters.mqtt.bridge import MqttBridgeTarget

    layer = InMemoryChannelLayer(channel_capacity={"mqtt.publish": 1})
    metrics = Metrics()
    bridge = Bridge("full", "group", "mqtt", group="alerts", target_config=MqttBridgeTarget(topic="alerts"))
    runner = OutboundBridge(bridge, Runtime(layer, Stats(metrics)))
    with capture_logs() as logs:
        for _ in range(3):
            await runner.forward({"type": "alert.raised", "text": "x"})
    dropped = metrics.registry.get_sample_value("gateway_bridge_dropped_total", {"bridge": "full", "reason": "channel_full"})
    forwarded = metrics.registry.get_sample_value("gateway_bridge_messages_total", {"bridge": "full", "outcome": "forwarded"})
    assert (dropped, forwarded) == (2, 1)
    assert [e["reason"] for e in logs if e["event"] == "bridge.dropped"] == ["channel_full"]


# -- config -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("bridges", "where", "says"), [
    ('x: {from: {group: alerts}, to: {mqtt: {topic: "a/{level}"}}}', "bridges.x.to.mqtt",
     "bridge 'x': 'to: mqtt' needs the 'mqtt' adapter configured"),
    ('x: {from: {group: alerts}, to: {pager: {}}}', "bridges.x.to.pager", "unknown adapter 'pager'"),
    ('x: {from: {group: alerts}, to: {http: {}}}', "bridges.x.to.http", "the 'http' adapter cannot be a bridge's target"),
    ('x: {from: {group: alerts}, to: {sms: {numbers: ["+447700900123"]}}, transform: "bridge_helpers:nope"}', "bridges.x.transform",
     "has no attribute 'nope'"),
    ('x: {from: {group: alerts}, to: {sms: {body: "hi"}}}', "bridges.x.to.sms", "give 'numbers'"),
    ('x: {from: {group: alerts}, to: {sms: {numbers: ["12"]}}}', "bridges.x.to.sms.numbers", "'12' is not a phone number"),
    ('x: {from: {group: alerts}, to: {sms: {numbers: ["+447700900123"], body: "{level!r}"}}}', "bridges.x.to.sms.body",
     "write a field as {name}"),
    ('x: {from: {group: alerts}, to: {sms: {numbers: ["+447700900123"], numbers_from: "bridge_helpers:missing"}}}',
     "bridges.x.to.sms", "has no attribute 'missing'"),
    ('x: {from: {group: "bad group"}, to: {sms: {numbers: ["+447700900123"]}}}', "bridges.x.from.group", "a group name of ASCII"),
    ('x: {from: {group: a}, to: {group: b}}', "bridges.x.to", "a bridge from a group goes to an adapter"),
    ('x: {from: {group: a, mqtt: {}}, to: {group: b}}', "bridges.x.from", "name exactly one end"),
    ('x: {from: {email: {to: "*@x.org"}}, to: {group: b}}', "bridges.x.from.email", "needs the 'email' adapter"),
    ('x: {from: {sms: {}}, to: {sms: {numbers: ["+447700900123"]}}}', "bridges.x.to", "goes to a layer group"),
    ('x: {from: {sms: {app: "a:b"}}, to: {group: b}}', "bridges.x.from.sms.app", "a bridge is its own application"),
    ('x: {from: {sms: {}}, to: {group: "b/{who}"}}', "bridges.x.to.group", "may only hold ASCII letters"),
    ('x: {from: {sms: {}}, to: {group: b}, colour: red}', "bridges.x.colour", "unknown key 'colour'"),
    ('"a b": {from: {group: alerts}, to: {sms: {numbers: ["+447700900123"]}}}', "bridges.a b", "bridge name 'a b' may only hold"),
])
def test_config_errors_name_the_bridge_and_the_key(bridges: str, where: str, says: str) -> None:
    text = f"""\
python_path: ["{Path(__file__).parent}"]
adapters:
  http: {{listen: "127.0.0.1:0"}}
  sms: {sms.twilio_account()}
bridges:
  {bridges}
"""
    with pytest.raises(ConfigError) as caught:
        Gateway.from_text(text)
    assert caught.value.dotted_path == where, str(caught.value)
    assert says in str(caught.value)


def test_a_template_topic_with_a_wildcard_is_refused_at_load(tmp_path: Path) -> None:
    text = 'adapters:\n  mqtt: {mode: broker, listen: "127.0.0.1:0"}\nbridges:\n  x: {from: {group: a}, to: {mqtt: {topic: "a/#/{b}"}}}\n'
    with pytest.raises(ConfigError) as caught:
        Gateway.from_text(text)
    assert caught.value.dotted_path == "bridges.x.to.mqtt.topic"
    assert "wildcard" in str(caught.value)


def test_gateway_check_counts_bridges_and_gateway_routes_lists_them(write: Any) -> None:
    from gateway.cli import main

    cfg = write("gw.yaml", f"""\
python_path: ["{Path(__file__).parent}"]
adapters:
  mqtt: {{mode: broker, listen: "127.0.0.1:0"}}
routes:
  mqtt:
    - {{topic: "sensors/#", app: "mqtt_helpers:route_app"}}
bridges:
  alerts-to-mqtt:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/{{level}}", qos: 1}}}}
  temperatures:
    from: {{mqtt: {{topic: "sensors/+room/temp"}}}}
    to: {{group: "room-{{room}}"}}
""")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["check", str(cfg)]) == 0
        assert main(["routes", str(cfg)]) == 0
    text = out.getvalue()
    assert "OK (1 adapters: mqtt; 2 routes; 2 bridges)" in text
    lines = [line.split() for line in text.splitlines()]
    mqtt_rows = [row for row in lines if row[0] == "mqtt"]
    assert mqtt_rows[0][:2] == ["mqtt", "topic"] and mqtt_rows[0][2] == "sensors/+room/temp"  # the bridge comes first
    assert "temperatures" in mqtt_rows[0] and mqtt_rows[1][2] == "sensors/#"
    assert ["group", "alerts", "bridge", "->", "mqtt(topic=alerts/{level},", "qos=1)", "alerts-to-mqtt", "-"] in lines


# -- membership and reload --------------------------------------------------------------------------
async def test_the_memory_layer_keeps_the_bridge_in_its_group_past_group_expiry(broker: int) -> None:
    gw = await started(f"""\
layer: {{backend: memory, group_expiry: 0.3}}
adapters:
{mqtt_client(broker)}
bridges:
  alerts-to-mqtt:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/{{level}}"}}}}
""")
    subscriber = Peer(broker)
    try:
        subscriber.subscribe("alerts/#")
        assert gw.layer is not None
        await asyncio.sleep(1.0)  # not an assertion: three group_expiry periods pass
        await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "low", "text": "still here"})
        assert json.loads((await subscriber.get()).payload)["text"] == "still here"
    finally:
        subscriber.close()
        await gw.stop(drain=1)


async def test_a_reload_restarts_a_changed_bridge_and_stops_a_removed_one(broker: int, tmp_path: Path) -> None:
    def write(topic: str, extra: str = "") -> None:
        path.write_text(f"""\
adapters:
{mqtt_client(broker)}
bridges:
  alerts-to-mqtt:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "{topic}"}}}}
{extra}""")

    path = tmp_path / "gw.yaml"
    write("first/{level}", '  other:\n    from: {group: alerts}\n    to: {mqtt: {topic: "other"}}\n')
    gw = Gateway.from_file(path)
    await gw.start()
    subscriber = Peer(broker)
    try:
        subscriber.subscribe("#")
        assert gw.layer is not None
        await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "a", "text": "one"})
        assert sorted([(await subscriber.get()).topic for _ in range(2)]) == ["first/a", "other"]
        write("second/{level}")
        assert await gw.reload()
        await gw.layer.group_send("alerts", {"type": "alert.raised", "level": "b", "text": "two"})
        assert (await subscriber.get()).topic == "second/b"
        assert set(gw.layer._groups["alerts"]) == {"bridge.alerts-to-mqtt"}  # type: ignore[attr-defined]  # "other" left
        await asyncio.sleep(0.5)  # not an assertion: time for a stray publish from the old bridges
        assert subscriber.messages.empty()
    finally:
        subscriber.close()
        await gw.stop(drain=1)


async def test_a_communicator_runs_a_bridge_from_mqtt_into_the_harness_layer() -> None:
    from gateway.testing import Harness, MqttCommunicator

    harness = Harness.from_text("""\
adapters:
  mqtt: {mode: broker, listen: "127.0.0.1:0"}
bridges:
  temperatures:
    from: {mqtt: {topic: "sensors/+room/temp"}}
    to: {group: "room-{room}"}
""")
    member = await harness.layer.new_channel()
    await harness.layer.group_add("room-kitchen", member)
    result = await MqttCommunicator(harness, "sensors/kitchen/temp", b"21", qos=1).deliver()
    assert result.acknowledged and result.matched
    message = await asyncio.wait_for(harness.layer.receive(member), 5)
    assert (message["payload"], message["kwargs"]) == (b"21", {"room": "kitchen"})


async def test_a_message_the_redis_layer_cannot_carry_is_acknowledged_and_counted(broker: int, redis: RedisServer) -> None:
    gw = await started(f"""\
layer: {{backend: redis, url: "{redis.url}"}}
adapters:
{mqtt_client(broker)}
bridges:
  odd:
    from: {{mqtt: {{topic: "odd/+room"}}}}
    to: {{group: "room-{{room}}"}}
    transform: bridge_helpers:unpackable
""")
    publisher = Peer(broker)
    try:
        publisher.publish("odd/kitchen", b"1", qos=1)
        await eventually(lambda: metric(gw, "gateway_bridge_dropped_total", bridge="odd", reason="bad_message") == 1, timeout=10)
        assert metric(gw, "gateway_bridge_messages_total", bridge="odd", outcome="dropped") == 1
        assert metric(gw, "gateway_mqtt_messages_total", outcome="handled") == 1  # acknowledged: not redelivered
        assert metric(gw, "gateway_mqtt_messages_total", outcome="failed") == 0
    finally:
        publisher.close()
        await gw.stop(drain=1)


def test_the_core_bridges_import_no_adapter() -> None:
    """The import graph flows adapters -> core: bridges know adapters only through `bridge_target`."""
    import subprocess
    import sys

    code = ("import sys, gateway.bridges, gateway.bridges.service, gateway.bridges.inbound, gateway.config\n"
            "print(sorted(m for m in sys.modules if m.startswith(('gateway_adapters', 'adapters'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


async def test_a_bridge_whose_redis_is_not_up_at_start_joins_its_group_once_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis not up yet must not stop the start (the gateway waits, not ready, then serves): the
    bridge joins its group at its first renewal after Redis answers, and forwards from then on."""
    from gateway.bridges import outbound

    monkeypatch.setattr(outbound, "RENEW_EVERY", 0.1)
    late = RedisServer()  # a port of its own, not started yet
    async with Sink() as sink:
        with capture_logs() as logs:
            gw = await started(f"""\
layer: {{backend: redis, url: "{late.url}", prefix: late-bridge}}
adapters:
  email:
    relay: {{host: 127.0.0.1, port: {sink.port}, backoff: 0.05, retries: 2, default_from: gateway@example.com}}
bridges:
  alerts-by-mail:
    from: {{group: alerts}}
    to: {{email: {{to: ["oncall@example.org"], subject: "alert", text: "{{text}}"}}}}
""")
        try:
            assert [e for e in logs if e["event"] == "bridge.join_failed"], logs
            late.start()
            assert gw.layer is not None
            layer = gw.layer

            async def delivered() -> bool:
                await layer.group_send("alerts", {"type": "alert.raised", "text": "smoke"})
                await asyncio.sleep(0.2)
                return bool(sink.messages)

            for _ in range(100):
                try:
                    if await delivered():
                        break
                except Exception:  # noqa: BLE001 - Redis still coming up
                    await asyncio.sleep(0.1)
            assert sink.messages and sink.parsed()["subject"] == "alert"
        finally:
            await gw.stop(drain=2)
            late.stop()
