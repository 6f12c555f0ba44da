"""The http adapter's connection object driven through a fake transport with exact byte slices:
requests split across reads, limits met mid-head, read pauses and write backpressure, WebSocket
frames in pieces. No socket, no sleep (``protocol_helpers``)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from http_helpers import hello, status_of
from protocol_helpers import frame, handshake, harness, read_close_code

from gateway_adapters.http.websocket import ClientDisconnected

pytestmark = pytest.mark.timeout(30)


def get(target: bytes = b"/", headers: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (target, headers)


# -- the request head in pieces ------------------------------------------------------------------

async def test_a_request_in_one_byte_reads_is_parsed_as_a_whole():
    async with harness(hello) as h:
        wire = h.connect()
        data = b"POST /split HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        wire.feed(*(data[i:i + 1] for i in range(len(data))))
        response = await wire.transport.response()
        assert not wire.transport.closed  # keep-alive
    assert status_of(response) == 200 and response.endswith(b"\r\n\r\n/split|hello")


@pytest.mark.parametrize(("first", "rest", "status"), [
    (b"GET /" + b"a" * 60, b"a" * 60 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-Aa: " + b"v" * 60, b"v" * 60 + b"\r\nHost: x\r\n\r\n", 431),
])
async def test_limits_tell_414_from_431_when_the_head_arrives_in_pieces(first, rest, status):
    async with harness(hello, limits={"max_request_line": 100, "max_header_size": 100}) as h:
        wire = h.connect()
        wire.feed(first)
        assert wire.transport.data == b""  # half a target or value: nothing to say yet
        wire.feed(rest)
        out = await wire.transport.closing()
    assert status_of(out) == status


async def test_an_endless_header_line_is_cut_at_the_largest_valid_head():
    """llhttp keeps a header it has not seen the end of: the head as a whole is bounded, 431."""
    limits = {"max_request_line": 100, "max_header_size": 100, "max_headers": 4}
    bound = 100 + 4 * (2 * 100 + 4) + 64
    async with harness(hello, limits=limits) as h:
        wire = h.connect()
        wire.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        while sent + 90 <= bound - 40:  # pieces each under the header limit, never a line end
            wire.feed(b"v" * 90)
            sent += 90
        assert wire.transport.data == b"" and not wire.transport.closed  # still under the bound
        wire.feed(b"v" * 90, b"v" * 90)
        out = await wire.transport.closing()
    assert status_of(out) == 431


async def test_head_just_under_the_bound_is_parsed():
    """The same bound admits the largest valid head: 4 fields with names and values at the limit."""
    limits = {"max_request_line": 100, "max_header_size": 100, "max_headers": 4}
    fields = b"Host: x\r\n" + b"".join(b"%s: %s\r\n" % (b"N" * 99 + b"%d" % i, b"v" * 100) for i in range(3))
    async with harness(hello, limits=limits) as h:
        wire = h.connect()
        data = b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n" + fields + b"\r\n"
        wire.feed(*(data[i:i + 50] for i in range(0, len(data), 50)))  # every read but the last leaves the head open
        response = await wire.transport.response()
    assert status_of(response) == 200 and response.split(b"\r\n\r\n", 1)[1].startswith(b"/" + b"a" * 99)


async def test_two_pipelined_requests_in_one_read_are_answered_in_order():
    async with harness(hello) as h:
        wire = h.connect()
        wire.feed(get(b"/one") + get(b"/two")[:10])
        first = await wire.transport.response()
        wire.feed(get(b"/two")[10:])
        second = await wire.transport.response()
    assert first.endswith(b"/one|") and second.endswith(b"/two|")


# -- flow control --------------------------------------------------------------------------------

async def test_reading_pauses_past_max_pipelined_and_resumes_as_the_queue_drains():
    serving, release = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/hold":
            serving.set()
            await release.wait()
        await hello(scope, receive, send)

    async with harness(app, limits={"max_pipelined": 2}) as h:
        wire = h.connect()
        wire.feed(get(b"/hold"))
        await asyncio.wait_for(serving.wait(), 5)
        wire.feed(get(b"/a") + get(b"/b"))
        assert wire.transport.reading  # two waiting behind the one served: at the limit
        wire.feed(get(b"/c"))
        assert not wire.transport.reading  # one more: the socket is no longer read
        release.set()
        await wire.transport.until(lambda: wire.transport.reading)
        await wire.transport.until(lambda: wire.transport.data.count(b"HTTP/1.1 200") == 4)
    out = bytes(wire.transport.data)
    positions = [out.index(b"%s|" % path) for path in (b"/hold", b"/a", b"/b", b"/c")]
    assert positions == sorted(positions)


async def test_the_apps_send_waits_while_the_client_takes_nothing():
    progress: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            progress.append(i)
        await send({"type": "http.response.body", "body": b""})

    async with harness(app) as h:
        wire = h.connect()
        wire.protocol.pause_writing()  # the transport's buffer is above send_buffer
        wire.feed(get())
        await wire.transport.until(lambda: b"xxxxxxxxxx" in wire.transport.data)
        assert progress == []  # the first chunk is written; its send has not returned
        wire.protocol.resume_writing()
        await wire.transport.until(lambda: wire.transport.data.endswith(b"0\r\n\r\n"))
    assert progress == [0, 1, 2]


async def test_the_client_leaving_mid_body_gives_the_app_a_disconnect():
    got: list[dict[str, Any]] = []
    reading, done = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            got.append(message)
            reading.set()
            if message["type"] == "http.disconnect":
                done.set()
                return

    async with harness(app) as h:
        wire = h.connect()
        wire.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        await asyncio.wait_for(reading.wait(), 5)
        wire.lose()
        await asyncio.wait_for(done.wait(), 5)
    assert got[0] == {"type": "http.request", "body": b"0123456789", "more_body": True}
    assert got[-1] == {"type": "http.disconnect"}


# -- the request cycle answers for the app -------------------------------------------------------

async def test_an_app_that_fails_before_its_body_gets_500_and_one_that_fails_after_a_close():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/after":
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("the app fails")

    async with harness(app) as h:
        before, after = h.connect(), h.connect()
        before.feed(get(b"/before"))
        after.feed(get(b"/after"))
        out_before = await before.transport.closing()
        out_after = await after.transport.closing()
    assert status_of(out_before) == 500 and b"connection: close" in out_before
    assert status_of(out_after) == 200 and out_after.endswith(b"4\r\npart\r\n")  # no last chunk: the close says it


# -- WebSocket frames in pieces ------------------------------------------------------------------

async def test_frames_split_across_reads_and_the_frame_size_limit():
    """ws_max_frame_size bounds each frame; a message in smaller frames may still be larger."""
    async with harness(hello, limits={"ws_max_frame_size": 100, "ws_max_message_size": 1000}) as h:
        wire = h.connect()
        wire.feed(handshake())
        await wire.transport.until(lambda: b"\r\n\r\n" in wire.transport.data)
        assert wire.transport.take().startswith(b"HTTP/1.1 101")
        # 100-byte frames (at the limit), split every 7 bytes: frame headers arrive in parts
        data = frame(0x2, b"a" * 100, fin=False) + frame(0x0, b"b" * 100, fin=False) + frame(0x0, b"c" * 100)
        wire.feed(*(data[k:k + 7] for k in range(0, len(data), 7)))
        await wire.transport.until(lambda: len(wire.transport.data) >= 304)
        echo = wire.transport.take()
        assert echo[0] == 0x82 and echo[1] == 126 and struct.unpack("!H", echo[2:4])[0] == 300
        assert echo[4:] == b"a" * 100 + b"b" * 100 + b"c" * 100
        wire.feed(frame(0x2, b"x" * 101))
        out = await wire.transport.closing()
    assert read_close_code(out) == 1009


async def test_frames_that_came_with_the_handshake_are_kept_for_the_session():
    async with harness(hello) as h:
        wire = h.connect()
        wire.feed(handshake() + frame(0x1, b"early"))  # the client did not wait for the 101
        await wire.transport.until(lambda: wire.transport.data.endswith(b"\x81\x05early"))
    assert wire.transport.data.startswith(b"HTTP/1.1 101")


async def test_a_websocket_send_waits_while_the_client_takes_nothing_and_raises_once_it_is_gone():
    progress: dict[str, list[int]] = {"/stays": [], "/goes": []}
    ended: dict[str, BaseException] = {}
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        await receive()
        await send({"type": "websocket.accept"})
        try:
            for i in range(3):
                await send({"type": "websocket.send", "text": f"m{i}"})
                progress[path].append(i)
        except OSError as exc:
            ended[path] = exc
        if len(ended) + sum(len(p) == 3 for p in progress.values()) == 2:
            done.set()

    async with harness(app) as h:
        stays, goes = h.connect(), h.connect()
        for wire, path in ((stays, b"/stays"), (goes, b"/goes")):
            wire.protocol.pause_writing()  # the transport's buffer is above send_buffer
            wire.feed(handshake(path))
            await wire.transport.until(lambda wire=wire: wire.transport.data.endswith(b"\x81\x02m0"))
        assert progress == {"/stays": [], "/goes": []}  # the first frames are out; the sends wait
        stays.protocol.resume_writing()
        goes.lose()
        await asyncio.wait_for(done.wait(), 5)
    assert progress == {"/stays": [0, 1, 2], "/goes": []}
    assert list(ended) == ["/goes"] and isinstance(ended["/goes"], ClientDisconnected)  # an OSError, as ASGI asks
    assert "went away" in str(ended["/goes"]), ended  # not "took nothing for send_timeout": it closed
