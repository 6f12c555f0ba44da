"""Transports: TLS and MQTT-over-WebSocket listeners of the embedded broker, and client mode
over TLS (mqtts://) to a Mosquitto with a TLS listener."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from mqtt_helpers import APPS, Peer, broker_yaml, free_port, mosquitto, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from tls_helpers import make_ca

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt"), pytest.mark.timeout(30)]
QUICK = "shutdown: {drain_timeout: 1}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    return make_ca(tmp_path_factory.mktemp("mqtt-tls"), ("server",), ca_name="mqtt-test-ca")


def recorder(into: list[Any]):
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        into.append((await receive())["payload"])
    return app


def device(port: int, *, transport: str = "tcp", ca: Path | None = None) -> tuple[paho.Client, queue.Queue[int]]:
    client = paho.Client(CallbackAPIVersion.VERSION2, transport=transport)  # type: ignore[arg-type]
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    connected: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: connected.put(rc.value)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    return client, connected


async def test_broker_tls_and_websocket_listeners(certs: Path) -> None:
    got: list[bytes] = []
    APPS["in"] = recorder(got)
    tls_port, ws_port = free_port(), free_port()
    yaml = broker_yaml(
        '    - {topic: "in/#", name: in, app: "mqtt_helpers:route_app"}\n', extra=QUICK,
        tls_listen=f'["127.0.0.1:{tls_port}"]', ws_listen=f'["127.0.0.1:{ws_port}"]',
        tls=f'{{cert_file: "{certs / "server.pem"}", key_file: "{certs / "server.key"}"}}',
    )
    async with Gateway.from_text(yaml) as gw:
        addresses = gw.addresses["mqtt"]
        assert f"mqtts://127.0.0.1:{tls_port}" in addresses and f"ws://127.0.0.1:{ws_port}" in addresses
        for port, transport, ca, payload in ((tls_port, "tcp", certs / "ca.pem", b"over-tls"), (ws_port, "websockets", None, b"over-ws")):
            client, connected = await asyncio.to_thread(device, port, transport=transport, ca=ca)
            try:
                assert await asyncio.to_thread(connected.get, True, 5) == 0
                info = client.publish("in/x", payload, 1)
                await wait_for(info.is_published, what=f"{transport} publish acknowledged")
            finally:
                client.disconnect()
                client.loop_stop()
    assert got == [b"over-tls", b"over-ws"]


async def test_client_mode_over_tls(tmp_path: Path, certs: Path) -> None:
    got: list[bytes] = []
    APPS["in"] = recorder(got)
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncertfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n"
    )
    with mosquitto(tmp_path, extra) as plain_port:
        yaml = f"""\
adapters:
  mqtt: {{mode: client, url: "mqtts://127.0.0.1:{tls_port}", tls: {{ca_file: "{certs / 'ca.pem'}"}}}}
routes:
  mqtt:
    - {{topic: "in/#", name: in, app: "mqtt_helpers:route_app"}}
{QUICK}
"""
        async with Gateway.from_text(yaml) as gw:
            assert gw.addresses["mqtt"] == [f"mqtts://127.0.0.1:{tls_port}"]
            peer = Peer(plain_port)
            try:
                for i in range(200):  # several packets per TLS record: exercises the SSL-pending path
                    peer.client.publish("in/x", f"m{i}".encode(), 1)
                await wait_for(lambda: len(got) == 200, timeout=10, what="200 messages over TLS")
            finally:
                peer.close()
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(200))


async def test_client_mode_refuses_an_untrusted_broker_certificate(tmp_path: Path, certs: Path) -> None:
    from gateway.errors import StartupError

    tls_port = free_port()
    extra = f"listener {tls_port} 127.0.0.1\ncertfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n"
    with mosquitto(tmp_path, extra):
        yaml = f"""\
adapters:
  mqtt: {{mode: client, url: "mqtts://127.0.0.1:{tls_port}"}}
routes:
  mqtt:
    - {{topic: "in/#", app: "mqtt_helpers:route_app"}}
"""
        with pytest.raises(StartupError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            async with Gateway.from_text(yaml):
                pass  # the system store does not know the throwaway CA
