"""Broker mode: devices (paho) connect to the gateway's embedded amqtt broker."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from mqtt_helpers import APPS, Peer, broker_yaml, connack, port_of, route, wait_for

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt", "clean_apps"), pytest.mark.timeout(30)]

QUICK = "shutdown: {drain_timeout: 1}"


async def peer(port: int, **kwargs: Any) -> Peer:
    return await asyncio.to_thread(Peer, port, **kwargs)


async def test_device_message_routed_with_client_facts_and_reply_published() -> None:
    got: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        got.append((scope, message, await receive()))
        await send({"type": "mqtt.publish", "topic": f"cmd/{scope['url_route']['kwargs']['device']}", "json": {"ack": True}, "qos": 1})

    APPS["temp"] = app
    async with Gateway.from_text(broker_yaml(route("sensors/+device/temperature", "temp"), extra=QUICK)) as gw:
        port = port_of(gw)
        assert gw.addresses["mqtt"] == [f"mqtt://127.0.0.1:{port}"]
        watcher = await peer(port)
        device = await peer(port, client_id="thermo-1")
        try:
            await asyncio.to_thread(watcher.subscribe, "cmd/#", 1)
            await asyncio.to_thread(device.publish, "sensors/kitchen/temperature", b"21.5", 1)
            reply = await watcher.get()
            assert (reply.topic, reply.payload) == ("cmd/kitchen", b'{"ack":true}')
            # the layer channel reaches devices too
            await gw.layer.send("mqtt.publish", {"type": "mqtt.publish", "topic": "cmd/all", "payload": "x"})
            m = await watcher.get()
            assert (m.topic, m.payload) == ("cmd/all", b"x")
        finally:
            device.close()
            watcher.close()
    scope, message, after = got[0]
    assert scope["mode"] == "broker" and scope["client_id"] == "thermo-1" and scope["username"] is None
    assert scope["url_route"]["kwargs"] == {"device": "kitchen"}
    assert scope["client"][0] == "127.0.0.1"
    assert message == {"type": "mqtt.message", "topic": "sensors/kitchen/temperature", "payload": b"21.5", "qos": 1, "retain": False, "dup": False}
    assert after == {"type": "mqtt.disconnect"}


async def test_other_subscribers_still_get_the_message_at_once() -> None:
    release = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await release.wait()

    APPS["slow"] = slow
    async with Gateway.from_text(broker_yaml(route("a/#", "slow"), extra=QUICK)) as gw:
        sub = await peer(port_of(gw))
        pub = await peer(port_of(gw))
        try:
            await asyncio.to_thread(sub.subscribe, "a/#", 1)
            pub.client.publish("a/b", b"1", 1)
            m = await sub.get()
            assert m.payload == b"1"
            release.set()
        finally:
            pub.close()
            sub.close()


@pytest.mark.parametrize("qos", [1, 2])
async def test_puback_waits_for_the_app(qos: int) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def gated(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        entered.set()
        await release.wait()

    APPS["g"] = gated
    async with Gateway.from_text(broker_yaml(route("g/+x", "g"), extra=QUICK)) as gw:
        device = await peer(port_of(gw))
        try:
            info = device.client.publish("g/1", b"x", qos)
            await asyncio.wait_for(entered.wait(), 5)
            await asyncio.sleep(0.3)
            assert not info.is_published(), "acknowledged before the app returned"
            release.set()
            await wait_for(info.is_published, what="PUBACK/PUBCOMP after the app returned")
        finally:
            device.close()


@pytest.mark.parametrize("qos", [1, 2])
async def test_failed_app_leaves_message_unacknowledged_and_device_resends_it(qos: int) -> None:
    seen: list[bytes] = []

    async def flaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((await receive())["payload"])
        if len(seen) == 1:
            raise RuntimeError("not this time")

    APPS["f"] = flaky
    async with Gateway.from_text(broker_yaml(route("f/+x", "f"), extra=QUICK)) as gw:
        device = await peer(port_of(gw), client_id="dev-flaky", clean=False)
        try:
            info = device.client.publish("f/1", b"m1", qos)
            await wait_for(lambda: len(seen) == 1, what="first attempt")
            await asyncio.sleep(0.3)
            assert not info.is_published()
            # the device's next session resends what was never acknowledged
            device.client.reconnect()
            await wait_for(info.is_published, timeout=10, what="resent, handled and acknowledged")
        finally:
            device.close()
    assert seen == [b"m1", b"m1"]


async def test_users_and_auth_app() -> None:
    yaml = broker_yaml(route("x", "x"), extra=QUICK, users="{alice: {password: s3cret}}", auth_app='"mqtt_helpers:device_auth"')
    async with Gateway.from_text(yaml) as gw:
        port = port_of(gw)
        assert (await asyncio.to_thread(connack, port, "alice", "s3cret")) == 0
        assert (await asyncio.to_thread(connack, port, "alice", "wrong")) != 0
        assert (await asyncio.to_thread(connack, port)) != 0  # anonymous: not with users configured
        assert (await asyncio.to_thread(connack, port, "device-42", "token-42")) == 0  # the app says yes
        assert (await asyncio.to_thread(connack, port, "device-42", "nope")) != 0


async def test_acl_with_username_and_client_id_patterns() -> None:
    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["topic"])

    APPS["all"] = app
    yaml = broker_yaml(
        route("#", "all"), extra=QUICK, users="{bob: {password: pw}}",
        acl='{"*": {publish: ["devices/%c/#"], subscribe: ["cmd/%u/+"]}}',
    )
    async with Gateway.from_text(yaml) as gw:
        bob = await peer(port_of(gw), client_id="bob-phone", username="bob", password="pw")
        try:
            assert [c.value for c in await asyncio.to_thread(bob.subscribe, "cmd/bob/+", 1)] == [1]
            assert (await asyncio.to_thread(bob.subscribe, "cmd/alice/+", 1))[0].is_failure
            assert (await asyncio.to_thread(bob.subscribe, "cmd/#", 1))[0].is_failure
            await asyncio.to_thread(bob.publish, "devices/other/x", b"no", 1)  # denied: acknowledged, dropped
            await asyncio.to_thread(bob.publish, "devices/bob-phone/x", b"yes", 1)
            await wait_for(lambda: got, what="allowed message")
            await asyncio.sleep(0.1)
        finally:
            bob.close()
    assert got == ["devices/bob-phone/x"]


async def test_backpressure_and_bound_in_broker_mode() -> None:
    running = peak = 0
    release = asyncio.Event()
    done: list[int] = []

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal running, peak
        n = int((await receive())["payload"])
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        done.append(n)

    APPS["s"] = slow
    async with Gateway.from_text(broker_yaml(route("load/#", "s", "concurrency: 2, backlog: 5"), extra=QUICK)) as gw:
        mode = gw.adapters["mqtt"].mode
        device = await peer(port_of(gw))
        try:
            for i in range(100):
                device.client.publish("load/x", str(i).encode(), 1)
            await wait_for(lambda: running == 2 and not mode.gate.is_set(), what="bound reached, reading stopped")
            assert mode.dispatcher.backlog == 5
            await asyncio.sleep(0.2)
            assert peak == 2
            release.set()
            await wait_for(lambda: len(done) == 100, timeout=10, what="all handled")
            assert mode.gate.is_set()
        finally:
            device.close()
    assert sorted(done) == list(range(100))


async def test_retained_publish_from_app_reaches_later_subscribers() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "mqtt.publish", "topic": "state/lamp", "payload": b"on", "retain": True, "qos": 1})

    APPS["a"] = app
    async with Gateway.from_text(broker_yaml(route("set/lamp", "a"), extra=QUICK)) as gw:
        device = await peer(port_of(gw))
        try:
            await asyncio.to_thread(device.publish, "set/lamp", b"on", 1)
            await asyncio.sleep(0.2)
            later = await peer(port_of(gw))
            try:
                await asyncio.to_thread(later.subscribe, "state/#", 1)
                m = await later.get()
                assert (m.topic, m.payload, m.retain) == ("state/lamp", b"on", True)
            finally:
                later.close()
        finally:
            device.close()


async def test_oversized_payload_and_garbage_client() -> None:
    got: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append(await receive())

    APPS["s"] = app
    async with Gateway.from_text(broker_yaml(route("s/#", "s"), extra=QUICK, max_payload=8, connect_timeout=1)) as gw:
        port = port_of(gw)
        # a client that sends garbage, or nothing, instead of a CONNECT is closed and hurts no one
        for garbage in (b"\xff\x00GET / HTTP/1.1\r\n\r\n" * 10, b"\x10\x7f\x00\x04MQTT", b""):
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(garbage)
                raw.settimeout(10)
                try:
                    assert await asyncio.to_thread(raw.recv, 100) == b""  # closed by the broker
                except ConnectionResetError:
                    pass
        device = await peer(port)
        try:
            await asyncio.to_thread(device.publish, "s/big", b"x" * 9, 1)  # acknowledged, refused
            await asyncio.to_thread(device.publish, "s/ok", b"x" * 8, 1)
            await wait_for(lambda: got, what="small message")
            await asyncio.sleep(0.1)
        finally:
            device.close()
        text = gw.metrics.render().decode()
    assert [m["topic"] for m in got] == ["s/ok"]
    assert 'gateway_mqtt_messages_total{outcome="oversized"} 1.0' in text


async def test_listen_address_in_use_is_a_startup_error() -> None:
    from gateway.errors import StartupError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=r"adapters\.mqtt: cannot listen on 127\.0\.0\.1:\d+: Address already in use \(another program"):
            async with Gateway.from_text(broker_yaml(route("x", "x"), extra=QUICK, listen=f'["127.0.0.1:{port}"]')):
                pass


def _raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\x03raw"  # MQTT 3.1.1, clean session, keepalive 60, id "raw"
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    return sock


def _raw_publish(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload  # QoS 0
    return bytes([0x30, len(body)]) + body


async def _closes_that_connection_only(data: bytes, event: str) -> tuple[str, list[dict[str, Any]]]:
    """Sends ``data`` after a CONNECT; the broker must close that connection, log ``event`` and
    go on serving others. Returns the metrics text and the log lines."""
    from structlog.testing import capture_logs

    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["topic"])

    APPS["all"] = app
    async with Gateway.from_text(broker_yaml(route("#", "all"), extra=QUICK)) as gw:
        port = port_of(gw)
        sock = await asyncio.to_thread(_raw_connect, port)
        with capture_logs() as logs:
            try:
                sock.sendall(data)
                closed = await asyncio.to_thread(sock.recv, 10)
                assert closed == b""
            except ConnectionResetError:
                pass
            finally:
                sock.close()
            good = await peer(port)
            try:
                await asyncio.to_thread(good.publish, "ok/topic", b"y", 1)
                await wait_for(lambda: got, what="a good client still served")
            finally:
                good.close()
        text = gw.metrics.render().decode()
    assert got == ["ok/topic"]
    assert [e["client_id"] for e in logs if e["event"] == event] == ["raw"]
    return text, logs


@pytest.mark.parametrize("topic", [b"a/+/b", b"a/#", b"\xff\xfe/bad-utf8", b"$SYS/fake", b""])
async def test_bad_publish_topics_close_that_connection_only(topic: bytes) -> None:
    text, logs = await _closes_that_connection_only(_raw_publish(topic, b"x"), "mqtt.invalid_publish")
    assert 'gateway_mqtt_messages_total{outcome="invalid"} 1.0' in text
    # the topic as the client sent it, in bytes' own notation (not the reader's bytearray buffer)
    assert [e["topic"] for e in logs if e["event"] == "mqtt.invalid_publish"] == [repr(topic)]


@pytest.mark.parametrize("data", [
    pytest.param(b"\x30\xff\xff\xff\xff\x01", id="remaining-length-of-five-bytes"),
    pytest.param(b"\x00\x00", id="reserved-type-0"),
    pytest.param(b"\xf0\x00", id="reserved-type-15"),
    pytest.param(b"\x36\x06\x00\x01a\x00\x01x", id="publish-with-qos-3"),
    pytest.param(b"\x30\x03\x00\x09a", id="topic-longer-than-the-packet"),
    pytest.param(b"\x30\x01\x00", id="publish-too-short-for-a-topic"),
])
async def test_malformed_packets_close_that_connection_only(data: bytes) -> None:
    _, logs = await _closes_that_connection_only(data, "mqtt.protocol_error")
    why = next(e["why"] for e in logs if e["event"] == "mqtt.protocol_error")
    assert why.endswith("; closing the connection") and len(why) > len("; closing the connection")


async def test_a_packet_split_across_reads_is_routed_and_acknowledged_after_the_app() -> None:
    got: list[bytes] = []
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])
        await release.wait()

    APPS["s"] = app
    async with Gateway.from_text(broker_yaml(route("s/#", "s"), extra=QUICK)) as gw:
        sock = await asyncio.to_thread(_raw_connect, port_of(gw))
        try:
            body = b"\x00\x03s/x" + b"\x12\x34" + b"in pieces"  # QoS 1, packet id 0x1234
            packet = bytes([0x32, len(body)]) + body
            for i in range(len(packet)):  # one byte per TCP segment
                sock.sendall(packet[i:i + 1])
                await asyncio.sleep(0.01)
            await wait_for(lambda: got, what="the message routed")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(sock.recv, 4)  # no PUBACK while the app runs
            release.set()
            sock.settimeout(5)
            assert await asyncio.to_thread(sock.recv, 4) == b"\x40\x02\x12\x34"
        finally:
            sock.close()
    assert got == [b"in pieces"]


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def test_a_large_message_arriving_in_many_reads_is_routed_whole() -> None:
    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["big"] = app
    payload = bytes(range(256)) * 3600  # 900 KiB, under the default max_payload of 1 MiB
    async with Gateway.from_text(broker_yaml(route("big/#", "big"), extra=QUICK)) as gw:
        sock = await asyncio.to_thread(_raw_connect, port_of(gw))
        try:
            body = b"\x00\x05big/x" + b"\x00\x07" + payload  # QoS 1, packet id 7
            await asyncio.to_thread(sock.sendall, b"\x32" + _remaining_length(len(body)) + body)
            assert await asyncio.to_thread(sock.recv, 4) == b"\x40\x02\x00\x07"
        finally:
            sock.close()
    assert got == [payload]


async def test_a_packet_longer_than_any_acceptable_publish_is_read_past_or_refused_unread() -> None:
    """The bound is the longest PUBLISH whose payload could still be accepted: 2 + 65535 + 2 +
    max_payload bytes. Up to it a PUBLISH is read (and an oversized payload dropped); a longer
    PUBLISH is read past without being kept and acknowledged, the connection kept; any other
    packet longer than the bound closes the connection before its body is read."""
    from structlog.testing import capture_logs

    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["s"] = app
    bound = 2 + 65535 + 2 + 8
    async with Gateway.from_text(broker_yaml(route("s/#", "s"), extra=QUICK, max_payload=8)) as gw:
        port = port_of(gw)
        with capture_logs() as logs:
            sock = await asyncio.to_thread(_raw_connect, port)
            try:
                at_bound = b"\x00\x03s/x" + b"x" * (bound - 5)  # QoS 0: dropped as oversized, connection kept
                fits = b"\x00\x03s/x" + b"ok"
                sock.sendall(b"\x30" + _remaining_length(bound) + at_bound + b"\x30" + bytes([len(fits)]) + fits)
                await wait_for(lambda: got, what="the next message routed")
                # QoS 1, one byte over the bound, sent in pieces, with a message right behind it
                over = b"\x00\x03s/y\x00\x07" + b"y" * (bound + 1 - 7)
                packet = b"\x32" + _remaining_length(bound + 1) + over + b"\x30" + bytes([len(fits)]) + fits
                for i in range(0, len(packet), 30000):
                    sock.sendall(packet[i:i + 30000])
                assert await asyncio.to_thread(sock.recv, 4) == b"\x40\x02\x00\x07"  # PUBACK for packet id 7
                await wait_for(lambda: len(got) == 2, what="the message behind it routed")
                sock.sendall(b"\x82" + _remaining_length(bound + 1) + b"\x00\x01")  # a SUBSCRIBE that long: closed
                sock.settimeout(5)
                assert await asyncio.to_thread(sock.recv, 10) == b""
            finally:
                sock.close()
        text = gw.metrics.render().decode()
    assert got == [b"ok", b"ok"]
    assert 'gateway_mqtt_messages_total{outcome="oversized"} 3.0' in text
    dropped = [e for e in logs if e["event"] == "mqtt.payload_too_large"]
    assert [(e["topic"], e["size"]) for e in dropped] == [("s/x", bound - 5), ("s/y", bound + 1 - 7)]
    refused = [e for e in logs if e["event"] == "mqtt.packet_too_large"]
    assert len(refused) == 1 and f"a packet of {bound + 1} bytes, more than the {bound}" in refused[0]["why"]


async def test_subscribers_get_the_lower_of_the_message_and_subscription_qos() -> None:
    async with Gateway.from_text(broker_yaml("    []\n", extra=QUICK)) as gw:
        port = port_of(gw)
        low, high, device = await peer(port), await peer(port), await peer(port)
        try:
            await asyncio.to_thread(low.subscribe, "q/#", 0)
            await asyncio.to_thread(high.subscribe, "q/#", 1)
            await asyncio.to_thread(device.publish, "q/one", b"1", 1)
            await asyncio.to_thread(device.publish, "q/zero", b"0", 0)
            await gw.layer.send("mqtt.publish", {"type": "mqtt.publish", "topic": "q/app", "payload": "a", "qos": 1})
            seen = {}
            for sub in (low, high):
                for _ in range(3):
                    m = await sub.get()
                    seen[(sub is high, m.topic)] = m.qos
        finally:
            for p in (low, high, device):
                p.close()
    assert seen == {
        (False, "q/one"): 0, (False, "q/zero"): 0, (False, "q/app"): 0,
        (True, "q/one"): 1, (True, "q/zero"): 0, (True, "q/app"): 1,
    }


async def test_resent_copy_of_a_running_message_is_not_routed_twice() -> None:
    release = asyncio.Event()
    runs: list[bytes] = []

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        runs.append((await receive())["payload"])
        await release.wait()

    APPS["slow"] = slow
    async with Gateway.from_text(broker_yaml(route("work/#", "slow"), extra=QUICK)) as gw:
        device = await peer(port_of(gw), client_id="dev-resend", clean=False)
        try:
            info = device.client.publish("work/1", b"once", 1)
            await wait_for(lambda: runs, what="first delivery")
            device.client.reconnect()  # paho resends the unacknowledged PUBLISH with DUP set
            await wait_for(lambda: 'outcome="duplicate"} 1.0' in gw.metrics.render().decode(), what="resent copy recognised")
            assert not info.is_published()
            release.set()
            await wait_for(info.is_published, what="acknowledged once the instance ended")
        finally:
            device.close()
    assert runs == [b"once"]


def _silent_device_with_a_will(port: int, keep_alive: int) -> socket.socket:
    """CONNECT with a keep-alive and a will, then never another packet (a device that lost power)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    will_topic, will = b"wills/sensor-9", b"sensor-9 vanished"
    flags = 0x02 | 0x04  # clean session, will flag (will QoS 0, not retained)
    body = (b"\x00\x04MQTT\x04" + bytes([flags]) + keep_alive.to_bytes(2, "big")
            + b"\x00\x08sensor-9" + len(will_topic).to_bytes(2, "big") + will_topic + len(will).to_bytes(2, "big") + will)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


