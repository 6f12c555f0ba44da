"""ASGI WebSocket 2.5 and the WebSocket limits, driven by the `websockets` library, aiohttp's
client and raw sockets."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import aiohttp
import httpx
import pytest
import websockets
from http_helpers import addr, hello, host_port, read_all, serve
from protocol_helpers import frame, handshake, read_close_code
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.timeout(30)


def ws_app(handler):
    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await handler(scope, receive, send)
        elif scope["type"] == "http":
            await hello(scope, receive, send)
    return app


async def test_echo_text_and_binary_and_scope():
    scopes: list[dict[str, Any]] = []

    async def handler(scope, receive, send):
        scopes.append(scope)
        await hello(scope, receive, send)

    async with serve(ws_app(handler)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/chat/r%C3%A9?x=1") as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xffbin")
            assert await ws.recv() == b"\x00\xffbin"
    scope = scopes[0]
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/chat/ré" and scope["raw_path"] == b"/chat/r%C3%A9"
    assert scope["query_string"] == b"x=1"
    assert scope["http_version"] == "1.1"
    assert scope["subprotocols"] == []
    assert "websocket.http.response" in scope["extensions"]
    assert any(n == b"sec-websocket-key" for n, _ in scope["headers"])


async def test_subprotocol_and_accept_headers():
    async def handler(scope, receive, send):
        await receive()
        assert scope["subprotocols"] == ["chat.v2", "chat.v1"]
        await send({"type": "websocket.accept", "subprotocol": "chat.v1", "headers": [(b"x-extra", b"yes")]})
        await receive()

    async with serve(ws_app(handler)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/", subprotocols=["chat.v2", "chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            assert ws.response.headers["x-extra"] == "yes"


async def test_close_code_and_reason_reach_the_client():
    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4321, "reason": "bye now"})

    async with serve(ws_app(handler)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/") as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4321 and ws.close_reason == "bye now"


async def test_disconnect_carries_the_client_code():
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "websocket.disconnect":
                done.set()
                return

    async with serve(ws_app(handler)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/") as ws:
            await ws.send("x")
            await ws.close(code=4004, reason="client says so")
        await asyncio.wait_for(done.wait(), 5)
    assert got[0] == {"type": "websocket.receive", "text": "x"}
    assert got[-1]["type"] == "websocket.disconnect" and got[-1]["code"] == 4004
    assert got[-1]["reason"] == "client says so"


async def test_abrupt_client_disconnect_is_1006():
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        got.append(message)
        done.set()

    async with serve(ws_app(handler)) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(handshake())
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()
        await asyncio.wait_for(done.wait(), 5)
    assert got == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_denial_response_extension():
    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "websocket.http.response.body", "body": b"need ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"a token"})

    async with serve(ws_app(handler)) as gw:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"ws://{addr(gw)}/"):
                pass
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"need a token"


async def test_close_before_accept_is_403():
    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.close"})

    async with serve(ws_app(handler)) as gw:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"ws://{addr(gw)}/"):
                pass
    assert info.value.response.status_code == 403


async def test_app_returning_without_accepting_is_500():
    async def handler(scope, receive, send):
        await receive()

    async with serve(ws_app(handler)) as gw:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"ws://{addr(gw)}/"):
                pass
    assert info.value.response.status_code == 500


async def test_permessage_deflate_negotiated():
    big = "abc" * 10000

    async def handler(scope, receive, send):
        await hello(scope, receive, send)

    async with serve(ws_app(handler)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/", compression="deflate") as ws:
            assert "permessage-deflate" in ws.response.headers.get("sec-websocket-extensions", "")
            await ws.send(big)
            assert await ws.recv() == big
        async with websockets.connect(f"ws://{addr(gw)}/", compression=None) as ws:
            assert "sec-websocket-extensions" not in ws.response.headers
            await ws.send("plain")
            assert await ws.recv() == "plain"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://{addr(gw)}/", compress=15) as ws:
                assert ws.compress == 15
                await ws.send_str(big)
                assert (await ws.receive()).data == big


async def test_compression_can_be_switched_off():
    async with serve(ws_app(hello), ws_compression=False) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/", compression="deflate") as ws:
            assert "sec-websocket-extensions" not in ws.response.headers


async def raw_ws(gw, path: bytes = b"/"):
    host, port = host_port(gw)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(handshake(path))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_invalid_close_code_from_client_is_answered_with_1002():
    got: list[dict[str, Any]] = []

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serve(ws_app(handler)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x8, struct.pack("!H", 1005)))  # 1005 must never be sent on the wire
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == 1002
    assert got and got[0]["code"] == 1002 and type(got[0]["code"]) is int


@pytest.mark.parametrize("code", [1004, 1006, 1015, 2999, 5000, 65535])
async def test_close_codes_outside_the_valid_ranges_are_never_echoed(code):
    """RFC 6455 section 7.4: 1006 (and codes nobody may send) must not go back on the wire."""
    got: list[dict[str, Any]] = []

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serve(ws_app(handler)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x8, struct.pack("!H", code)))
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == 1002
    assert got and got[0]["type"] == "websocket.disconnect"
    assert got[0]["code"] == 1002 and type(got[0]["code"]) is int


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1014, 3000, 4999])
async def test_valid_close_codes_are_echoed_and_reach_the_app(code):
    got: list[dict[str, Any]] = []

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serve(ws_app(handler)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x8, struct.pack("!H", code)))
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == code
    assert got[0]["code"] == code and type(got[0]["code"]) is int


async def test_message_size_limit_boundary_single_frame_and_fragments():
    async with serve(ws_app(hello), limits={"ws_max_message_size": 1000}) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/", compression=None) as ws:
            await ws.send(b"x" * 1000)
            assert await ws.recv() == b"x" * 1000
            await ws.send(b"x" * 1001)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009
        # a message in fragments whose sum passes the limit: 1009 too
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x2, b"a" * 600, fin=False) + frame(0x0, b"b" * 600, fin=True))
        out = await read_all(reader)
        writer.close()
        assert read_close_code(out) == 1009
        # a frame header announcing a huge frame is refused before the payload arrives
        reader, writer = await raw_ws(gw)
        writer.write(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 10**9) + os.urandom(4))
        out = await read_all(reader)
        writer.close()
        assert read_close_code(out) == 1009


async def test_server_pings_and_closes_a_silent_client():
    async with serve(ws_app(hello), limits={"ws_ping_interval": 0.2, "ws_ping_timeout": 0.3}) as gw:
        # a live client answers pings (websockets does automatically) and stays connected
        async with websockets.connect(f"ws://{addr(gw)}/", ping_interval=None) as ws:
            await asyncio.sleep(1.0)
            await ws.send("still here")
            assert await ws.recv() == "still here"
        # a raw client that never answers gets a ping, then the connection is closed
        reader, writer = await raw_ws(gw)
        out = await read_all(reader, timeout=5)
        writer.close()
    assert out[:1] == b"\x89"  # a ping frame came first
    assert read_close_code(out) == 1011


async def test_client_ping_gets_pong():
    async with serve(ws_app(hello)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/") as ws:
            waiter = await ws.ping(b"abc")
            latency = await asyncio.wait_for(waiter, 5)
            assert latency >= 0


async def test_backpressure_a_client_that_does_not_read_stalls_its_sender():
    progress = {"sent": 0}

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        chunk = b"z" * 65536
        try:
            for _ in range(2000):  # 128 MiB if nothing held it back
                await send({"type": "websocket.send", "bytes": chunk})
                progress["sent"] += 1
        except OSError:
            return

    async with serve(ws_app(handler), limits={"send_buffer": 65536}, ws_compression=False) as gw:
        reader, writer = await raw_ws(gw)
        # do not read: after the kernel buffers fill up, the app's send must block
        last = -1
        for _ in range(100):
            await asyncio.sleep(0.05)
            if progress["sent"] == last:
                break
            last = progress["sent"]
        stalled_at = progress["sent"]
        assert stalled_at < 200, stalled_at  # far less than 2000 frames: it waited
        # reading resumes the sender
        await reader.read(1024 * 1024)
        for _ in range(50):
            await reader.read(1024 * 1024)
            if progress["sent"] > stalled_at:
                break
        assert progress["sent"] > stalled_at
        writer.transport.abort()


async def test_max_connections_refuses_handshake_with_503():
    async with serve(ws_app(hello), limits={"max_connections": 1}) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/") as ws:
            with pytest.raises(InvalidStatus) as info:
                async with websockets.connect(f"ws://{addr(gw)}/"):
                    pass
            assert info.value.response.status_code == 503
            await ws.send("ok")
            assert await ws.recv() == "ok"
        for _ in range(50):  # below the limit again
            await asyncio.sleep(0.02)
            try:
                async with websockets.connect(f"ws://{addr(gw)}/") as ws:
                    await ws.send("again")
                    assert await ws.recv() == "again"
                    break
            except InvalidStatus:
                continue
        else:
            pytest.fail("the limit never resumed")


async def test_bad_handshakes():
    async with serve(ws_app(hello)) as gw:
        host, port = host_port(gw)
        for data, status in [
            (handshake().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), b"426"),
            (handshake().replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: x"), b"400"),
        ]:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(data)
            out = await read_all(reader)
            writer.close()
            assert out.split(b" ", 2)[1] == status, out


async def test_send_after_client_left_raises_oserror():
    outcome: dict[str, Any] = {}
    done = asyncio.Event()

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # the disconnect
        try:
            await send({"type": "websocket.send", "text": "late"})
        except OSError as exc:
            outcome["error"] = exc
        done.set()

    async with serve(ws_app(handler)) as gw:
        async with websockets.connect(f"ws://{addr(gw)}/"):
            pass
        await asyncio.wait_for(done.wait(), 5)
    assert isinstance(outcome["error"], OSError)


async def test_aiohttp_client_echo():
    async with serve(ws_app(hello)) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://{addr(gw)}/a") as ws:
                for i in range(20):
                    await ws.send_str(f"m{i}")
                    assert (await ws.receive()).data == f"m{i}"
                await ws.close()
        async with httpx.AsyncClient() as client:  # the same port still serves HTTP
            assert (await client.get(f"http://{addr(gw)}/h")).text == "/h|"


async def test_invalid_utf8_text_is_1007():
    got: list[dict[str, Any]] = []

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serve(ws_app(handler)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x1, b"\xff\xfe"))
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == 1007
    # the app's code is a plain int, never the frame reader's enum
    assert got[0]["type"] == "websocket.disconnect" and got[0]["code"] == 1007 and type(got[0]["code"]) is int


async def test_websocket_path_without_a_route_is_403():
    from gateway.server import Gateway
    gw = Gateway.from_text("""
