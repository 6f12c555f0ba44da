"""Points 3 (listeners), 4 (proxies), 6 (mounts), 7 (access log) and 8 (graceful drain)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import websockets
from http_helpers import addr, hello, host_port, raw, read_response, serve
from tls_helpers import make_ca

from gateway.errors import StartupError
from gateway.server import Gateway

pytestmark = pytest.mark.timeout(30)


def scope_recorder(seen: list[dict[str, Any]]):
    async def app(scope, receive, send):
        if scope["type"] == "http":
            seen.append(scope)
        await hello(scope, receive, send)
    return app


# -- listeners ------------------------------------------------------------------------------

async def test_several_listen_addresses_including_ipv6_and_unix(tmp_path):
    listen = ["127.0.0.1:0", "127.0.0.1:0", f"unix:{tmp_path}/gw.sock"]
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
            listen.append("[::1]:0")
        except OSError:
            pass
    seen: list[dict[str, Any]] = []
    async with serve(scope_recorder(seen), listen=listen) as gw:
        addresses = gw.addresses["http"]
        assert len(addresses) == len(listen)
        async with httpx.AsyncClient() as client:
            for a in addresses:
                if a.startswith("unix:"):
                    continue
                r = await client.get(f"http://{a}/x")
                assert r.text == "/x|"
        transport = httpx.AsyncHTTPTransport(uds=f"{tmp_path}/gw.sock")
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get("http://localhost/over-unix")
        assert r.text == "/over-unix|"
        assert seen[-1]["client"] is None
        assert seen[-1]["server"] == (f"{tmp_path}/gw.sock", None)
        if "[::1]:0" in listen:
            assert any(s["client"][0] == "::1" for s in seen if s["client"])
    assert not Path(f"{tmp_path}/gw.sock").exists()  # removed on stop


async def test_inherited_file_descriptor():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    fd = sock.detach()  # the adapter owns it now, as after a systemd/supervisor hand-over
    async with serve(hello, listen=f"fd://{fd}") as gw:
        assert gw.addresses["http"] == [f"127.0.0.1:{port}"]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/fd")).text == "/fd|"


async def test_reuse_port_lets_two_gateways_share_a_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with serve(hello, listen=f"127.0.0.1:{port}", reuse_port=True) as one:
        async with serve(hello, listen=f"127.0.0.1:{port}", reuse_port=True) as two:
            assert addr(one) == addr(two) == f"127.0.0.1:{port}"
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200
        with pytest.raises(StartupError):
            async with serve(hello, listen=f"127.0.0.1:{port}"):
                pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert, made with the openssl CLI."""
    return make_ca(tmp_path_factory.mktemp("tls"), ("server", "client"))


async def test_tls_https_and_wss(certs):
    seen: list[dict[str, Any]] = []
    tls = {"cert": str(certs / "server.pem"), "key": str(certs / "server.key")}
    async with serve(scope_recorder(seen), tls=tls) as gw:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        async with httpx.AsyncClient(verify=ctx) as client:
            r = await client.get(f"https://{addr(gw)}/secure")
        assert r.text == "/secure|" and seen[0]["scheme"] == "https"
        async with websockets.connect(f"wss://{addr(gw)}/", ssl=ctx) as ws:
            await ws.send("tls")
            assert await ws.recv() == "tls"


async def test_tls_client_certificates(certs):
    tls = {"cert": str(certs / "server.pem"), "key": str(certs / "server.key"), "client_ca": str(certs / "ca.pem")}
    async with serve(hello, tls=tls) as gw:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            async with httpx.AsyncClient(verify=ctx) as client:
                await client.get(f"https://{addr(gw)}/")
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
        async with httpx.AsyncClient(verify=ctx) as client:
            assert (await client.get(f"https://{addr(gw)}/m")).text == "/m|"


async def test_bad_tls_files_fail_start_clearly(tmp_path):
    with pytest.raises(StartupError, match="cannot load cert"):
        async with serve(hello, tls={"cert": str(tmp_path / "nope.pem"), "key": str(tmp_path / "nope.key")}):
            pass


def test_config_errors_name_the_key():
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError, match="trusted_proxies"):
        Gateway.from_text("adapters: {http: {listen: '127.0.0.1:0', trusted_proxies: [not-an-ip]}}")
    with pytest.raises(ConfigError, match="max_body_sise"):
        Gateway.from_text("adapters: {http: {listen: '127.0.0.1:0', limits: {max_body_sise: 1}}}")
    with pytest.raises(ConfigError):
        Gateway.from_text("adapters: {http: {listen: 'nonsense'}}")


