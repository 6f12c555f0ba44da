"""Flow control for one connection, both ways, on asyncio's public ``Protocol`` callbacks only.

Writing: the transport calls ``pause_writing`` when its buffer passes the high-water mark and
``resume_writing`` when it drained; a sender awaits ``wait_writable()`` in between, so a client that reads
nothing holds up only its own sender. Reading: the connection stops the socket with
``hold_reading`` while it has more buffered than it may (pipelined requests, a request body, WebSocket
messages the app has not taken yet) and lets it go with ``release_reading``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast


class FlowControlled(asyncio.Protocol):
    """Base of a connection protocol: the transport, the write pause and the read hold."""

    __slots__ = ("drain_waiter", "loop", "read_held", "transport", "write_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.read_held = False
        self.drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # small responses go out at once, not after Nagle's delay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(ConnectionResetError(f"connection lost: {exc}"))

    # -- writing ------------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait_writable(self) -> None:
        """Wait until the transport takes more; ``ConnectionResetError`` once it is gone."""
        if self.transport is None:
            raise ConnectionResetError("connection lost")
        if not self.write_paused:
            return
        waiter = self.drain_waiter
        if waiter is None:
            waiter = self.drain_waiter = self.loop.create_future()
        await waiter

    # -- reading ------------------------------------------------------------------------
    def hold_reading(self) -> None:
        self.read_held = True
        transport = self.transport
        if transport is not None:
            try:
                transport.pause_reading()
            except (AttributeError, NotImplementedError, RuntimeError):
                pass  # a transport without read flow control (or one already closing)

    def release_reading(self) -> None:
        self.read_held = False
        transport = self.transport
        if transport is not None:
            try:
                transport.resume_reading()
            except (AttributeError, NotImplementedError, RuntimeError):
                pass
