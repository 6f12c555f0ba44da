"""WebSocket connections: the handshake, frames both ways (``ws_frames``), ASGI events both ways.

The frame reader hands each complete message straight to the instance queue (no extra task per
connection). Sends go straight to the transport; when the transport's buffer is above
``send_buffer`` the app's ``send`` waits for it to drain, so a client that does not read stalls
only its own sender.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from gateway.routing import Match
from gateway.runner import Outcome
from gateway.types import Message

from .head import check_header, simple_response, status_line
from .ws_frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    Deflater,
    FrameReader,
    ProtocolError,
    accept_key,
    frame_head,
    negotiate_deflate,
)

if TYPE_CHECKING:
    from .connection import HttpProtocol
    from .request import Request


# Where a WebSocket connection is, from the upgrade request to the end (``WebSocketSession.state``).
# Plain ints with names rather than an IntEnum: every frame and every send compares them, and
# CPython specialises comparisons of exact ints only (an IntEnum costs a generic compare each time).
CONNECTING: Final = 0
"""The app has the ``websocket.connect``; neither accepted nor refused yet."""
RESPONDING: Final = 1
"""The app denies the handshake with an HTTP response of its own (being sent)."""
OPEN: Final = 2
CLOSING: Final = 3
"""Our close frame is out; waiting for the client's (``CLOSE_TIMEOUT``)."""
CLOSED: Final = 4
WS_EXTENSIONS: dict[str, Any] = {"websocket.http.response": {}}
_PACK_CODE = struct.Struct("!H").pack
CLOSE_TIMEOUT = 5.0


def _write_frame(transport: Any, first: int, data: bytes) -> None:
    """One server frame (``first`` is FIN | RSV1 | opcode): small ones in a single write."""
    n = len(data)
    if n < 126:  # the usual message, without a call for its two-byte header
        transport.write(bytes((first, n)) + data)
    elif n < 65536:
        transport.write(frame_head(first, n) + data)
    else:
        transport.writelines((frame_head(first, n), data))