# -- proxies --------------------------------------------------------------------------------

async def test_forwarded_headers_from_a_trusted_proxy():
    seen: list[dict[str, Any]] = []
    async with serve(scope_recorder(seen), trusted_proxies=["127.0.0.0/8"]) as gw:
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{addr(gw)}/a", headers={
                "X-Forwarded-For": "6.6.6.6, 203.0.113.7", "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "example.com", "X-Forwarded-Port": "8443",
            })
            await client.get(f"http://{addr(gw)}/b", headers={
                "Forwarded": 'for=198.51.100.1;proto=http, for="[2001:db8::1]:4711";proto=https;host=api.example.org',
            })
    a, b = seen
    assert a["client"] == ("203.0.113.7", 0)  # the rightmost address not a trusted proxy
    assert a["scheme"] == "https"
    assert a["server"] == ("example.com", 8443)
    assert (b"host", b"example.com:8443") in a["headers"]
    assert b["client"] == ("2001:db8::1", 4711)
    assert b["scheme"] == "https"
    assert (b"host", b"api.example.org") in b["headers"]


async def test_forwarded_headers_ignored_from_untrusted_peers():
    seen: list[dict[str, Any]] = []
    async with serve(scope_recorder(seen), trusted_proxies=["10.0.0.0/8"]) as gw:
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{addr(gw)}/", headers={
                "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Forwarded": "for=1.2.3.4;proto=https",
            })
    assert seen[0]["client"][0] == "127.0.0.1" and seen[0]["scheme"] == "http"


async def test_forwarded_proto_for_websocket():
    scopes: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            scopes.append(scope)
        await hello(scope, receive, send)

    async with serve(app, trusted_proxies=["127.0.0.1"]) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/", additional_headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.9"}) as ws:
            await ws.send("x")
            await ws.recv()
    assert scopes[0]["scheme"] == "wss" and scopes[0]["client"] == ("192.0.2.9", 0)


# -- mounts ---------------------------------------------------------------------------------

async def test_mounts_share_the_listener():
    calls: list[str] = []

    async def webhook(scope, receive, send):
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"queued"})

    gw = Gateway.from_app(hello, http={"access_log": False})
    gw.mounts.add("/sms/twilio", webhook, "sms")
    async with gw:
        async with httpx.AsyncClient() as client:
            base = f"http://{addr(gw)}"
            r = await client.post(f"{base}/sms/twilio", data={"Body": "hi"})
            assert r.status_code == 202 and r.text == "queued"
            assert (await client.get(f"{base}/healthz")).status_code == 200
            metrics = await client.get(f"{base}/metrics")
            assert "gateway_instances_total" in metrics.text
            assert (await client.get(f"{base}/sms/twilioX")).text == "/sms/twilioX|"  # not under the mount
            assert (await client.get(f"{base}/app")).text == "/app|"
    assert calls == ["/sms/twilio"]


def test_mount_table_scope_types_and_required_mounts():
    from gateway.mounts import Mounts

    async def app(scope, receive, send):
        pass

    mounts = Mounts()
    mounts.add("/hooks", app, "sms")
    mounts.add("/hooks", app, "mqtt", scope_types=("websocket",), required=True)  # same path, other scope type
    mounts.add("/hooks/deep", app, "other")
    with pytest.raises(ValueError, match="mqtt and sms both want to mount '/hooks'"):
        mounts.add("/hooks", app, "mqtt")
    assert mounts.find("/hooks/deep/x").owner == "other"  # longest prefix first
    assert mounts.find("/hooks/x").owner == "sms"
    assert mounts.find("/hooks/x", "websocket").owner == "mqtt"
    assert mounts.find("/hooks/deep", "websocket").owner == "mqtt"  # "other" takes http only
    assert [m.owner for m in mounts.unserved()] == ["mqtt"]
    mounts.served_by = "http"
    assert mounts.unserved() == []


# -- access log -----------------------------------------------------------------------------

async def test_access_log_lines():
    with structlog.testing.capture_logs() as logs:
        async with serve(hello) as gw:
            async with httpx.AsyncClient() as client:
                await client.post(f"http://{addr(gw)}/logged", content=b"abc")
            async with websockets.connect(f"ws://{addr(gw)}/wslog") as ws:
                await ws.send("a")
                await ws.recv()
                await ws.send("b")
                await ws.recv()
            await asyncio.sleep(0.1)
    http_lines = [e for e in logs if e["event"] == "http.request"]
    assert http_lines[0]["method"] == "POST" and http_lines[0]["path"] == "/logged"
    assert http_lines[0]["status"] == 200 and http_lines[0]["bytes"] == len("/logged|abc")
    assert http_lines[0]["client"].startswith("127.0.0.1:") and http_lines[0]["duration_ms"] >= 0
    ws_lines = [e for e in logs if e["event"] == "websocket"]
    assert ws_lines[0]["path"] == "/wslog" and ws_lines[0]["code"] == 1000
    assert ws_lines[0]["frames_in"] == 2 and ws_lines[0]["frames_out"] == 2
    assert ws_lines[0]["duration_ms"] >= 0