async def test_a_silent_device_is_disconnected_after_its_keep_alive_and_its_will_published() -> None:
    from structlog.testing import capture_logs

    async def keep_talking(client: Any) -> None:
        while True:  # a packet every 0.3 s: well inside the 2 s limit (paho's own pings may be 1 s late)
            client.publish("still/here", b".", 0)
            await asyncio.sleep(0.3)

    async with Gateway.from_text(broker_yaml("    []\n", extra=QUICK)) as gw:
        port = port_of(gw)
        watcher = await peer(port)
        lively = await peer(port, keepalive=1)  # must stay connected
        talking = asyncio.ensure_future(keep_talking(lively.client))
        try:
            await asyncio.to_thread(watcher.subscribe, "wills/#", 0)
            with capture_logs() as logs:
                sock = await asyncio.to_thread(_silent_device_with_a_will, port, 1)
                try:
                    closed = await asyncio.to_thread(sock.recv, 10)  # the broker closes it: b""
                finally:
                    sock.close()
                will = await watcher.get(timeout=10)
                await asyncio.sleep(1)  # the lively client is now well past 2 s of keep-alive 1
            assert closed == b""
            assert (will.topic, will.payload) == ("wills/sensor-9", b"sensor-9 vanished")
            expired = [e for e in logs if e["event"] == "mqtt.keepalive_expired"]
            assert [e["client_id"] for e in expired] == ["sensor-9"] and expired[0]["timeout_s"] == 2  # 1.5 x 1 s, rounded up
            assert lively.client.is_connected()
        finally:
            talking.cancel()
            watcher.close()
            lively.close()


async def test_a_burst_of_publishes_right_before_disconnect_is_routed_in_full() -> None:
    """One read may hold many PUBLISHes and the DISCONNECT after them: every one is routed
    before the DISCONNECT is handled (amqtt's client loop drops what it still has queued then)."""
    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["b"] = app
    async with Gateway.from_text(broker_yaml(route("b/#", "b", "concurrency: 64"), extra=QUICK)) as gw:
        port = port_of(gw)
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\x05burst"
        packets = [bytes([0x10, len(body)]) + body]
        for i in range(500):
            publish = b"\x00\x03b/x" + str(i).encode()
            packets.append(bytes([0x30, len(publish)]) + publish)
        packets.append(b"\xe0\x00")  # DISCONNECT
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"".join(packets))  # one write: CONNECT, 500 QoS 0 PUBLISH, DISCONNECT
            await wait_for(lambda: len(got) == 500, what="all 500 messages routed", timeout=15)
    assert sorted(int(p) for p in got) == list(range(500))
