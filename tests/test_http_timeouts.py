"""A slow request body, a client that does not read its response, and a full connection table
each end in a bounded time, with a log line and a counter; clients that are slow
only because the server or the app holds them back are never cut."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import structlog
from http_helpers import hello, host_port, metric, raw, read_all, read_response, serve, status_of

pytestmark = pytest.mark.timeout(40)


def body_reader(events: list[dict[str, Any]]):
    """An app that reads the whole body (recording every receive) and answers with its length."""
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            events.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})
    return app


async def drip(writer: asyncio.StreamWriter, data: bytes, piece: int, pause: float) -> None:
    """Send ``data`` ``piece`` bytes at a time with ``pause`` seconds between the pieces."""
    try:
        for i in range(0, len(data), piece):
            writer.write(data[i:i + piece])
            await writer.drain()
            await asyncio.sleep(pause)
    except ConnectionError:
        pass


def post_head(length: int, extra: bytes = b"") -> bytes:
    return b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


# -- the request body ----------------------------------------------------------------------------

async def test_a_body_slower_than_the_minimum_rate_gets_408_and_the_app_a_disconnect():
    events: list[dict[str, Any]] = []
    with structlog.testing.capture_logs() as logs:
        async with serve(body_reader(events), limits={"body_timeout": 0.5, "body_min_rate": 100}) as gw:
            host, port = host_port(gw)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(post_head(1000))
            sender = asyncio.create_task(drip(writer, b"x" * 1000, 1, 0.1))  # 10 bytes/s
            out = await read_all(reader, timeout=15)
            sender.cancel()
            writer.close()
            timeouts = metric(gw, "gateway_http_timeouts_total", phase="body")
    assert status_of(out) == 408
    assert events and events[-1] == {"type": "http.disconnect"}
    assert timeouts == 1
    lines = [e for e in logs if e["event"] == "http.timeout"]
    assert len(lines) == 1 and lines[0]["phase"] == "body" and lines[0]["client"].startswith("127.0.0.1:")


async def test_a_body_above_the_minimum_rate_may_take_longer_than_the_timeout():
    events: list[dict[str, Any]] = []
    async with serve(body_reader(events), limits={"body_timeout": 0.5, "body_min_rate": 100}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(post_head(900))
        await drip(writer, b"x" * 900, 60, 0.1)  # 600 bytes/s for about 1.5 s
        status, _, body = await read_response(reader, timeout=15)
        writer.close()
    assert status == 200 and body == b"900"


async def test_a_body_queued_behind_a_slow_request_is_answered_408_in_order():
    """The body of a pipelined request the app has not reached yet is timed too; the 408 comes
    after the response before it."""
    release = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/slow":
            await release.wait()
        await body_reader([])(scope, receive, send)

    async with serve(app, limits={"body_timeout": 0.3, "body_min_rate": None}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + post_head(10) + b"abc")  # 7 bytes never come
        await asyncio.sleep(1.0)
        release.set()
        first = await read_response(reader, timeout=15)
        rest = await read_all(reader, timeout=15)
        writer.close()
    assert first[0] == 200
    assert status_of(rest) == 408


async def test_the_body_clock_stops_while_the_app_has_not_read_what_arrived():
    """The server stops reading while the app holds unread body: that time is not the client's."""
    size = 1024 * 1024

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(1.5)  # five body timeouts
        await body_reader([])(scope, receive, send)

    async with serve(app, limits={"body_timeout": 0.3, "body_min_rate": None}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(post_head(size) + b"y" * size)
        status, _, body = await read_response(reader, timeout=15)
        writer.close()
    assert status == 200 and body == b"%d" % size


async def test_a_100_continue_body_is_not_timed_before_the_continue():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(1.0)  # the client waits for 100 Continue all this time
        await body_reader([])(scope, receive, send)

    async with serve(app, limits={"body_timeout": 0.3, "body_min_rate": None}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(post_head(5, b"Expect: 100-continue\r\n"))
        continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        assert continued.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        status, _, body = await read_response(reader, timeout=15)
        writer.close()
    assert status == 200 and body == b"5"


# -- the response --------------------------------------------------------------------------------

def stalled_client(host: str, port: int, request: bytes) -> socket.socket:
    """A client with a small receive buffer that sends ``request`` and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(request)
    return sock


async def test_a_client_that_never_reads_frees_the_apps_send_after_the_send_timeout():
    chunk = b"d" * (1024 * 1024)
    finished = asyncio.Event()
    seen: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(256):  # 256 MiB if nothing held it back
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        seen.append(await receive())
        finished.set()

    with structlog.testing.capture_logs() as logs:
        async with serve(app, limits={"send_timeout": 0.5}) as gw:
            sock = stalled_client(*host_port(gw), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                await asyncio.wait_for(finished.wait(), 20)
            finally:
                sock.close()
            timeouts = metric(gw, "gateway_http_timeouts_total", phase="send")
    assert seen == [{"type": "http.disconnect"}]
    assert timeouts == 1
    assert [e["phase"] for e in logs if e["event"] == "http.timeout"] == ["send"]


async def test_a_slow_reader_that_keeps_reading_is_never_cut():
    size = 4 * 1024 * 1024

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        for _ in range(size // 65536):
            await send({"type": "http.response.body", "body": b"s" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app, limits={"send_timeout": 0.5}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while True:  # about 1 MiB/s: several send timeouts in all, never one without progress
            data = await asyncio.wait_for(reader.read(32768), 15)
            if not data:
                break
            got += data
            await asyncio.sleep(0.03)
        writer.close()
    assert status_of(got) == 200 and got.endswith(b"s" * 65536)
    assert len(got.partition(b"\r\n\r\n")[2]) == size


async def test_a_finished_response_nobody_reads_is_aborted_after_the_send_timeout():
    """The app has returned; the rest of its response sits in the server's buffer: the
    connection (and its file descriptor) must not stay for ever."""
    size = 16 * 1024 * 1024

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        await send({"type": "http.response.body", "body": b"f" * size})

    limits = {"send_timeout": 0.5, "send_buffer": 64 * 1024 * 1024}  # the app's send never waits
    async with serve(app, limits=limits) as gw:
        state = gw.adapters["http"].state
        sock = stalled_client(*host_port(gw), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            for _ in range(200):
                await asyncio.sleep(0.1)
                if not state.connections:
                    break
            assert not state.connections
            assert metric(gw, "gateway_http_timeouts_total", phase="send") == 1
        finally:
            sock.close()


async def test_a_websocket_client_that_never_reads_gets_its_connection_closed():
    from test_websocket_asgi import handshake

    outcome: list[Any] = []

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        try:
            for _ in range(4096):  # 256 MiB if nothing held it back
                await send({"type": "websocket.send", "bytes": b"w" * 65536})
        except OSError as exc:
            outcome.append(exc)
        outcome.append(await receive())

    async with serve(app, limits={"send_timeout": 0.5}, ws_compression=False) as gw:
        sock = stalled_client(*host_port(gw), handshake())
        try:
            for _ in range(200):
                await asyncio.sleep(0.1)
                if len(outcome) == 2:
                    break
        finally:
            sock.close()
        timeouts = metric(gw, "gateway_http_timeouts_total", phase="send")
    assert len(outcome) == 2, outcome
    assert isinstance(outcome[0], OSError)
    assert outcome[1] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
    assert timeouts == 1


# -- the head, and the connection table ----------------------------------------------------------

async def test_the_header_timeout_is_logged_and_counted():
    with structlog.testing.capture_logs() as logs:
        async with serve(hello, limits={"header_timeout": 0.3}) as gw:
            host, port = host_port(gw)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            out = await read_all(reader, timeout=10)
            writer.close()
            timeouts = metric(gw, "gateway_http_timeouts_total", phase="header")
    assert status_of(out) == 408
    assert timeouts == 1
    assert [e["phase"] for e in logs if e["event"] == "http.timeout"] == ["header"]


async def test_reaching_max_connections_is_logged_once_and_every_refusal_counted():
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with structlog.testing.capture_logs() as logs:
        async with serve(hello, limits={"max_connections": 2}) as gw:
            host, port = host_port(gw)
            held = [await asyncio.open_connection(host, port) for _ in range(2)]
            await asyncio.sleep(0.05)
            refused = [await raw(gw, request) for _ in range(3)]
            for _, w in held:
                w.close()
            for _ in range(100):  # below the limit again: served
                await asyncio.sleep(0.02)
                if status_of(await raw(gw, request)) == 200:
                    break
            count = metric(gw, "gateway_http_connections_refused_total", reason="max_connections")
    assert [status_of(r) for r in refused] == [503, 503, 503]
    assert count == 3
    reached = [e for e in logs if e["event"] == "http.max_connections_reached"]
    assert len(reached) == 1 and reached[0]["limit"] == 2 and reached[0]["log_level"] == "warning"
    recovered = [e for e in logs if e["event"] == "http.max_connections_recovered"]
    assert len(recovered) == 1 and recovered[0]["refused"] == 3