async def test_access_log_can_be_switched_off():
    with structlog.testing.capture_logs() as logs:
        async with serve(hello, access_log=False) as gw:
            async with httpx.AsyncClient() as client:
                await client.get(f"http://{addr(gw)}/quiet")
    assert not [e for e in logs if e["event"] == "http.request"]


async def test_a_fault_in_the_server_ends_only_its_connection(monkeypatch):
    """A bug on the server's side of one request (not the app's) aborts that connection with a
    log line; the listener and other connections go on."""
    from gateway_adapters.http.cycle import RequestCycle

    real = RequestCycle.run

    async def faulty(self):
        if self.request.target == b"/boom":
            raise KeyError("simulated server fault")
        return await real(self)

    monkeypatch.setattr(RequestCycle, "run", faulty)
    with structlog.testing.capture_logs() as logs:
        async with serve(hello) as gw:
            broken = await raw(gw, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            async with httpx.AsyncClient() as client:
                fine = await client.get(f"http://{addr(gw)}/fine")
    assert broken == b""  # aborted, nothing half-written
    assert fine.status_code == 200 and fine.text == "/fine|"
    failures = [e for e in logs if e["event"] == "http.connection_failed"]
    assert len(failures) == 1 and "simulated server fault" in failures[0]["error"]


# -- graceful drain ---------------------------------------------------------------------------

async def test_graceful_drain_finishes_http_and_closes_websockets_with_1001():
    ws_events: list[dict[str, Any]] = []
    in_app = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] == "http":
            in_app.set()
            await asyncio.sleep(0.3)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"finished"})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            ws_events.append(await receive())

    gw = Gateway.from_app(app, http={"access_log": False})
    await gw.start()
    host, port = host_port(gw)
    ws = await websockets.connect(f"ws://{host}:{port}/")
    idle_reader, idle_writer = await asyncio.open_connection(host, port)
    kept_reader, kept_writer = await asyncio.open_connection(host, port)  # keep-alive after one request
    kept_writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(kept_reader))[0] == 200
    in_app.clear()
    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(client.get(f"http://{host}:{port}/slow"))
        await in_app.wait()
        stopping = asyncio.create_task(gw.stop(5))
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):  # no longer accepting
            r, w = await asyncio.open_connection(host, port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if not await r.read(100):
                raise ConnectionResetError
        response = await request
        await stopping
    assert response.status_code == 200 and response.text == "finished"
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1001
    assert ws_events == [{"type": "websocket.disconnect", "code": 1001, "reason": ""}]
    assert await idle_reader.read() == b""  # idle connections were closed
    assert await kept_reader.read() == b""
    idle_writer.close()
    kept_writer.close()


async def test_drain_timeout_cuts_long_requests():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(30)

    gw = Gateway.from_app(app, http={"access_log": False})
    await gw.start()
    host, port = host_port(gw)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    await asyncio.wait_for(gw.stop(0.2), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_unix_socket_peer_trusted_as_proxy(tmp_path):
    seen: list[dict[str, Any]] = []
    path = f"{tmp_path}/proxy.sock"
    async with serve(scope_recorder(seen), listen=f"unix:{path}", trusted_proxies=["unix"]):
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://localhost/p", headers={"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"})
    assert seen[0]["client"] == ("198.51.100.20", 0) and seen[0]["scheme"] == "https"


def test_a_listener_that_cannot_bind_closes_its_socket():
    """A port taken (or any bind/listen error) is a StartupError, and the socket made for it is
    closed then, not left to the garbage collector (a ResourceWarning, and an fd held meanwhile)."""
    import gc
    import warnings

    from gateway_helpers import taken_port

    from gateway.schema import parse_listen
    from gateway_adapters.http.config import HttpConfig
    from gateway_adapters.http.listeners import open_socket

    with taken_port() as port, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StartupError, match="cannot listen on"):
            open_socket(parse_listen(f"127.0.0.1:{port}"), HttpConfig(listen=["127.0.0.1:0"]))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