def _sendable_close_code(code: int) -> bool:
    """RFC 6455 section 7.4: the codes a peer may put in a close frame (the registered ones
    meant for the wire, and the ranges for libraries and applications)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class ClientDisconnected(OSError):
    """``send`` on a WebSocket whose client has gone (ASGI 2.4+: an ``OSError`` subclass)."""


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _valid_key(key: str | None) -> bool:
    if not key:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


async def start_websocket(conn: HttpProtocol, req: Request) -> None:
    """Handle an upgrade request: validate it, route it, start the instance (the app accepts)."""
    server = conn.server
    key = _latin1(req.header(b"sec-websocket-key"))
    if req.method != "GET" or key is None or not _valid_key(key):
        conn.write_close(simple_response(400, b"Bad WebSocket handshake\n", date=server.date_header))
        return
    if req.header(b"sec-websocket-version") != b"13":
        conn.write_close(simple_response(426, extra=b"sec-websocket-version: 13\r\n", date=server.date_header))
        return
    if conn.rejected:
        conn.write_close(simple_response(503, extra=b"retry-after: 1\r\n", date=server.date_header))
        return
    scope = server.scope(conn, req, "websocket")
    scope["subprotocols"] = [
        p.strip() for v in req.header_values(b"sec-websocket-protocol") for p in v.decode("latin-1").split(",") if p.strip()
    ]
    scope["extensions"] = WS_EXTENSIONS
    path = scope["path"]
    client = scope["client"]
    mount = server.mounts.find(path, "websocket") if server.mounts else None
    match = Match(mount.route, (), {}) if mount is not None else server.resolve("websocket", scope)
    if match is None:
        conn.write_close(simple_response(403, date=server.date_header))
        if server.access_log:
            server.log.info("websocket", path=path, status=403, client=f"{client[0]}:{client[1]}" if client else None)
        return
    deflate = None
    if server.config.ws_compression:
        deflate = negotiate_deflate(_latin1(req.header(b"sec-websocket-extensions")))
    session = WebSocketSession(conn, scope, key, deflate)
    conn.ws = session
    inst = server.runner.instance(match, scope, session.send, adapter="http")
    session.inst = inst
    inst.queue.put_nowait({"type": "websocket.connect"})
    task = inst.start()
    task.add_done_callback(session.app_done)


class WebSocketSession:
    """One WebSocket connection, from handshake to close."""

    __slots__ = (
        "close_code",
        "close_sent",
        "closing_at",
        "conn",
        "deflate",
        "deflater",
        "finished",
        "frames_in",
        "frames_out",
        "inst",
        "key",
        "logged",
        "opened",
        "pending",
        "ping_due",
        "ping_sent",
        "pump",
        "reader",
        "resp_body",
        "resp_headers",
        "resp_status",
        "scope",
        "seen",
        "state",
    )

    def __init__(self, conn: HttpProtocol, scope: dict[str, Any], key: str, deflate: tuple[str, int, bool] | None) -> None:
        self.conn = conn
        self.scope = scope
        self.key = key
        self.deflate = deflate  # the permessage-deflate agreed on: (header value, window bits, no takeover)
        self.deflater: Deflater | None = None
        self.inst: Any = None
        self.state = CONNECTING
        self.reader: FrameReader | None = None
        self.pending: deque[dict[str, Any]] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.seen = False
        self.ping_due = 0.0
        self.ping_sent = 0.0
        self.opened = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.close_code: int | None = None
        self.close_sent = False
        self.finished = False
        self.resp_status = 0
        self.resp_headers: Any = ()
        self.resp_body: list[bytes] | None = None
        self.closing_at = 0.0
        self.logged = False

    # -- the application's side -------------------------------------------------------------
    async def send(self, event: Message) -> None:
        kind = event["type"]
        state = self.state
        if kind == "websocket.send":
            if state != OPEN:
                if state == CONNECTING:
                    raise RuntimeError("'websocket.send' before 'websocket.accept'")
                raise ClientDisconnected("the WebSocket is closed")
            data = event.get("bytes")
            if data is not None:
                payload, first = bytes(data), 0x80 | BINARY
            else:
                payload, first = event["text"].encode("utf-8"), 0x80 | TEXT
            conn = self.conn
            transport = conn.transport
            if transport is None or transport.is_closing():
                raise ClientDisconnected("the WebSocket client went away")
            deflater = self.deflater
            if deflater is not None:
                payload = deflater.compress(payload)
                first |= 0x40  # RSV1: this message is compressed
            _write_frame(transport, first, payload)
            self.frames_out += 1
            if conn.write_paused:
                try:
                    await conn.wait_writable()
                except ConnectionError:
                    raise ClientDisconnected("the WebSocket client went away") from None
                if conn.transport is None:  # gone while it waited: closed, or aborted for send_timeout
                    if conn.send_timed_out:
                        raise ClientDisconnected("the WebSocket client took nothing for send_timeout seconds")
                    raise ClientDisconnected("the WebSocket client went away")
        elif kind == "websocket.accept":
            if state != CONNECTING:
                raise RuntimeError("'websocket.accept' sent twice or after a close")
            self._accept(event)
        elif kind == "websocket.close":
            if state == CONNECTING:
                self._http_response(403, (), b"")
            elif state == OPEN:
                code = event.get("code") or 1000
                reason = (event.get("reason") or "").encode("utf-8")[:123]
                self.close_code = code
                self._write_close_frame(code, reason)
                self.state = CLOSING
                self.closing_at = self.conn.server.loop.time() + CLOSE_TIMEOUT
        elif kind == "websocket.http.response.start":
            if state != CONNECTING:
                raise RuntimeError("'websocket.http.response.start' after the handshake")
            self.state = RESPONDING
            self.resp_status = event["status"]
            self.resp_headers = event.get("headers") or ()
            self.resp_body = []
        elif kind == "websocket.http.response.body":
            if state != RESPONDING:
                raise RuntimeError("'websocket.http.response.body' without 'websocket.http.response.start'")
            assert self.resp_body is not None
            self.resp_body.append(bytes(event.get("body") or b""))
            if not event.get("more_body"):
                self._http_response(self.resp_status, self.resp_headers, b"".join(self.resp_body))
        else:
            raise RuntimeError(f"unexpected event {kind!r} on a websocket scope")

    def _accept(self, event: Message) -> None:
        conn = self.conn
        transport = conn.transport
        if transport is None:
            self.state = CLOSED
            raise ClientDisconnected("the client went away before the handshake completed")
        accept = accept_key(self.key)
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
            b"sec-websocket-accept: %s\r\n" % accept,
            conn.server.date_header,
        ]
        subprotocol = event.get("subprotocol")
        if subprotocol:
            lines.append(b"sec-websocket-protocol: %s\r\n" % subprotocol.encode("latin-1"))
        deflate = self.deflate
        if deflate is not None:
            lines.append(b"sec-websocket-extensions: %s\r\n" % deflate[0].encode())
            self.deflater = Deflater(deflate[1], deflate[2])
        for name, value in event.get("headers") or ():
            lname = name.lower()
            if lname in (b"sec-websocket-accept", b"upgrade", b"connection", b"sec-websocket-extensions", b"date", b"server") or (
                lname == b"sec-websocket-protocol" and subprotocol
            ):
                continue
            check_header(name, value)
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        loop = conn.server.loop
        limits = conn.server.limits
        self.reader = FrameReader(self.on_message, limits.ws_max_message_size, limits.ws_max_frame_size, deflate is not None)
        self.state = OPEN
        conn.parser = None
        if limits.ws_ping_interval:
            self.ping_due = loop.time() + limits.ws_ping_interval
        tail = conn.tail
        conn.tail = b""
        if tail:
            self.feed(tail)
        if conn.read_held:
            conn.release_reading()

    def _http_response(self, status: int, headers: Any, body: bytes) -> None:
        """The denial response (or the 403 for a close before accept): a real HTTP response."""
        self.state = CLOSED
        self.close_code = status
        conn = self.conn
        transport = conn.transport
        if transport is not None:
            lines = [status_line(status), conn.server.date_header]
            for name, value in headers:
                lname = name.lower()
                if lname in (b"content-length", b"transfer-encoding", b"connection"):
                    continue
                check_header(name, value)
                lines.append(b"%s: %s\r\n" % (name, value))
            lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            lines.append(body)
            transport.write(b"".join(lines))
            transport.close()
        self.finish(1006, "")

    def _write_close_frame(self, code: int, reason: bytes = b"") -> None:
        """Our close frame: one per connection, whoever starts the closing handshake."""
        transport = self.conn.transport
        if self.close_sent or transport is None or transport.is_closing():
            return
        self.close_sent = True
        _write_frame(transport, 0x80 | CLOSE, _PACK_CODE(code) + reason)

    # -- the client's side ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            self.conn.tail += data
            return
        if self.state == CLOSED:
            return
        self.seen = True
        try:
            reader.feed(data)
        except ProtocolError as exc:
            self.on_error(exc)

    def on_message(self, opcode: int, data: Any) -> None:
        """A complete message from the frame reader (see ``FrameReader`` for ``data``)."""
        if opcode == TEXT:
            self.frames_in += 1
            if self.state == OPEN:
                self.deliver({"type": "websocket.receive", "text": data})
        elif opcode == BINARY:
            self.frames_in += 1
            if self.state == OPEN:
                self.deliver({"type": "websocket.receive", "bytes": data})
        elif opcode == CLOSE:
            sent, reason = data
            code = sent or 1005  # 0: the frame carried no code
            if sent and not _sendable_close_code(code):
                self.on_error(ProtocolError(1002, f"invalid close code {code}"))
                return
            if self.state == OPEN:
                self._write_close_frame(sent or 1000)
            self.close_code = self.close_code or code
            self.state = CLOSED
            transport = self.conn.transport
            if transport is not None:
                transport.close()
            self.finish(code, reason)
        elif opcode == PING:
            if self.state == OPEN and self.conn.transport is not None:
                _write_frame(self.conn.transport, 0x80 | PONG, data)
        elif opcode == PONG:
            self.ping_sent = 0.0

    def on_error(self, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, ProtocolError) else 1002
        if code not in (1002, 1003, 1007, 1008, 1009, 1011):
            code = 1002
        self.close_code = code
        if self.state in (OPEN, CLOSING):
            self._write_close_frame(code, str(exc).encode("utf-8", "replace")[:123])
        self.state = CLOSED
        transport = self.conn.transport
        if transport is not None:
            transport.close()
        self.finish(code, "")

    def deliver(self, event: dict[str, Any]) -> None:
        task = self.inst.task
        if task is None or task.done():
            return  # the app has returned: nobody will read it
        pending = self.pending
        if pending is None:
            try:
                self.inst.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                pending = self.pending = deque()
                self.conn.hold_reading()
                self.pump = self.conn.server.loop.create_task(self._pump())
        pending.append(event)

    async def _pump(self) -> None:
        pending = self.pending
        assert pending is not None
        while pending:
            await self.inst.queue.put(pending[0])
            pending.popleft()
        self.pending = None
        self.pump = None
        if self.conn.transport is not None and self.conn.read_held:
            self.conn.release_reading()

    def finish(self, code: int, reason: str) -> None:
        """The connection is over: the app gets ``websocket.disconnect`` (once), then the close timeout."""
        if self.finished:
            return
        self.finished = True
        inst = self.inst
        if inst is None or inst.task is None or inst.task.done():
            return
        self.conn.server.loop.create_task(self._close_instance({"type": "websocket.disconnect", "code": code, "reason": reason}))

    async def _close_instance(self, event: dict[str, Any]) -> None:
        pump = self.pump
        if pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pump), self.conn.server.runner.settings.app_close_timeout)
            except (TimeoutError, asyncio.CancelledError):
                pump.cancel()
        await self.inst.close(event)

    def connection_lost(self) -> None:
        if self.state != CLOSED:
            self.close_code = self.close_code or 1006
            self.state = CLOSED
        self.finish(self.close_code if self.close_code and self.close_code >= 1000 else 1006, "")
        self._log()

    def app_done(self, task: asyncio.Task[Any]) -> None:
        result = self.inst.result
        failed = result is None or result.outcome is not Outcome.OK
        if self.pump is not None:
            self.pump.cancel()
        state = self.state
        conn = self.conn
        if state == CONNECTING:
            if not failed:
                conn.server.log.error("websocket.no_response", path=self.scope["path"],
                                      error="the application returned without accepting or closing the WebSocket")
            self.state = CLOSED
            self.close_code = 500
            conn.write_close(simple_response(500, date=conn.server.date_header))
        elif state == RESPONDING:
            self.state = CLOSED
            if conn.transport is not None:
                conn.transport.close()
        elif state == OPEN:
            code = 1011 if failed else 1000
            self.close_code = code
            self._write_close_frame(code)
            self.state = CLOSING
            self.closing_at = conn.server.loop.time() + CLOSE_TIMEOUT

    # -- timers and drain -----------------------------------------------------------------------
    def tick(self, now: float) -> None:
        state = self.state
        if state == OPEN:
            limits = self.conn.server.limits
            interval = limits.ws_ping_interval
            if not interval:
                return
            if self.seen:
                self.seen = False
                self.ping_sent = 0.0
                self.ping_due = now + interval
            elif self.ping_sent:
                if now - self.ping_sent > limits.ws_ping_timeout:
                    self.close_code = 1011
                    self._write_close_frame(1011, b"ping timeout")
                    self.state = CLOSED
                    if self.conn.transport is not None:
                        self.conn.transport.close()
                    self.finish(1006, "")
            elif now >= self.ping_due and self.conn.transport is not None:
                _write_frame(self.conn.transport, 0x80 | PING, b"")
                self.ping_sent = now
        elif state == CLOSING and now >= self.closing_at:
            self.state = CLOSED
            if self.conn.transport is not None:
                self.conn.transport.close()

    def shutdown(self, code: int = 1001) -> None:
        """Graceful drain: close frame to the client, ``websocket.disconnect`` to the app."""
        transport = self.conn.transport
        if self.state == OPEN:
            self.close_code = code
            self._write_close_frame(code, b"server shutting down")
        self.state = CLOSED
        if transport is not None:
            transport.close()
        self.finish(code, "")

    def _log(self) -> None:
        server = self.conn.server
        if self.logged or not server.access_log:
            return
        self.logged = True
        client = self.scope["client"]
        server.log.info(
            "websocket", path=self.scope["path"], code=self.close_code,
            duration_ms=round((time.monotonic() - self.opened) * 1000, 3),
            frames_in=self.frames_in, frames_out=self.frames_out,
            client=f"{client[0]}:{client[1]}" if client else None,
        )
