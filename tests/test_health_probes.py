"""/livez and /readyz tell the truth, and the admin listener keeps them (and /metrics) off the public port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from mqtt_helpers import mosquitto
from test_layer_redis_helpers import RedisServer

from gateway import Gateway
from gateway.errors import StartupError

CATCH_ALL = "tests.testapps.basic:hello"


async def poll(client: httpx.AsyncClient, path: str, want: int, tries: int = 400) -> httpx.Response:
    for _ in range(tries):
        response = await client.get(path)
        if response.status_code == want:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} stayed {response.status_code}: {response.text}")


async def test_admin_listener_serves_probes_and_metrics_and_the_public_port_does_not():
    gw = Gateway.from_text(f"""
admin: {{listen: "127.0.0.1:0"}}
adapters:
  http: {{listen: "127.0.0.1:0"}}
routes:
  http:
    - {{app: "{CATCH_ALL}"}}
""")
    async with gw:
        async with httpx.AsyncClient(base_url=f"http://{gw.admin.addresses[0]}") as admin:
            live = await admin.get("/livez")
            assert (live.status_code, live.json()["status"]) == (200, "live")
            ready = await admin.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
            assert (await admin.get("/healthz")).json()["status"] == "ok"
            metrics = await admin.get("/metrics")
            assert metrics.status_code == 200 and "gateway_" in metrics.text
            assert (await admin.head("/readyz")).status_code == 200
            missing = await admin.get("/admin/")
            assert missing.status_code == 404 and "/readyz" in missing.text
            assert (await admin.post("/readyz")).status_code == 405
        async with httpx.AsyncClient(base_url=f"http://{gw.addresses['http'][0]}") as public:
            for path in ("/metrics", "/livez", "/readyz", "/healthz"):
                response = await public.get(path)
                assert "gateway_" not in response.text and "ready" not in response.text, path
                assert response.text == (await public.get("/some/page/")).text, path  # the app's own answer


async def test_admin_listener_refuses_a_bad_request_line_and_an_oversized_head():
    gw = Gateway.from_text('admin: {listen: "127.0.0.1:0"}\n')
    async with gw:
        host, port = gw.admin.addresses[0].rsplit(":", 1)
        for request in (b"NONSENSE\r\n\r\n", b"GET /livez HTTP/1.1\r\nx: " + b"a" * 9000 + b"\r\n\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]


async def test_probes_on_the_public_port_without_an_admin_listener():
    gw = Gateway.from_text('adapters:\n  http: {listen: "127.0.0.1:0"}\n')
    async with gw, httpx.AsyncClient(base_url=f"http://{gw.addresses['http'][0]}") as client:
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        assert (await client.get("/healthz")).json()["components"]["adapter.http"]["status"] == "ok"


async def test_readyz_names_the_layer_while_redis_is_down_and_livez_stays_200(own_redis: RedisServer):
    gw = Gateway.from_text(f"""
layer: {{backend: redis, hosts: ["{own_redis.url}"], prefix: probes}}
admin: {{listen: "127.0.0.1:0"}}
""")
    async with gw, httpx.AsyncClient(base_url=f"http://{gw.admin.addresses[0]}") as client:
        await poll(client, "/readyz", 200)
        listener = asyncio.ensure_future(gw.layer.receive("probes.probe"))  # a user of the layer notices
        own_redis.stop()
        failing = (await poll(client, "/readyz", 503)).json()
        assert failing["status"] == "not ready" and list(failing["failing"]) == ["layer"], failing
        assert failing["failing"]["layer"].startswith("down"), failing  # the layer can deliver nothing
        assert (await client.get("/healthz")).status_code == 503  # the report says so too
        assert (await client.get("/livez")).status_code == 200  # the process itself is fine: no restart
        own_redis.start()
        await poll(client, "/readyz", 200)
        listener.cancel()


async def test_readyz_names_the_external_mqtt_broker_while_it_is_away(tmp_path: Path):
    with mosquitto(tmp_path) as port:
        gw = Gateway.from_text(f"""
admin: {{listen: "127.0.0.1:0"}}
adapters:
  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{port}", reconnect: {{min_delay: 0.2, max_delay: 0.5}}}}
""")
        await gw.start()
        client = httpx.AsyncClient(base_url=f"http://{gw.admin.addresses[0]}")
        await poll(client, "/readyz", 200)
    try:
        failing = (await poll(client, "/readyz", 503)).json()["failing"]
        assert list(failing) == ["adapter.mqtt.broker"], failing
        assert "disconnected" in failing["adapter.mqtt.broker"], failing
    finally:
        await client.aclose()
        await gw.stop()


async def test_readyz_says_stopping_while_the_gateway_drains():
    gw = Gateway.from_text("""
admin: {listen: "127.0.0.1:0"}
adapters:
  http: {listen: "127.0.0.1:0"}
routes:
  http:
    - {app: "tests.testapps.basic:slow"}
""")
    await gw.start()
    admin = f"http://{gw.admin.addresses[0]}"
    async with httpx.AsyncClient(base_url=f"http://{gw.addresses['http'][0]}", timeout=30) as public:
        in_flight = asyncio.ensure_future(public.get("/slow"))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(gw.stop(drain=5))
        async with httpx.AsyncClient(base_url=admin) as client:
            answer = (await poll(client, "/readyz", 503)).json()
            assert answer["failing"] == {"gateway": "stopping"}, answer
            assert (await client.get("/livez")).json() == {"status": "live", "phase": "stopping"}
        await stopping
        in_flight.cancel()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=admin) as client:
            await client.get("/livez")


async def test_an_admin_address_in_use_is_a_startup_error_naming_the_key():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        gw = Gateway.from_text(f'admin: {{listen: "{address}"}}\n')
        with pytest.raises(StartupError, match=f"admin.listen {address}"):
            await gw.start()


async def test_readyz_names_the_layer_when_redis_is_not_up_at_start_then_serves_once_it_is(monkeypatch):
    """A compose stack whose Redis starts after the gateway: the gateway starts, /readyz names the
    layer before any traffic has touched it, and turns 200 once Redis answers."""
    import gateway.server

    monkeypatch.setattr(gateway.server, "LAYER_PROBE_INTERVAL", 0.1, raising=False)  # 5 s by default
    redis = RedisServer()  # a port of its own, not started yet
    gw = Gateway.from_text(f"""
layer: {{backend: redis, hosts: ["{redis.url}"], prefix: late}}
admin: {{listen: "127.0.0.1:0"}}
adapters:
  http: {{listen: "127.0.0.1:0"}}
""")
    async with gw, httpx.AsyncClient(base_url=f"http://{gw.admin.addresses[0]}") as client:
        failing = (await poll(client, "/readyz", 503)).json()["failing"]
        assert list(failing) == ["layer"] and "unreachable" in failing["layer"], failing
        redis.start()
        try:
            await poll(client, "/readyz", 200)
        finally:
            redis.stop()
