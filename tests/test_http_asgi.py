"""ASGI HTTP 2.5 scopes and the request/response cycle, driven by real clients (httpx, aiohttp)
and raw sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
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

pytestmark = pytest.mark.timeout(20)


def scope_app(seen: list[dict[str, Any]]):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


async def test_scope_fields_from_httpx():
    seen: list[dict[str, Any]] = []
    async with serve(scope_app(seen), root_path="/mount") as gw:
        host, port = host_port(gw)
        async with httpx.AsyncClient() as client:
            r = await client.get(
                f"http://{addr(gw)}/caf%C3%A9/a%2Fb?x=1&y=%20z",
                headers=[("X-Dup", "one"), ("X-Upper", "V"), ("x-dup", "two")],
            )
        assert r.status_code == 200 and r.text == "ok"
    scope = seen[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == "/mount"
    assert scope["path"] == "/mount/café/a/b"  # percent-decoded, UTF-8; root_path prepended (as uvicorn)
    assert scope["raw_path"] == b"/mount/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == b"x=1&y=%20z"
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == (host, port)
    names = [n for n, _ in scope["headers"]]
    assert all(isinstance(n, bytes) and n == n.lower() for n in names)
    dups = [v for n, v in scope["headers"] if n == b"x-dup"]
    assert dups == [b"one", b"two"]  # duplicates kept, in order
    assert names.index(b"x-dup") < names.index(b"x-upper")
    assert scope["url_route"] == {"args": (), "kwargs": {}}
    assert "http.response.trailers" in scope["extensions"]


async def test_header_values_lose_surrounding_whitespace():
    """RFC 9112 section 5: the whitespace around a field value is not part of it; inside, it is."""
    seen: list[dict[str, Any]] = []
    async with serve(scope_app(seen)) as gw:
        out = await raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\nX:   foobar    \r\nX-Tab:\t v \t\r\n"
                            b"X-Inner:  a  b  \r\nX-Empty:    \r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200
    headers = seen[0]["headers"]
    assert (b"x", b"foobar") in headers
    assert (b"x-tab", b"v") in headers
    assert (b"x-inner", b"a  b") in headers
    assert (b"x-empty", b"") in headers


async def test_http10_and_raw_path_bytes():
    seen: list[dict[str, Any]] = []
    async with serve(scope_app(seen)) as gw:
        out = await raw(gw, b"GET /%E2%82%AC/x%ZZ?q=%FF HTTP/1.0\r\n\r\n")
    assert status_of(out) == 200
    scope = seen[0]
    assert scope["http_version"] == "1.0"
    assert scope["path"] == "/€/x%ZZ"
    assert scope["raw_path"] == b"/%E2%82%AC/x%ZZ"
    assert scope["query_string"] == b"q=%FF"
    assert b"content-length: 2" in out.lower()


async def test_absolute_and_asterisk_form_targets():
    seen: list[dict[str, Any]] = []
    async with serve(scope_app(seen)) as gw:
        absolute = await raw(gw, b"GET http://example.com/a%20b?q=1#frag HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        asterisk = await raw(gw, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(absolute) == 200 and status_of(asterisk) == 200
    assert (seen[0]["path"], seen[0]["raw_path"], seen[0]["query_string"]) == ("/a b", b"/a%20b", b"q=1")
    assert (seen[1]["method"], seen[1]["path"], seen[1]["raw_path"]) == ("OPTIONS", "*", b"*")


async def test_routes_match_path_without_root_path():
    async with serve(hello, root_path="/api/") as gw, httpx.AsyncClient() as client:
        r = await client.get(f"http://{addr(gw)}/x")
    assert r.text == "/api/x|"


async def test_request_body_streamed_in_chunks():
    """A body is handed over chunk by chunk with more_body, never buffered whole."""
    events: list[dict[str, Any]] = []
    first_chunk = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            events.append(message)
            first_chunk.set()
            if not message.get("more_body"):
                break
        total = sum(len(m.get("body", b"")) for m in events)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    async with serve(app) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.wait_for(first_chunk.wait(), 5)
        # the app got the first chunk while the rest of the body has not even been sent
        assert events[0] == {"type": "http.request", "body": b"hello", "more_body": True}
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body = await read_response(reader)
        writer.close()
    assert status == 200 and body == b"11"
    assert events[-1]["more_body"] is False
    assert b"".join(m["body"] for m in events) == b"hello world"


async def test_streamed_response_is_chunked_and_http10_is_close_delimited():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"bb", b""):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"ccc"})

    async with serve(app) as gw:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://{addr(gw)}/")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text == "abbccc"
        out = await raw(gw, b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert body == b"abbccc"


async def test_head_has_no_body_but_the_length():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    async with serve(app) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head1 = await reader.readuntil(b"\r\n\r\n")
        assert head1.startswith(b"HTTP/1.1 200") and b"content-length: 5" in head1
        # the next bytes are the second response: the HEAD response carried no body
        status, _, body = await read_response(reader)
        writer.close()
    assert status == 200 and body == b"hello"


async def test_keep_alive_and_pipelining_in_order():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async with serve(app) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(20)))
        bodies = [(await read_response(reader))[2] for _ in range(20)]
        writer.close()
        assert bodies == [b"/%d" % i for i in range(20)]
        async with aiohttp.ClientSession() as session:  # one pooled connection, many requests
            for i in range(5):
                async with session.get(f"http://{addr(gw)}/k{i}") as r:
                    assert await r.text() == f"/k{i}"


async def test_pipelined_bodies_reach_their_own_requests_past_the_pipeline_bound():
    """Ten POSTs in one write, with max_pipelined 2: reading pauses and resumes, and every body
    (fixed-length and chunked, split across reads) goes to its own request, in order."""
    requests = []
    for i in range(10):
        body = b"body-%d-" % i + b"x" * (i * 7000)
        if i % 2:
            requests.append(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body))
        else:
            half = len(body) // 2
            requests.append(b"POST /%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                            % (i, half, body[:half], len(body) - half, body[half:]))
    async with serve(hello, limits={"max_pipelined": 2}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        data = b"".join(requests)
        for at in range(0, len(data), 4096):  # many reads, boundaries anywhere
            writer.write(data[at:at + 4096])
        await writer.drain()
        answers = [await read_response(reader) for _ in range(10)]
        writer.close()
    for i, (status, _, body) in enumerate(answers):
        assert status == 200
        assert body == b"/%d|body-%d-" % (i, i) + b"x" * (i * 7000)


async def test_expect_100_continue():
    async with serve(hello) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        status, _, body = await read_response(reader)
        writer.close()
    assert status == 200 and body == b"/e|body"


async def test_no_100_continue_when_app_answers_without_reading():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    async with serve(app) as gw:
        out = await raw(gw, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", timeout=2)
    assert out.startswith(b"HTTP/1.1 401")
    assert b"100 Continue" not in out


async def test_trailers():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-checksum")], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": True})
        await send({"type": "http.response.body", "body": b"more"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})

    async with serve(app) as gw:
        out = await raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\ndata\r\n4\r\nmore\r\n0\r\nx-checksum: abc\r\n\r\n"


async def test_none_fields_read_as_absent():
    """``None`` for an optional field means "not given" in the event checks; the writer agrees."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": None, "trailers": None})
        await send({"type": "http.response.body", "body": None, "more_body": True})
        await send({"type": "http.response.body", "body": b"end", "more_body": None})

    async with serve(app) as gw, httpx.AsyncClient() as client:
        r = await client.get(f"http://{addr(gw)}/")
    assert (r.status_code, r.content) == (200, b"end")


