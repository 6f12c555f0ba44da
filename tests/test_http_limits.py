"""The HTTP limits, each at its boundary, and malformed requests, with raw sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import structlog
from http_helpers import (
    addr,
    hello,
    host_port,
    raw,
    read_all,
    read_response,
    serve,
    status_of,
)
from protocol_helpers import harness

from gateway.config import loads
from gateway.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def request(target: bytes = b"/", headers: bytes = b"", body: bytes = b"", method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n%s" % (method, target, headers, body)


async def test_request_line_limit_boundary():
    async with serve(hello, limits={"max_request_line": 100}) as gw:
        ok = await raw(gw, request(b"/" + b"a" * 99))
        too_long = await raw(gw, request(b"/" + b"a" * 100))
    assert status_of(ok) == 200
    assert status_of(too_long) == 414


async def test_header_size_limit_boundary():
    async with serve(hello, limits={"max_header_size": 200}) as gw:
        ok = await raw(gw, request(headers=b"X-Aa: " + b"v" * 200 + b"\r\n"))
        too_big = await raw(gw, request(headers=b"X-Aa: " + b"v" * 201 + b"\r\n"))
        long_name_ok = await raw(gw, request(headers=b"X" * 150 + b": v\r\n"))
        long_name = await raw(gw, request(headers=b"X" * 201 + b": v\r\n"))
    assert status_of(ok) == 200 and status_of(long_name_ok) == 200
    assert status_of(too_big) == 431 and status_of(long_name) == 431


async def test_header_count_limit_boundary():
    # Host and Connection are two of the fields
    async with serve(hello, limits={"max_headers": 10}) as gw:
        ok = await raw(gw, request(headers=b"".join(b"X-%d: v\r\n" % i for i in range(8))))
        too_many = await raw(gw, request(headers=b"".join(b"X-%d: v\r\n" % i for i in range(9))))
    assert status_of(ok) == 200
    assert status_of(too_many) == 431


async def test_body_limit_content_length_up_front():
    calls = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            calls.append(scope["path"])
        await hello(scope, receive, send)

    async with serve(app, limits={"max_body_size": 10}) as gw:
        ok = await raw(gw, request(b"/ok", b"Content-Length: 10\r\n", b"x" * 10, b"POST"))
        refused = await raw(gw, request(b"/no", b"Content-Length: 11\r\n", b"x" * 11, b"POST"))
    assert status_of(ok) == 200 and ok.endswith(b"/ok|xxxxxxxxxx")
    assert status_of(refused) == 413
    assert calls == ["/ok"]  # refused before the app ran


async def test_body_limit_while_streaming_chunked():
    async with serve(hello, limits={"max_body_size": 10}) as gw:
        ok = await raw(gw, request(b"/", b"Transfer-Encoding: chunked\r\n", b"5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n", b"POST"))
        refused = await raw(gw, request(b"/", b"Transfer-Encoding: chunked\r\n", b"5\r\n12345\r\n6\r\n678901\r\n0\r\n\r\n", b"POST"))
    assert status_of(ok) == 200 and ok.endswith(b"|1234567890")
    assert status_of(refused) == 413


async def test_header_timeout_slow_loris():
    async with serve(hello, limits={"header_timeout": 0.3, "keepalive_timeout": 5}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        out = await read_all(reader, timeout=5)
        writer.close()
    assert status_of(out) == 408


async def test_keepalive_timeout_closes_idle_connection():
    async with serve(hello, limits={"keepalive_timeout": 0.3}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 200
        rest = await read_all(reader, timeout=5)  # returns when the server closes
        assert rest == b"" and reader.at_eof()
        writer.close()
        # a connection that never sends anything is closed too
        reader, writer = await asyncio.open_connection(host, port)
        assert await read_all(reader, timeout=5) == b"" and reader.at_eof()
        writer.close()


async def test_max_connections_503_then_resumes():
    async with serve(hello, limits={"max_connections": 2}) as gw:
        host, port = host_port(gw)
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await raw(gw, request())
        assert status_of(refused) == 503
        for _, w in held:
            w.close()
        # below the limit again: served
        for _ in range(50):
            await asyncio.sleep(0.02)
            out = await raw(gw, request())
            if status_of(out) == 200:
                break
        assert status_of(out) == 200


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET / HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
])
async def test_malformed_requests_get_400(data):
    calls = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            calls.append(scope["path"])
        await hello(scope, receive, send)

    async with serve(app) as gw:
        out = await raw(gw, data)
    if calls:  # only the chunk-size error is found after the app started reading the body
        assert data.endswith(b"0\r\n\r\n") and not out.startswith(b"HTTP/1.1 200")
    else:
        assert status_of(out) == 400, out


async def test_content_length_with_transfer_encoding_is_refused_not_smuggled():
    """CL + TE is the request smuggling shape: refused with 400, the hidden request never runs."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            seen.append(scope["path"])
        await hello(scope, receive, send)

    smuggle = (
        b"POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    async with serve(app) as gw:
        out = await raw(gw, smuggle)
        out2 = await raw(gw, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n")
    assert status_of(out) == 400
    assert "/smuggled" not in seen and "/outer" not in seen
    assert status_of(out2) == 400


async def test_bad_request_after_a_good_one_on_a_keepalive_connection():
    async with serve(hello, limits={"max_request_line": 50}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"/a|"
        writer.write(b"GET /" + b"b" * 60 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        out = await read_all(reader)
        writer.close()
    assert status_of(out) == 414


async def test_limits_documented_defaults_are_sane():
    from gateway_adapters.http import Limits
    lim = Limits()
    assert lim.max_body_size and lim.max_body_size <= 64 * 1024 * 1024
    assert lim.header_timeout <= 30 and lim.keepalive_timeout <= 30
    assert lim.body_timeout <= 60 and lim.body_min_rate and lim.send_timeout <= 60  # slow clients are bounded by default
    assert lim.ws_max_message_size <= 16 * 1024 * 1024
    for name, field in Limits.model_fields.items():
        assert field.description, name


async def test_httpx_large_body_under_limit():
    async with serve(hello, limits={"max_body_size": 3_000_000}) as gw:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{addr(gw)}/big", content=b"z" * 2_000_000)
    assert r.status_code == 200 and len(r.content) == len("/big|") + 2_000_000


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # a target is ASCII: send it percent-encoded
    (b"GET http:// HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # absolute-form without a host
    (b"GET *x HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # neither a path, nor "*", nor a URL
])
async def test_requests_llhttp_admits_but_http_does_not(data, status):
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])
        await hello(scope, receive, send)

    async with serve(app) as gw:
        out = await raw(gw, data)
    assert status_of(out) == status
    assert "http" not in calls


async def test_unread_body_that_arrived_whole_keeps_the_connection():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    async with serve(app) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        first = await read_response(reader)
        writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await read_response(reader)
        writer.close()
    assert first[0] == 200 and first[2] == b"ok"
    assert second[0] == 200 and first[1].get(b"connection") != b"close"


async def test_mangled_requests_are_answered_or_closed_never_crash_or_hang():
    """A fixed-seed stream of byte-level mutations of valid requests: each gets a well-formed
    status line or a close within the timeouts, the adapter never fails, and it serves on."""
    import random
    import re

    import structlog

    rng = random.Random(20261201)
    bases = [
        request(b"/a?b=c", b"X-One: 1\r\n"),
        request(b"/p", b"Content-Length: 5\r\n", b"hello", b"POST"),
        request(b"/c", b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"POST"),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ]
    cases = []
    for _ in range(240):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[at] = rng.randrange(256)
            elif op == 1:
                del data[at]
            else:
                data.insert(at, rng.choice(b" \t\r\n:;,\x00\x7f\xff0aZ-"))
        cases.append(bytes(data))
    status_line = re.compile(rb"HTTP/1\.1 [1-5]\d\d ")
    limits = {"header_timeout": 0.5, "keepalive_timeout": 0.5}
    with structlog.testing.capture_logs() as logs:
        async with serve(hello, limits=limits) as gw:
            outs = await asyncio.gather(*(raw(gw, c, timeout=3) for c in cases))
            after = await raw(gw, request(b"/after"))
    for data, out in zip(cases, outs, strict=True):
        assert out == b"" or status_line.match(out), (data, out[:80])
    assert status_of(after) == 200
    assert not [e for e in logs if e["event"] in ("http.connection_failed", "instance.finished") and e.get("log_level") == "error"]


# -- send_buffer, and its old name ws_send_buffer ------------------------------------------------

def _http_limits(yaml_limits: str) -> Any:
    plan = loads(f"adapters:\n  http:\n    listen: 127.0.0.1:0\n    limits: {yaml_limits}\n")
    return next(ap.config for ap in plan.adapters if ap.name == "http").limits


async def test_send_buffer_is_the_transport_high_water_mark_of_every_connection():
    async with harness(hello, limits={"send_buffer": 4096}) as h:
        wire = h.connect()
        assert wire.transport.high_water == 4096
        assert _http_limits("{send_buffer: 8192}").send_buffer == 8192


async def test_ws_send_buffer_is_read_as_send_buffer_with_one_deprecation_line():
    with structlog.testing.capture_logs() as logs:
        limits = _http_limits("{ws_send_buffer: 4096}")
    assert limits.send_buffer == 4096
    warnings = [e for e in logs if e["event"] == "config.deprecated_key"]
    assert len(warnings) == 1
    assert warnings[0]["key"] == "adapters.http.limits.ws_send_buffer" and warnings[0]["replacement"] == "send_buffer"
    with structlog.testing.capture_logs() as logs:
        assert _http_limits("{send_buffer: 4096}").send_buffer == 4096
    assert not [e for e in logs if e["event"] == "config.deprecated_key"]


async def test_send_buffer_and_ws_send_buffer_together_are_refused():
    with pytest.raises(ConfigError, match="ws_send_buffer is the old name of send_buffer"):
        _http_limits("{send_buffer: 4096, ws_send_buffer: 8192}")
