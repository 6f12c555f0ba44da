"""A fake transport for driving the http adapter's connection object byte slice by byte slice.

The tests that care how the server parses input split across reads, or how it pauses and
resumes, feed exact slices with ``data_received`` and read back exactly what was written: no
socket, no sleep, and the kernel cannot merge two writes into one read. The adapter's shared
state comes from a ``Gateway`` that is built but never started (no listener, no timer sweep), so
a test moves the clock itself when it wants a deadline to pass.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from gateway.plugins import AdapterContext
from gateway.server import Gateway
from gateway_adapters.http.connection import HttpProtocol
from gateway_adapters.http.server import ServerState

SETTLE = 5.0
"""Longest a test waits for the server to react (a safety net against a hang, never a measure)."""


class FakeTransport(asyncio.Transport):
    """Records what the protocol does to its transport: writes, close or abort, read pauses."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 50000), sock: tuple[str, int] = ("127.0.0.1", 8000)) -> None:
        super().__init__()
        self.extra = {"peername": peer, "sockname": sock}
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size reports: set it to act a client that reads nothing
        self.high_water: int | None = None
        self._changed = asyncio.Event()

    # -- what the protocol calls -----------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        self.data += data
        self._changed.set()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def abort(self) -> None:
        self.closed = self.aborted = True
        self._changed.set()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False
        self._changed.set()

    def resume_reading(self) -> None:
        self.reading = True
        self._changed.set()

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    # -- what the test calls ---------------------------------------------------------------
    def take(self) -> bytes:
        """Everything written since the last ``take``."""
        out = bytes(self.data)
        self.data.clear()
        return out

    async def until(self, ready: Callable[[], bool]) -> None:
        """Let the server run until ``ready()``, a condition on this transport, holds (checked
        after every change of it; an ``AssertionError`` after ``SETTLE`` s)."""
        try:
            async with asyncio.timeout(SETTLE):
                while not ready():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"the server did not get there: wrote {bytes(self.data)!r}, closed={self.closed}") from None

    async def response(self) -> bytes:
        """Wait for a complete response head and the body its Content-Length announces; take it."""

        def whole() -> bool:
            head, sep, body = bytes(self.data).partition(b"\r\n\r\n")
            if not sep:
                return False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    return len(body) >= int(value)
            return self.closed

        await self.until(whole)
        return self.take()

    async def closing(self) -> bytes:
        """Wait until the server closes the connection; everything written before that."""
        await self.until(lambda: self.closed)
        return self.take()


class Wire:
    """One client connection: an ``HttpProtocol`` on a ``FakeTransport``."""

    def __init__(self, state: ServerState) -> None:
        self.protocol = HttpProtocol(state, False)
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)

    def feed(self, *pieces: bytes) -> None:
        """Each piece is one read of the socket."""
        for piece in pieces:
            self.protocol.data_received(piece)

    def lose(self) -> None:
        """The client goes away."""
        self.transport.closed = True
        self.protocol.connection_lost(None)


class Harness:
    """The adapter's shared state without a listener; ``connect()`` opens a connection."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.wires: list[Wire] = []

    def connect(self) -> Wire:
        wire = Wire(self.state)
        self.wires.append(wire)
        return wire


@contextlib.asynccontextmanager
async def harness(app: Any, **http: Any) -> AsyncIterator[Harness]:
    """Serve ``app`` for every HTTP and WebSocket path through fake transports; ``http`` are the
    ``adapters.http`` keys (``limits={...}``, ``ws_compression=False``, ...)."""
    gw = Gateway.from_app(app, http=http)
    config = gw.plan.adapters[0].config
    context = AdapterContext(
        name="http", router=gw.router, runner=gw.runner, layer=None,  # type: ignore[arg-type]
        metrics=gw.metrics, mounts=gw.mounts, health=gw.health,
        log=structlog.get_logger("gateway.adapters.http").bind(adapter="http"),
    )
    h = Harness(ServerState(config, context, asyncio.get_running_loop()))
    try:
        yield h
    finally:
        for wire in h.wires:
            if wire.protocol.transport is not None:
                wire.lose()
            task = wire.protocol.task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


# -- WebSocket bytes ---------------------------------------------------------------------------

def handshake(path: bytes = b"/", extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path, key, extra))


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_close_code(data: bytes) -> int | None:
    """The code of the first close frame (server frames are unmasked) in ``data``."""
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = struct.unpack("!H", data[i:i + 2])[0]
            i += 2
        elif n == 127:
            n = struct.unpack("!Q", data[i:i + 8])[0]
            i += 8
        if opcode == 8:
            return struct.unpack("!H", data[i:i + 2])[0]
        i += n
    return None