async def test_app_raises_before_start_gives_500():
    async def app(scope, receive, send):
        raise ValueError("boom")

    async with serve(app) as gw, httpx.AsyncClient() as client:
        r = await client.get(f"http://{addr(gw)}/")
    assert r.status_code == 500


async def test_app_raises_after_start_closes_connection():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    async with serve(app) as gw:
        out = await raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert out.endswith(b"partial")  # closed; the second pipelined request was not served
    assert out.count(b"HTTP/1.1") == 1


async def test_app_returns_without_responding_gives_500_and_a_log():
    async def app(scope, receive, send):
        return

    with structlog.testing.capture_logs() as logs:
        async with serve(app) as gw, httpx.AsyncClient() as client:
            r = await client.get(f"http://{addr(gw)}/quiet")
    assert r.status_code == 500
    assert any(e["event"] == "http.no_response" and e["path"] == "/quiet" for e in logs)


async def test_disconnect_while_streaming_response():
    """A long-poll/streaming app that waits on receive() learns the client went away."""
    done = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()  # the (empty) body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"tick", "more_body": True})
        message = await receive()
        assert message == {"type": "http.disconnect"}
        done.set()

    async with serve(app) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"tick")
        writer.close()
        await asyncio.wait_for(done.wait(), 5)


async def test_receive_after_response_is_disconnect():
    out: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        out.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        out.append(await asyncio.wait_for(receive(), 2))

    async with serve(app) as gw, httpx.AsyncClient() as client:
        r = await client.get(f"http://{addr(gw)}/")
        assert r.status_code == 204 and "content-length" not in r.headers
    assert out == [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]


