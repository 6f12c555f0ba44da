"""Nothing accepted is lost, nothing stalls: session loss, failed and oversized QoS 1
messages, one slow route, drain and keep-alive under backpressure, truthful disconnect reasons."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mqtt_helpers import (
    APPS,
    Mosquitto,
    Peer,
    broker_yaml,
    client_yaml,
    mosquitto,
    port_of,
    route,
    wait_for,
)
from structlog.testing import capture_logs

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt", "clean_apps"), pytest.mark.timeout(60)]

QUICK = "shutdown: {drain_timeout: 1}"


def metric(gw: Gateway, outcome: str) -> float:
    prefix = f'gateway_mqtt_messages_total{{outcome="{outcome}"}} '
    for line in gw.metrics.render().decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


async def peer(port: int, **kwargs: Any) -> Peer:
    return await asyncio.to_thread(Peer, port, **kwargs)


def _raw_connect(port: int, keepalive: int = 60) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + b"\x00\x03raw"
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def _publish(topic: bytes, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    length, n = b"", len(body)
    while True:
        byte, n = n & 0x7F, n >> 7
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | qos << 1]) + length + body


# -- 1. client mode: the broker lost the session -------------------------------------------------
async def test_state_of_a_session_the_broker_lost_is_dropped_and_counted(tmp_path: Path) -> None:
    release = asyncio.Event()
    seen: list[bytes] = []
    finished: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        payload = (await receive())["payload"]
        seen.append(payload)
        if payload.startswith(b"old"):
            await release.wait()
        finished.append(payload)

    APPS["w"] = app
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yaml = client_yaml(broker.port, route("w/#", "w"), extra=QUICK, client_id="gw-lost",
                           reconnect="{min_delay: 0.1, max_delay: 0.5}")
        with capture_logs() as logs:
            async with Gateway.from_text(yaml) as gw:
                mode = gw.adapters["mqtt"].mode
                sender = await peer(broker.port)
                for i in range(3):
                    await asyncio.to_thread(sender.publish, f"w/{i}", b"old-%d" % i, 1)
                sender.close()
                await wait_for(lambda: len(seen) == 3, what="three messages inside the app")
                broker.kill()  # no persistence: the session is gone with the process
                await wait_for(lambda: not mode.connected, what="disconnect noticed")
                release.set()  # they finish while the gateway is disconnected
                await wait_for(lambda: len(finished) == 3, what="old messages finished")
                broker.start()
                await wait_for(lambda: mode.connected, timeout=15, what="reconnected")
                sender = await peer(broker.port)
                try:
                    # QoS 0 probes (no packet id) until the new subscription delivers
                    while not any(p == b"probe" for p in seen):
                        sender.client.publish("w/probe", b"probe", 0)
                        await asyncio.sleep(0.1)
                    for i in range(3):  # Mosquitto numbers these from packet id 1 again
                        await asyncio.to_thread(sender.publish, f"w/{i}", b"new-%d" % i, 1)
                    await wait_for(lambda: all(b"new-%d" % i in finished for i in range(3)), what="new messages routed")
                finally:
                    sender.close()
                lost = metric(gw, "session_lost")
    finally:
        broker.kill()
    assert lost == 3
    events = [e for e in logs if e["event"] == "mqtt.session_lost"]
    assert len(events) == 1 and events[0]["handled_unacknowledged"] == 3
    # the disconnect says what happened, not paho's "Unspecified error"
    reasons = [e["reason"] for e in logs if e["event"] == "mqtt.disconnected"]
    assert reasons and "Unspecified" not in reasons[0] and "connection lost" in reasons[0]


# -- 2. a failed QoS 1 message is retried by the gateway, then dead-lettered or disconnected ---
async def test_broker_mode_retries_a_failed_message_itself_then_dead_letters_it() -> None:
    attempts: Counter[bytes] = Counter()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        payload = (await receive())["payload"]
        attempts[payload] += 1
        if payload == b"poison" or (payload == b"flaky" and attempts[payload] < 3):
            raise RuntimeError("cannot handle it now")

    APPS["j"] = app
    retry = "{attempts: 3, delay: 0.05, exhausted: dead_letter, dead_letter_topic: dead}"
    with capture_logs() as logs:
        async with Gateway.from_text(broker_yaml(route("job/#", "j"), extra=QUICK, retry=retry)) as gw:
            port = port_of(gw)
            watcher = await peer(port)
            device = await peer(port, client_id="dev-retry", clean=False)
            try:
                await asyncio.to_thread(watcher.subscribe, "dead/#", 1)
                infos = [device.client.publish("job/a", p, 1) for p in (b"flaky", b"poison", b"1", b"2", b"3")]
                # all acknowledged on the same connection: no reconnect needed, no window left full
                await wait_for(lambda: all(i.is_published() for i in infos), timeout=15, what="all acknowledged")
                dead = await watcher.get(timeout=10)
            finally:
                device.close()
                watcher.close()
            dead_lettered, failed = metric(gw, "dead_lettered"), metric(gw, "failed")
    assert attempts == {b"flaky": 3, b"poison": 3, b"1": 1, b"2": 1, b"3": 1}
    assert (dead.topic, dead.payload) == ("dead/job/a", b"poison")
    assert dead_lettered == 1 and failed == 5  # flaky twice, poison three times
    assert not [e for e in logs if "broker will redeliver" in str(e.get("why", ""))]
    gave_up = [e for e in logs if e["event"] == "mqtt.dead_lettered"]
    assert len(gave_up) == 1 and gave_up[0]["attempts"] == 3 and gave_up[0]["client_id"] == "dev-retry"


async def test_a_dead_letter_goes_to_the_channel_layer_with_what_failed() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        raise ValueError("bad reading")

    APPS["j"] = app
    retry = "{attempts: 2, delay: 0.05, exhausted: dead_letter, dead_letter_channel: mqtt.dead_letters}"
    async with Gateway.from_text(broker_yaml(route("job/#", "j"), extra=QUICK, retry=retry)) as gw:
        device = await peer(port_of(gw), client_id="dev-dl")
        try:
            await asyncio.to_thread(device.publish, "job/7", b"poison", 1)  # returns once acknowledged
            letter = await asyncio.wait_for(gw.layer.receive("mqtt.dead_letters"), 10)
        finally:
            device.close()
    assert letter == {
        "type": "mqtt.dead_letter", "topic": "job/7", "payload": b"poison", "qos": 1, "route": "j", "attempts": 2,
        "client_id": "dev-dl", "error": "ValueError: bad reading",
    }


async def test_broker_mode_closes_the_connection_when_retries_are_exhausted() -> None:
    attempts: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        attempts.append((await receive())["payload"])
        raise RuntimeError("never")

    APPS["j"] = app
    yaml = broker_yaml(route("job/#", "j"), extra=QUICK, retry="{attempts: 2, delay: 0.05, exhausted: disconnect}")
    async with Gateway.from_text(yaml) as gw:
        sock = await asyncio.to_thread(_raw_connect, port_of(gw))
        try:
            sock.sendall(_publish(b"job/x", b"poison", 1, 7))
            assert await asyncio.to_thread(sock.recv, 10) == b""  # closed, no PUBACK: the device resends it later
        finally:
            sock.close()
        gave_up = metric(gw, "gave_up")
    assert attempts == [b"poison", b"poison"] and gave_up == 1


async def test_client_mode_retries_a_failed_message_without_waiting_for_a_reconnect(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def flaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((await receive())["payload"])
        if seen.count(seen[-1]) == 1 or seen[-1] == b"poison":
            raise RuntimeError("first attempt fails")

    APPS["f"] = flaky
    with mosquitto(tmp_path) as port:
        retry = "{attempts: 3, delay: 0.05, exhausted: dead_letter, dead_letter_topic: dead}"
        yaml = client_yaml(port, route("jobs/+id", "f"), extra=QUICK, client_id="gw-retry", retry=retry)
        async with Gateway.from_text(yaml) as gw:
            mode = gw.adapters["mqtt"].mode
            watcher = Peer(port)
            sender = Peer(port)
            try:
                watcher.subscribe("dead/#", 1)
                sender.publish("jobs/1", b"job-1", qos=1)
                sender.publish("jobs/2", b"poison", qos=1)
                await wait_for(lambda: seen.count(b"job-1") == 2 and seen.count(b"poison") == 3, timeout=10, what="retries")
                dead = await watcher.get(timeout=10)
                await wait_for(lambda: not mode.inflight, what="both acknowledged")
            finally:
                sender.close()
                watcher.close()
            reconnects = mode.generation
    assert (dead.topic, dead.payload) == ("dead/jobs/2", b"poison")
    assert reconnects == 0  # retried in place: no reconnect, no 30 s stall


@pytest.mark.parametrize("mode", ["broker", "client"])
async def test_with_default_settings_a_failed_message_is_retried_within_the_connection(mode: str, tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def flaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((await receive())["payload"])
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")

    APPS["f"] = flaky
    with mosquitto(tmp_path) as mosquitto_port:
        if mode == "broker":
            yaml = broker_yaml(route("jobs/#", "f"), extra=QUICK)
        else:
            yaml = client_yaml(mosquitto_port, route("jobs/#", "f"), extra=QUICK, client_id="gw-default-retry")
        async with Gateway.from_text(yaml) as gw:
            sender = await peer(port_of(gw) if mode == "broker" else mosquitto_port, client_id="dev-default", clean=False)
            connects: list[int] = []
            sender.client.on_connect = lambda *a: connects.append(1)
            try:
                info = sender.client.publish("jobs/1", b"job", 1)
                await wait_for(lambda: len(seen) == 2, timeout=10, what="the retry")
                await wait_for(info.is_published, timeout=10, what="acknowledged")
            finally:
                sender.close()
            if mode == "client":
                assert gw.adapters["mqtt"].mode.generation == 0  # no reconnect
    assert connects == [] and seen == [b"job", b"job"]


# -- 3. an oversized QoS 1 publish is acknowledged and dropped, not a reconnect loop -----------
async def test_an_oversized_qos1_publish_is_acknowledged_and_dropped_without_a_reconnect_loop() -> None:
    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["s"] = app
    with capture_logs() as logs:
        async with Gateway.from_text(broker_yaml(route("s/#", "s"), extra=QUICK)) as gw:
            device = await peer(port_of(gw), client_id="dev-big", clean=False)
            connects: list[int] = []
            device.client.on_connect = lambda *a: connects.append(1)
            try:
                big = device.client.publish("s/big", b"x" * (2 * 1024 * 1024), 1)
                small = [device.client.publish("s/small", b"%d" % i, 1) for i in range(5)]
                await wait_for(lambda: big.is_published() and all(i.is_published() for i in small), timeout=20,
                               what="the big one acknowledged and the small ones handled")
            finally:
                device.close()
            oversized = metric(gw, "oversized")
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert connects == [] and oversized == 1
    dropped = [e for e in logs if e["event"] == "mqtt.payload_too_large"]
    assert len(dropped) == 1 and dropped[0]["size"] == 2 * 1024 * 1024 and dropped[0]["topic"] == "s/big"


async def test_an_oversized_qos2_publish_completes_its_flow_and_is_dropped() -> None:
    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["s"] = app
    async with Gateway.from_text(broker_yaml(route("s/#", "s"), extra=QUICK, max_payload=8)) as gw:
        sock = await asyncio.to_thread(_raw_connect, port_of(gw))
        try:
            await asyncio.to_thread(sock.sendall, _publish(b"s/big", b"z" * 70_000, 2, 9) + _publish(b"s/ok", b"ok"))
            assert await asyncio.to_thread(sock.recv, 4) == b"\x50\x02\x00\x09"  # PUBREC
            sock.sendall(b"\x62\x02\x00\x09")  # PUBREL
            assert await asyncio.to_thread(sock.recv, 4) == b"\x70\x02\x00\x09"  # PUBCOMP
            await wait_for(lambda: got, what="the message behind it")
        finally:
            sock.close()
        oversized = metric(gw, "oversized")
    assert got == [b"ok"] and oversized == 1


# -- 4. client mode: one slow route does not starve the others ---------------------------------
async def test_a_slow_qos0_route_does_not_starve_a_fast_route(tmp_path: Path) -> None:
    release = asyncio.Event()
    fast: list[bytes] = []
    slow: list[bytes] = []

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        slow.append((await receive())["payload"])
        await release.wait()

    async def fast_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        fast.append((await receive())["payload"])

    APPS["slow"] = slow_app
    APPS["fast"] = fast_app
    with mosquitto(tmp_path) as port:
        routes = route("bulk/#", "slow", "concurrency: 1, qos: 0, backlog: 50, drop_after: 0.5") + route("cmd/#", "fast")
        with capture_logs() as logs:
            async with Gateway.from_text(client_yaml(port, routes, extra="shutdown: {drain_timeout: 0.2}")) as gw:
                sender = Peer(port)
                try:
                    for i in range(2000):
                        sender.client.publish("bulk/x", b"%d" % i, 0)
                    for i in range(20):
                        sender.client.publish(f"cmd/{i}", b"%d" % i, 1)
                    await wait_for(lambda: len(fast) == 20, timeout=20, what="the fast route's messages")
                    waiting = gw.adapters["mqtt"].mode.dispatcher.lanes
                    slow_lane = next(lane for lane in waiting.values() if lane.name == "slow")
                    await wait_for(lambda: metric(gw, "dropped") + 1 + len(slow_lane.waiting) == 2000, timeout=20, what="the rest counted")
                finally:
                    sender.close()
                dropped, started, backlog = metric(gw, "dropped"), len(slow), len(slow_lane.waiting)
                release.set()
    # one running, the backlog full (plus the message that found it full), the rest dropped and counted
    assert started == 1 and backlog in (50, 51) and dropped == 2000 - 1 - backlog
    overflow = [e for e in logs if e["event"] == "mqtt.route_overflow"]
    assert len(overflow) == 1 and overflow[0]["route"] == "slow" and overflow[0]["backlog"] == 50


async def test_a_slow_route_that_keeps_finishing_messages_still_overflows(tmp_path: Path) -> None:
    """The slow route makes room one message at a time: its backlog must not block reading again
    after it overflowed (the fast route would wait for the whole flood)."""
    fast: list[bytes] = []

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(0.05)

    async def fast_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        fast.append((await receive())["payload"])

    APPS["slow"] = slow_app
    APPS["fast"] = fast_app
    with mosquitto(tmp_path) as port:
        routes = route("bulk/#", "slow", "concurrency: 1, qos: 0, backlog: 20, drop_after: 0.2") + route("cmd/#", "fast")
        async with Gateway.from_text(client_yaml(port, routes, extra="shutdown: {drain_timeout: 0.2}")) as gw:
            sender = Peer(port)
            try:
                for i in range(5000):  # 250 s of work for the slow route
                    sender.client.publish("bulk/x", b"%d" % i, 0)
                for i in range(20):
                    sender.client.publish(f"cmd/{i}", b"%d" % i, 1)
                await wait_for(lambda: len(fast) == 20, timeout=30, what="the fast route's messages")
            finally:
                sender.close()
            assert metric(gw, "dropped") > 0


# -- smaller ones ----------------------------------------------------------------------------------
async def test_messages_waiting_at_shutdown_are_logged_and_counted() -> None:
    started = asyncio.Event()

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        started.set()
        await asyncio.sleep(3600)

    APPS["s"] = stuck
    with capture_logs() as logs:
        async with Gateway.from_text(broker_yaml(route("s/#", "s", "concurrency: 1"), extra="shutdown: {drain_timeout: 0.2}")) as gw:
            mode = gw.adapters["mqtt"].mode
            sock = await asyncio.to_thread(_raw_connect, port_of(gw))
            try:
                sock.sendall(b"".join(_publish(b"s/x", b"%d" % i) for i in range(3)) + _publish(b"s/y", b"q1", 1, 1))
                await wait_for(lambda: started.is_set() and mode.dispatcher.backlog == 3, what="one running, three waiting")
            finally:
                sock.close()
    dropped = [e for e in logs if e["event"] == "mqtt.drain_dropped"]
    assert len(dropped) == 1 and dropped[0]["qos0"] == 2 and dropped[0]["unacknowledged"] == 1
    assert metric(gw, "shutdown_dropped") == 3


async def test_pingreq_is_answered_while_a_route_is_saturated() -> None:
    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(3600)

    APPS["s"] = stuck
    async with Gateway.from_text(broker_yaml(route("flood/#", "s", "concurrency: 1"), extra="shutdown: {drain_timeout: 0.2}")) as gw:
        sock = await asyncio.to_thread(_raw_connect, port_of(gw))
        try:
            flood = b"".join(_publish(b"flood/x", b"%d" % i) for i in range(3000))
            await asyncio.to_thread(sock.sendall, flood + b"\xc0\x00")  # QoS 0 flood, then PINGREQ
            assert await asyncio.to_thread(sock.recv, 2) == b"\xd0\x00"  # PINGRESP
        finally:
            sock.close()


async def test_a_burst_the_app_keeps_up_with_is_absorbed_without_drops() -> None:
    """QoS 0 messages are dropped only when a route stays full for its drop_after, never because
    one network read delivered more than its backlog holds."""
    got: list[bytes] = []

    async def quick(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["q"] = quick
    async with Gateway.from_text(broker_yaml(route("b/#", "q", "concurrency: 8, backlog: 100"), extra=QUICK)) as gw:
        sock = await asyncio.to_thread(_raw_connect, port_of(gw))
        try:
            await asyncio.to_thread(sock.sendall, b"".join(_publish(b"b/x", b"%d" % i) for i in range(20_000)))
            await wait_for(lambda: len(got) == 20_000, timeout=30, what="every message handled")
        finally:
            sock.close()
        assert metric(gw, "dropped") == 0
