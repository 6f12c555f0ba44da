"""Client mode against a real Mosquitto: routing, the mqtt scope, acknowledgement, publishing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from mqtt_helpers import APPS, Peer, client_yaml, mosquitto, route, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt", "clean_apps"), pytest.mark.timeout(30)]


@pytest.fixture
def broker(tmp_path: Path):
    with mosquitto(tmp_path) as port:
        yield port


def recorder(into: list[Any]):
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        first = await receive()
        second = await receive()
        into.append((scope, first, second))
    return app


QUICK = "shutdown: {drain_timeout: 1}"


async def test_routes_by_topic_with_named_wildcards(broker: int) -> None:
    temps: list[Any] = []
    logs: list[Any] = []
    APPS["temp"] = recorder(temps)
    APPS["logs"] = recorder(logs)
    yaml = client_yaml(broker, route("sensors/+device/temperature", "temp") + route("logs/#rest", "logs"), extra=QUICK)
    async with Gateway.from_text(yaml) as gw:
        assert gw.addresses["mqtt"] == [f"mqtt://127.0.0.1:{broker}"]
        peer = Peer(broker)
        try:
            peer.publish("sensors/kitchen/temperature", b"21.5", qos=1)
            peer.publish("sensors/kitchen/humidity", b"40", qos=1)  # no route: never subscribed
            peer.publish("logs/app/web/error", b"boom", qos=0)
            peer.publish("logs", b"root", qos=0)
            await wait_for(lambda: len(temps) == 1 and len(logs) == 2, what="messages routed")
        finally:
            peer.close()
    scope, message, after = temps[0]
    assert scope["type"] == "mqtt"
    assert scope["topic"] == "sensors/kitchen/temperature"
    assert scope["url_route"]["kwargs"] == {"device": "kitchen"}
    assert scope["route_name"] == "temp"
    assert scope["qos"] == 1 and scope["retain"] is False and scope["mode"] == "client"
    assert scope["asgi"]["version"] == "3.0"
    assert message == {
        "type": "mqtt.message", "topic": "sensors/kitchen/temperature", "payload": b"21.5",
        "qos": 1, "retain": False, "dup": False,
    }
    assert after == {"type": "mqtt.disconnect"}
    rests = sorted(s["url_route"]["kwargs"]["rest"] for s, _, _ in logs)
    assert rests == ["", "app/web/error"]


async def test_retained_message_reaches_the_app_with_retain_flag(broker: int) -> None:
    got: list[Any] = []
    APPS["r"] = recorder(got)
    peer = Peer(broker)
    peer.publish("config/device7", b"on", qos=1, retain=True)
    try:
        async with Gateway.from_text(client_yaml(broker, route("config/+id", "r"), extra=QUICK)):
            await wait_for(lambda: len(got) == 1, what="retained message")
    finally:
        peer.close()
    scope, message, _ = got[0]
    assert message["retain"] is True and message["payload"] == b"on"
    assert scope["url_route"]["kwargs"] == {"id": "device7"}


async def test_app_publishes_and_layer_channel_publishes(broker: int) -> None:
    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        device = scope["url_route"]["kwargs"]["device"]
        await send({"type": "mqtt.publish", "topic": f"replies/{device}", "payload": message["payload"] + b"!", "qos": 1})
        await send({"type": "mqtt.publish", "topic": f"replies/{device}/json", "json": {"ok": True}})
        await send({"type": "mqtt.publish", "topic": f"replies/{device}/text", "payload": "héllo", "qos": 2, "retain": True})

    APPS["echo"] = echo
    peer = Peer(broker)
    peer.subscribe("replies/#", qos=2)
    try:
        async with Gateway.from_text(client_yaml(broker, route("cmd/+device", "echo"), extra=QUICK)) as gw:
            peer.publish("cmd/lamp", b"on", qos=1)
            got = {}
            for _ in range(3):
                m = await peer.get()
                got[m.topic] = m
            assert got["replies/lamp"].payload == b"on!" and got["replies/lamp"].qos == 1
            assert got["replies/lamp/json"].payload == b'{"ok":true}'
            assert got["replies/lamp/text"].payload == "héllo".encode() and got["replies/lamp/text"].qos == 2
            # from anywhere: the layer channel mqtt.publish
            await gw.layer.send("mqtt.publish", {"type": "mqtt.publish", "topic": "replies/from-layer", "payload": b"L", "qos": 1})
            m = await peer.get()
            assert (m.topic, m.payload) == ("replies/from-layer", b"L")
    finally:
        peer.close()


async def test_invalid_publish_from_app_fails_the_instance(broker: int) -> None:
    results: list[str] = []

    async def bad(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        try:
            await send({"type": "mqtt.publish", "topic": "a/+/b", "payload": b"x"})
        except Exception as exc:
            results.append(str(exc))
            raise

    APPS["bad"] = bad
    async with Gateway.from_text(client_yaml(broker, route("in/bad", "bad"), extra=QUICK)):
        peer = Peer(broker)
        try:
            peer.publish("in/bad", b"x", qos=0)
            await wait_for(lambda: results, what="invalid send")
        finally:
            peer.close()
    assert "wildcard" in results[0]


async def test_failed_message_with_retries_exhausted_is_left_unacknowledged_and_comes_again(broker: int) -> None:
    """``retry.exhausted: disconnect``: the gateway reconnects so that the broker sends it again."""
    seen: list[bytes] = []

    async def flaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["payload"])
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")

    APPS["flaky"] = flaky
    yaml = client_yaml(broker, route("jobs/+id", "flaky"), extra=QUICK, client_id="gw-flaky", retry="{attempts: 1, exhausted: disconnect}")
    async with Gateway.from_text(yaml) as gw:
        peer = Peer(broker)
        try:
            peer.publish("jobs/1", b"job-1", qos=1)
            await wait_for(lambda: len(seen) >= 2, timeout=10, what="redelivery")
            await asyncio.sleep(0.5)
        finally:
            peer.close()
        text = gw.metrics.render().decode()
    assert seen == [b"job-1", b"job-1"]  # once failed, once handled, and then never again
    assert 'gateway_mqtt_messages_total{outcome="failed"} 1.0' in text
    assert 'gateway_mqtt_messages_total{outcome="handled"} 1.0' in text
    assert 'gateway_mqtt_messages_total{outcome="gave_up"} 1.0' in text


@pytest.mark.parametrize("qos", [1, 2])
async def test_unfinished_message_is_redelivered_to_the_next_session(broker: int, qos: int) -> None:
    """The app never returns; the gateway stops (instance cancelled); the next gateway with the
    same client id gets the message again from the broker, because it was never acknowledged."""
    started = asyncio.Event()
    seen: list[bytes] = []

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((await receive())["payload"])
        started.set()
        await asyncio.sleep(3600)

    async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((await receive())["payload"])

    APPS["job"] = stuck
    yaml = client_yaml(broker, route("work/+id", "job", f"qos: {qos}"), extra="shutdown: {drain_timeout: 0.2}", client_id=f"gw-stuck-{qos}")
    async with Gateway.from_text(yaml):
        peer = Peer(broker)
        try:
            peer.publish("work/7", b"payload-7", qos=qos)
            await asyncio.wait_for(started.wait(), 5)
        finally:
            peer.close()
    APPS["job"] = ok
    async with Gateway.from_text(yaml):
        await wait_for(lambda: len(seen) == 2, what="redelivery to the next session")
    assert seen == [b"payload-7", b"payload-7"]
    # handled the second time: a third session gets nothing
    async with Gateway.from_text(yaml):
        await asyncio.sleep(0.5)
    assert len(seen) == 2


async def test_concurrency_bound_and_backpressure(broker: int) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()
    done: list[int] = []

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal running, peak
        message = await receive()
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        done.append(int(message["payload"]))

    APPS["slow"] = slow
    yaml = client_yaml(broker, route("load/+n", "slow", "concurrency: 3, qos: 1, backlog: 10"), extra=QUICK)
    async with Gateway.from_text(yaml) as gw:
        mode = gw.adapters["mqtt"].mode
        peer = Peer(broker)
        try:
            for i in range(200):
                peer.client.publish(f"load/{i}", str(i).encode(), 1)
            await wait_for(lambda: running == 3 and mode.paused, what="bound reached and reading paused")
            await asyncio.sleep(0.3)
            assert peak == 3
            # reading stopped at the backlog: the rest stays with the broker / TCP
            assert mode.dispatcher.backlog == 10
            release.set()
            await wait_for(lambda: len(done) == 200, timeout=10, what="all messages handled")
            assert not mode.paused and mode.dispatcher.backlog == 0
        finally:
            peer.close()
    assert peak == 3
    assert sorted(done) == list(range(200))


async def test_concurrency_one_keeps_order(broker: int) -> None:
    order: list[int] = []

    async def ordered(scope: dict[str, Any], receive: Any, send: Any) -> None:
        n = int((await receive())["payload"])
        await asyncio.sleep(0.001 * (n % 3))
        order.append(n)

    APPS["seq"] = ordered
    async with Gateway.from_text(client_yaml(broker, route("seq", "seq", "concurrency: 1"), extra=QUICK)):
        peer = Peer(broker)
        try:
            for i in range(50):
                peer.client.publish("seq", str(i).encode(), 1)
            await wait_for(lambda: len(order) == 50, timeout=10, what="50 messages")
        finally:
            peer.close()
    assert order == list(range(50))


async def test_oversized_payload_is_refused_and_counted(broker: int) -> None:
    got: list[Any] = []
    APPS["s"] = recorder(got)
    async with Gateway.from_text(client_yaml(broker, route("small/#", "s"), extra=QUICK, max_payload=16)) as gw:
        peer = Peer(broker)
        try:
            peer.publish("small/a", b"x" * 17, qos=1)
            peer.publish("small/b", b"x" * 16, qos=1)
            await wait_for(lambda: len(got) == 1, what="the small message")
            await asyncio.sleep(0.2)
        finally:
            peer.close()
        text = gw.metrics.render().decode()
    assert got[0][1]["topic"] == "small/b"
    assert 'gateway_mqtt_messages_total{outcome="oversized"} 1.0' in text


async def test_shared_subscription_splits_messages_between_gateways(broker: int) -> None:
    seen: dict[str, list[bytes]] = {"a": [], "b": []}

    def app_for(key: str):
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen[key].append((await receive())["payload"])
        return app

    APPS["a"] = app_for("a")
    APPS["b"] = app_for("b")
    ya = client_yaml(broker, route("jobs/+id", "a"), extra=QUICK, client_id="gw-a", shared="workers")
    yb = client_yaml(broker, route("jobs/+id", "b"), extra=QUICK, client_id="gw-b", shared="workers")
    async with Gateway.from_text(ya), Gateway.from_text(yb):
        peer = Peer(broker)
        try:
            for i in range(40):
                peer.client.publish(f"jobs/{i}", str(i).encode(), 1)
            await wait_for(lambda: len(seen["a"]) + len(seen["b"]) == 40, timeout=10, what="40 jobs")
            await asyncio.sleep(0.2)
        finally:
            peer.close()
    assert seen["a"] and seen["b"], seen
    assert sorted(int(p) for p in seen["a"] + seen["b"]) == list(range(40))  # each exactly once


async def test_mqtt5_properties_in_and_out(broker: int) -> None:
    got: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        got.append((scope, message))
        props = message["properties"]
        await send({
            "type": "mqtt.publish", "topic": props["response_topic"], "payload": b"pong", "qos": 1,
            "properties": {"correlation_data": props["correlation_data"], "user_properties": [("k", "v")]},
        })

    APPS["rpc"] = app
    peer = Peer(broker, protocol=paho.MQTTv5)
    peer.subscribe("rpc/replies", qos=1)
    try:
        async with Gateway.from_text(client_yaml(broker, route("rpc/ping", "rpc"), extra=QUICK, protocol='"5"')):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "rpc/replies"
            props.CorrelationData = b"c-1"
            props.ContentType = "text/plain"
            peer.publish("rpc/ping", b"ping", qos=1, properties=props)
            reply = await peer.get()
    finally:
        peer.close()
    scope, message = got[0]
    assert message["properties"]["content_type"] == "text/plain"
    assert scope["properties"]["response_topic"] == "rpc/replies"
    assert reply.payload == b"pong"
    assert reply.properties.CorrelationData == b"c-1"
    assert reply.properties.UserProperty == [("k", "v")]


async def test_broker_down_at_start_is_a_clear_startup_error() -> None:
    from mqtt_helpers import free_port

    from gateway.errors import StartupError

    port = free_port()
    yaml = client_yaml(port, route("x", "x"), extra=QUICK, reconnect={"at_start": "fail"})
    with pytest.raises(StartupError, match=f"cannot connect to the broker at mqtt://127.0.0.1:{port}"):
        async with Gateway.from_text(yaml):
            pass


async def test_broker_down_at_start_the_gateway_waits_not_ready_then_serves(tmp_path: Path) -> None:
    """A compose stack whose broker starts after the gateway: the gateway starts, /readyz names the
    broker, and once the broker is up the routes are subscribed and messages flow."""
    import httpx
    from mqtt_helpers import Mosquitto

    got: list[Any] = []
    APPS["late"] = recorder(got)
    broker = Mosquitto(tmp_path)
    yaml = client_yaml(
        broker.port, route("late/+id", "late"), reconnect={"min_delay": 0.1, "max_delay": 0.3},
        extra=QUICK + '\nadmin: {listen: "127.0.0.1:0"}',
    )
    async with Gateway.from_text(yaml) as gw:
        async with httpx.AsyncClient(base_url=f"http://{gw.admin.addresses[0]}") as admin:
            answer = await admin.get("/readyz")
            assert answer.status_code == 503, answer.text
            failing = answer.json()["failing"]
            assert list(failing) == ["adapter.mqtt.broker"] and "cannot reach" in failing["adapter.mqtt.broker"]
            broker.start()
            try:
                deadline = time.monotonic() + 10
                while (await admin.get("/readyz")).status_code != 200:
                    assert time.monotonic() < deadline, "the gateway never became ready after the broker came up"
                    await asyncio.sleep(0.05)
                peer = Peer(broker.port)
                try:
                    peer.publish("late/7", b"hello", qos=1)
                    await wait_for(lambda: len(got) == 1, what="message after the broker came up")
                finally:
                    peer.close()
            finally:
                broker.stop()
    assert got[0][1]["payload"] == b"hello"


async def test_reconnects_and_resubscribes_after_broker_restart(tmp_path: Path) -> None:
    got: list[Any] = []
    APPS["r"] = recorder(got)
    from mqtt_helpers import free_port  # noqa: F401

    with mosquitto(tmp_path) as port:
        yaml = client_yaml(port, route("re/+x", "r"), extra=QUICK, client_id="gw-re", reconnect="{min_delay: 0.1, max_delay: 0.5}")
        gw = Gateway.from_text(yaml)
        await gw.start()
    try:
        mode = gw.adapters["mqtt"].mode
        await wait_for(lambda: not mode.connected, what="disconnect noticed")
        # same port again: a fresh broker without the session; the gateway must subscribe again
        conf = tmp_path / f"mosquitto-{port}.conf"
        import subprocess

        from gateway_helpers import require
        from mqtt_helpers import _wait_port, stop_process

        proc = subprocess.Popen([require("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_port(port, proc)
            await wait_for(lambda: mode.connected, timeout=10, what="reconnected")
            await asyncio.sleep(0.2)
            peer = Peer(port)
            try:
                peer.publish("re/1", b"after", qos=1)
                await wait_for(lambda: len(got) == 1, what="message after reconnect")
            finally:
                peer.close()
        finally:
            await gw.stop(0.5)
            stop_process(proc)
    finally:
        await gw.stop(0.5)
    assert got[0][1]["payload"] == b"after"


async def test_burst_of_100k_messages_to_a_slow_consumer_keeps_memory_bounded(broker: int) -> None:
    """The app keeps up with 400 messages/s: the backlog empties to half within `drop_after`
    each time, so reading pauses and resumes and nothing is dropped; memory stays bounded."""
    handled = 0

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal handled
        await receive()
        await asyncio.sleep(0.01)
        handled += 1

    APPS["slow"] = slow
    yaml = client_yaml(broker, route("burst/#", "slow", "concurrency: 4, qos: 0, backlog: 64"), extra="shutdown: {drain_timeout: 0.5}")
    async with Gateway.from_text(yaml) as gw:
        mode = gw.adapters["mqtt"].mode
        peer = Peer(broker)
        try:
            def flood() -> None:
                for i in range(100_000):
                    peer.client.publish("burst/x", b"%d" % i, 0)
            pub = asyncio.ensure_future(asyncio.to_thread(flood))
            peak = 0
            paused = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            while loop.time() < deadline:
                peak = max(peak, mode.dispatcher.backlog)
                paused += mode.paused
                await asyncio.sleep(0.005)
            await pub
        finally:
            peer.close()
        assert paused, "reading never paused"
        assert peak <= 65, f"backlog grew to {peak}: the adapter kept reading"
        assert 0 < handled < 100_000
    # stopped promptly although ~100k messages were still pending at the broker


async def test_app_failing_every_message_is_retried_with_a_delay_not_a_crash_loop(broker: int) -> None:
    attempts: list[tuple[float, bytes]] = []

    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        attempts.append((time.monotonic(), (await receive())["payload"]))
        raise ValueError("cannot handle anything")

    def count(p: bytes) -> int:
        return sum(1 for _, q in attempts if q == p)

    APPS["broken"] = broken
    yaml = client_yaml(broker, route("jobs/#", "broken"), extra=QUICK, client_id="gw-broken", retry="{attempts: 5, delay: 0.3}")
    with capture_logs() as logs:
        async with Gateway.from_text(yaml) as gw:
            peer = Peer(broker)
            try:
                for i in range(3):
                    peer.publish(f"jobs/{i}", b"j%d" % i, qos=1)
                await wait_for(lambda: all(count(b"j%d" % i) >= 3 for i in range(3)), timeout=20, what="three attempts each")
            finally:
                peer.close()
            assert gw.started
            text = gw.metrics.render().decode()
    assert 'gateway_mqtt_messages_total{outcome="handled"}' not in text or 'outcome="handled"} 0.0' in text
    # each retry of one message is scheduled retry.delay later, doubling: a retry loop, not a crash loop
    delays = [e["retry_in"] for e in logs if e["event"] == "mqtt.not_acknowledged" and e["topic"] == "jobs/0"]
    assert delays[:2] == [0.3, 0.6], delays


async def test_refused_login_is_a_clear_startup_error(tmp_path: Path) -> None:
    from gateway.errors import StartupError

    with mosquitto(tmp_path, "allow_anonymous false\n") as port:
        with pytest.raises(StartupError, match="refused the connection"):
            async with Gateway.from_text(client_yaml(port, route("x", "x"), extra=QUICK, username="nobody", password="wrong")):
                pass


async def test_dollar_sys_topics_only_reach_routes_that_name_them(tmp_path: Path) -> None:
    sys_msgs: list[Any] = []
    everything: list[Any] = []
    APPS["sys"] = recorder(sys_msgs)
    APPS["all"] = recorder(everything)
    with mosquitto(tmp_path, "sys_interval 1\n") as port:
        routes = route("$SYS/broker/+what", "sys", "qos: 0") + route("#", "all", "qos: 0")
        async with Gateway.from_text(client_yaml(port, routes, extra=QUICK)):
            peer = Peer(port)
            try:
                peer.publish("plain/topic", b"x", qos=0)
                await wait_for(lambda: sys_msgs and everything, timeout=5, what="a $SYS message and a plain one")
            finally:
                peer.close()
    for scope, _, _ in sys_msgs:
        assert scope["url_route"]["kwargs"] == {"what": scope["topic"].split("/")[2]}
    assert [s["topic"] for s, _, _ in everything] == ["plain/topic"]  # '#' never matches a '$' topic