@pytest.mark.parametrize(
    "header",
    [(b"x-bad", b"a\r\nSet-Cookie: evil=1"), (b"x-bad", b"a\nb"), (b"x-bad", b"a\rb"), (b"", b"v"),
     (b"x:bad", b"v"), (b"x\nbad", b"v"), (b"x\rbad", b"v")],
)
async def test_invalid_response_headers_are_refused(header):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-fine", b"1"), header]})
        await send({"type": "http.response.body", "body": b"x"})

    async with serve(app) as gw, httpx.AsyncClient() as client:
        for _ in range(2):  # the second time the header's name is known to the head writer
            r = await client.get(f"http://{addr(gw)}/")
            assert r.status_code == 500 and "set-cookie" not in r.headers and "x-fine" not in r.headers


async def test_framing_and_connection_headers_are_the_servers_in_any_case():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"Content-Length", b"2"), (b"TRANSFER-ENCODING", b"chunked"), (b"X-Kept", b"yes"), (b"Connection", b"Close"),
        ]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve(app) as gw:
        for _ in range(2):  # the second time every name is known to the head writer
            out = await raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = out.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")[1:]
            assert b"content-length: 2" in lines and b"X-Kept: yes" in lines and b"connection: close" in lines
            assert not any(line.lower().startswith((b"transfer-encoding", b"connection: keep")) for line in lines)
            assert b"Content-Length: 2" not in lines and body == b"ok"


async def test_unmatched_path_is_404():
    from gateway.server import Gateway
    yaml_text = """
metrics: {path: null, health_path: null}
adapters: {http: {listen: "127.0.0.1:0", access_log: false}}
routes:
  http:
    - {path: /only/, app: "http_helpers:hello"}
"""
    gw = Gateway.from_text(yaml_text)
    async with gw, httpx.AsyncClient() as client:
        r1 = await client.get(f"http://{gw.addresses['http'][0]}/only/")
        r2 = await client.get(f"http://{gw.addresses['http'][0]}/other")
    assert r1.status_code == 200 and r1.text == "/only/|"
    assert r2.status_code == 404


async def test_lifespan_state_reaches_http_and_websocket_scopes():
    seen: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        seen.append(scope)
        await hello(scope, receive, send)

    async with serve(app) as gw:
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{addr(gw)}/")
        import websockets
        async with websockets.connect(f"ws://{addr(gw)}/") as ws:
            await ws.send("s")
            await ws.recv()
    assert [s["state"] for s in seen] == [{"db": "connected"}, {"db": "connected"}]


async def test_upload_is_flow_controlled_not_buffered():
    """While the app does not read, the server stops reading: the client's upload stalls."""
    release = asyncio.Event()
    total = 0

    async def app(scope, receive, send):
        nonlocal total
        if scope["type"] != "http":
            return
        await release.wait()
        more = True
        while more:
            message = await receive()
            total += len(message["body"])
            more = message["more_body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    size = 32 * 1024 * 1024
    async with serve(app, limits={"max_body_size": size}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"u" * size)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(writer.drain(), 0.5)  # the server is not swallowing it
        release.set()
        await asyncio.wait_for(writer.drain(), 10)
        status, _, body = await read_response(reader, timeout=10)
        writer.close()
    assert status == 200 and body == str(size).encode()


async def test_streamed_response_waits_for_a_client_that_does_not_read():
    """A body send returns only once the transport can take more: a stalled client stalls the app."""
    chunk, count = b"d" * (1024 * 1024), 32
    sent = 0

    async def app(scope, receive, send):
        nonlocal sent
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % (len(chunk) * count))]})
        for i in range(count):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < count - 1})
            sent += 1

    async with serve(app) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port, limit=len(chunk) * (count + 1))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader._transport.pause_reading()  # the client reads nothing until told
        last = -1
        while sent != last:  # until the app's progress stops
            last = sent
            await asyncio.sleep(0.2)
        assert sent < count
        reader._transport.resume_reading()
        status, _, body = await read_response(reader, timeout=10)
        writer.close()
    assert status == 200 and len(body) == len(chunk) * count and sent == count


async def test_http10_keep_alive_when_asked():
    async with serve(hello) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        for i in range(3):
            writer.write(b"GET /%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            status, headers, body = await read_response(reader)
            assert status == 200 and body == b"/%d|" % i
            assert headers[b"connection"] == b"keep-alive"
        writer.write(b"GET /last HTTP/1.0\r\n\r\n")
        out = await read_all(reader)
        writer.close()
    assert out.endswith(b"/last|") and b"connection: close" in out


@pytest.mark.parametrize("bodies,complete", [([b"abc"], False), ([b"hello", b"!"], "error")])
async def test_body_not_matching_content_length(bodies, complete):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        for i, body in enumerate(bodies):
            await send({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})

    async with serve(app) as gw:
        out = await raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # shorter: the connection is closed after the short body; longer: never more than announced
    assert out.count(b"HTTP/1.1 200") == 1
    _, _, body = out.partition(b"\r\n\r\n")
    assert body == (b"abc" if complete is False else b"hello")
