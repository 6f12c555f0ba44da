"""MQTT over WebSocket on the HTTP adapter's port (`ws_path`): paho devices over WebSocket and
over TCP on one embedded broker, the handshake rules, and the config that cannot work."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from mqtt_helpers import APPS, Peer, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from tls_helpers import make_ca

from gateway.errors import ConfigError, StartupError
from gateway.server import Gateway

pytestmark = pytest.mark.timeout(30)


def config(ws_path: str = "/mqtt", http: bool = True, http_tls: str = "") -> str:
    http_block = f'  http: {{listen: ["127.0.0.1:0"]{http_tls}}}\n' if http else ""
    return f"""\
adapters:
{http_block}  mqtt: {{mode: broker, listen: ["127.0.0.1:0"], ws_path: "{ws_path}", connect_timeout: 1}}
routes:
  mqtt:
    - {{topic: "in/#", name: in, app: "mqtt_helpers:route_app"}}
shutdown: {{drain_timeout: 1}}
"""


def http_port(gw: Gateway) -> int:
    return int(gw.addresses["http"][0].rsplit(":", 1)[1])


def tcp_port(gw: Gateway) -> int:
    return int(next(a for a in gw.addresses["mqtt"] if a.startswith("mqtt://")).rsplit(":", 1)[1])


class WsDevice:
    """A paho client speaking MQTT over WebSocket to the HTTP listener."""

    def __init__(self, port: int, path: str = "/mqtt", ca: Path | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, transport="websockets")
        self.client.ws_set_options(path=path)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.connected: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(mid)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_devices_on_the_http_port_publish_to_apps_and_to_tcp_subscribers() -> None:
    handled: list[tuple[str, bytes]] = []
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        await release.wait()  # the PUBACK must wait for this
        handled.append((message["topic"], message["payload"]))

    APPS["in"] = app
    async with Gateway.from_text(config()) as gw:
        assert "mount:/mqtt" in gw.addresses["mqtt"]
        device = await asyncio.to_thread(WsDevice, http_port(gw))
        watcher = await asyncio.to_thread(Peer, tcp_port(gw))
        try:
            assert await asyncio.to_thread(device.connected.get, True, 5) == 0
            await asyncio.to_thread(watcher.subscribe, "in/#", 1)
            info = device.client.publish("in/door", b"open", 1)
            forwarded = await watcher.get()  # the broker fans out to TCP subscribers as usual
            assert (forwarded.topic, forwarded.payload) == ("in/door", b"open")
            await asyncio.sleep(0.2)
            assert not info.is_published()  # no PUBACK while the app is still running
            release.set()
            await wait_for(info.is_published, what="PUBACK over WebSocket after the app returned")
            # and the other way: a TCP publisher reaches the WebSocket device
            _, mid = device.client.subscribe("news/#", 1)
            assert await asyncio.to_thread(device.subacks.get, True, 5) == mid
            await asyncio.to_thread(watcher.publish, "news/today", b"hello ws", 1)
            got = await asyncio.to_thread(device.messages.get, True, 5)
            assert (got.topic, got.payload) == ("news/today", b"hello ws")
        finally:
            await asyncio.to_thread(device.close)
            await asyncio.to_thread(watcher.close)
    assert handled == [("in/door", b"open")]


async def test_mqtt_over_wss_through_the_http_adapters_tls(tmp_path: Path) -> None:
    got: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["payload"])

    APPS["in"] = app
    certs = make_ca(tmp_path, ("server",))
    cert, key = certs / "server.pem", certs / "server.key"
    tls = f', tls: {{cert: "{cert}", key: "{key}"}}'
    async with Gateway.from_text(config(http_tls=tls)) as gw:
        device = await asyncio.to_thread(WsDevice, http_port(gw), ca=certs / "ca.pem")
        try:
            assert await asyncio.to_thread(device.connected.get, True, 5) == 0
            info = device.client.publish("in/secure", b"over wss", 1)
            await wait_for(info.is_published, what="PUBACK over wss")
        finally:
            await asyncio.to_thread(device.close)
    assert got == [b"over wss"]


async def test_handshake_rules_and_plain_http_on_the_mount_path() -> None:
    APPS["in"] = lambda scope, receive, send: receive()
    async with Gateway.from_text(config()) as gw:
        base = f"http://127.0.0.1:{http_port(gw)}"
        async with aiohttp.ClientSession() as session:
            # a client that offers only other subprotocols is not an MQTT client
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{base}/mqtt", protocols=("chat",))
            assert refused.value.status == 403
            # "mqtt" is chosen when offered
            async with session.ws_connect(f"{base}/mqtt", protocols=("chat", "mqtt")) as ws:
                assert ws.protocol == "mqtt"
                # a text message is not MQTT: the connection is closed
                await ws.send_str("CONNECT")
                closing = await ws.receive(timeout=5)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            # binary garbage instead of an MQTT CONNECT, or nothing at all: closed (connect_timeout)
            for first in (b"\xff\x00garbage, not MQTT\r\n" * 4, b""):
                async with session.ws_connect(f"{base}/mqtt", protocols=("mqtt",)) as ws:
                    if first:
                        await ws.send_bytes(first)
                    closing = await ws.receive(timeout=10)
                    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            # the mount takes WebSocket upgrades only; plain HTTP goes to the routes (none here)
            async with session.get(f"{base}/mqtt") as resp:
                assert resp.status == 404


async def test_ws_path_without_an_http_adapter_refuses_to_start() -> None:
    gw = Gateway.from_text(config(http=False))
    with pytest.raises(StartupError, match=r"mqtt at '/mqtt' needs an HTTP listener: configure adapters.http"):
        await gw.start()
    assert gw.adapters == {} and not gw.started


@pytest.mark.parametrize("path", ["mqtt", "/"])
def test_ws_path_must_be_a_path_below_the_root(path: str) -> None:
    with pytest.raises(ConfigError, match=r"adapters\.mqtt.*must be a path below the root"):
        Gateway.from_text(config(ws_path=path))