metrics: {path: null, health_path: null}
adapters: {http: {listen: "127.0.0.1:0"}}
routes:
  http: [{path: /, app: "http_helpers:hello"}]
  websocket: [{path: /ws/, app: "http_helpers:hello"}]
""")
    async with gw:
        async with websockets.connect(f"ws://{addr(gw)}/ws/") as ws:
            await ws.send("routed")
            assert await ws.recv() == "routed"
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"ws://{addr(gw)}/elsewhere"):
                pass
    assert info.value.response.status_code == 403


async def test_frames_sent_right_behind_the_handshake_are_kept():
    async with serve(ws_app(hello)) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(handshake() + frame(0x1, b"early"))  # before the 101 even arrived
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05early"
        writer.close()


async def test_messages_after_the_app_returned_are_dropped_not_queued():
    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        # returns without closing: the adapter closes with 1000

    async with serve(ws_app(handler)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x1, b"first"))
        writer.write(b"".join(frame(0x1, b"x%d" % i) for i in range(500)))  # more than the queue holds
        out = await read_all(reader, timeout=1)  # the close frame; the socket stays open until the client answers
        writer.close()
    assert read_close_code(out) == 1000


def deflated(data: bytes, bits: int = 15) -> bytes:
    """``data`` as one permessage-deflate message payload (the sync-flush tail dropped)."""
    zobj = __import__("zlib").compressobj(9, 8, -bits)
    return (zobj.compress(data) + zobj.flush(2))[:-4]  # 2: Z_SYNC_FLUSH


def unmasked(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


@pytest.mark.parametrize("data", [
    unmasked(0x1, b"hi"),                                   # a client frame must be masked
    bytes([0xA1]) + frame(0x1, b"hi")[1:],                  # RSV2 set: no extension defines it
    bytes([0xC1]) + frame(0x1, b"hi")[1:],                  # RSV1 without permessage-deflate
    frame(0x3, b"x"),                                       # a reserved data opcode
    frame(0xB, b"x"),                                       # a reserved control opcode
    frame(0x9, b"p", fin=False),                            # a fragmented control frame
    frame(0x9, b"p" * 126),                                 # a control frame over 125 bytes
    frame(0x0, b"x"),                                       # a continuation without a message
    frame(0x1, b"a", fin=False) + frame(0x1, b"b"),         # a new message inside a fragmented one
    frame(0x8, b"\x03"),                                    # a close payload of one byte
], ids=["unmasked", "rsv2", "rsv1-uncompressed", "opcode-3", "opcode-11", "fragmented-ping",
        "long-ping", "stray-continuation", "interleaved-message", "one-byte-close"])
async def test_protocol_violations_close_with_1002(data):
    got: list[dict[str, Any]] = []

    async def handler(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serve(ws_app(handler)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(data)
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == 1002
    assert got == [{"type": "websocket.disconnect", "code": 1002, "reason": ""}]


async def test_close_reason_that_is_not_utf8_is_1007():
    async with serve(ws_app(hello)) as gw:
        reader, writer = await raw_ws(gw)
        writer.write(frame(0x8, struct.pack("!H", 1000) + b"\xff"))
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == 1007


async def test_fragments_with_control_frames_between_them_and_split_reads():
    """Pings may come between the fragments of a message; every byte arrives in its own write."""
    async with serve(ws_app(hello)) as gw:
        reader, writer = await raw_ws(gw)
        data = frame(0x1, "hé".encode(), fin=False) + frame(0x9, b"ping!") + frame(0x0, b"llo")
        for k in range(len(data)):
            writer.write(data[k:k + 1])
            await writer.drain()
        pong = await asyncio.wait_for(reader.readexactly(7), 5)
        assert pong == b"\x8a\x05ping!"
        echo = await asyncio.wait_for(reader.readexactly(2 + len("héllo".encode())), 5)
        assert echo == b"\x81\x06" + "héllo".encode()
        writer.close()


def raw_deflate_handshake(offer: bytes) -> bytes:
    return handshake(extra=b"Sec-WebSocket-Extensions: %s\r\n" % offer)


async def test_compressed_fragments_and_a_compressed_message_past_the_limit():
    async with serve(ws_app(hello), limits={"ws_max_message_size": 1000}) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw_deflate_handshake(b"permessage-deflate; client_max_window_bits"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"sec-websocket-extensions: permessage-deflate\r\n" in head
        body = deflated(b"y" * 1000)  # exactly the limit, in two frames; RSV1 on the first only
        writer.write(bytes([0x42]) + frame(0x2, body[:3], fin=False)[1:] + frame(0x0, body[3:]))
        first = await asyncio.wait_for(reader.readexactly(2), 5)
        assert first[0] == 0xC2  # FIN | RSV1 | binary: the echo is compressed too
        echo = await asyncio.wait_for(reader.readexactly(first[1] & 0x7F), 5)
        zobj = __import__("zlib").decompressobj(-15)
        assert zobj.decompress(echo + b"\x00\x00\xff\xff") == b"y" * 1000
        # a few bytes on the wire that inflate past the limit: refused as it inflates
        writer.write(bytes([0xC2]) + frame(0x2, deflated(b"z" * 100_000))[1:])
        out = await read_all(reader)
        writer.close()
    assert read_close_code(out) == 1009


@pytest.mark.parametrize("offer, answer", [
    ("permessage-deflate; server_no_context_takeover", "permessage-deflate; server_no_context_takeover"),
    ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate", "permessage-deflate"),
    ("permessage-deflate; bogus=1", None),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("x-webkit-deflate-frame", None),
    ("permessage-deflate; server_max_window_bits=" + "1" * 5000, None),  # past int()'s digit limit
])
async def test_deflate_offers(offer, answer):
    async with serve(ws_app(hello)) as gw:
        host, port = host_port(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw_deflate_handshake(offer.encode()))
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        writer.close()
    assert head.startswith("HTTP/1.1 101")
    lines = [line for line in head.split("\r\n") if line.startswith("sec-websocket-extensions:")]
    assert lines == ([f"sec-websocket-extensions: {answer}"] if answer else [])


async def test_deflate_honours_the_window_and_context_the_client_asked_for():
    """A client that inflates with a 1 KiB window and a fresh context per message: a server
    that referenced older bytes would make it fail."""
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    chunk = os.urandom(600).hex()  # 1200 characters: a repeat is further back than 1 KiB
    async with serve(ws_app(hello)) as gw:
        for params in ({"server_max_window_bits": 10}, {"server_no_context_takeover": True}):
            factory = ClientPerMessageDeflateFactory(**params)
            async with websockets.connect(f"ws://{addr(gw)}/", extensions=[factory], compression=None) as ws:
                for message in (chunk + chunk, chunk, chunk):
                    await ws.send(message)
                    assert await ws.recv() == message
