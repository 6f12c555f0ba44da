"""One HTTP/1.1 connection: httptools (llhttp) parses, requests are served in order, its timers.

The hot path stays short on purpose: one asyncio ``Protocol`` per connection, parser callbacks
that fill a ``Request`` per request, one long-lived task per connection that serves its requests
in order (keep-alive, pipelining), one small ``RequestCycle`` per request (``cycle``). Upgrade
requests are handed to ``websocket.start_websocket``.

The parser is httptools rather than aiohttp's own: both bind the same llhttp, but aiohttp's
wraps every request in a multidict, a yarl URL and a stream object that the ASGI translation
then takes apart again, which cost more than the rest of a hello-world request. Flow control is
the adapter's own (``flow_control``), on asyncio's public protocol callbacks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import httptools

from .cycle import RequestCycle
from .flow_control import FlowControlled
from .head import simple_response
from .request import BODY_BUFFER, METHODS, Request, method_name
from .websocket import start_websocket

if TYPE_CHECKING:
    from .server import ServerState
    from .websocket import WebSocketSession

_OWS = b" \t"
_SLASH = 47  # "/" as a byte value (see head.LF)

# Which clock runs on a connection (``HttpProtocol.deadline_kind``; ``deadline`` is when it runs
# out). Plain ints with names: data_received and the body callbacks compare them for every read,
# and CPython specialises comparisons of exact ints only.
DEADLINE_NONE: Final = 0
DEADLINE_IDLE: Final = 1
"""Keep-alive: no request yet, or between requests (``keepalive_timeout``)."""
DEADLINE_HEADER: Final = 2
"""A request head started and is not complete: ``header_timeout``."""
DEADLINE_BODY: Final = 3
"""A request body is arriving: ``body_timeout``, extended by ``body_min_rate``."""


class ParseError:
    """A queue entry standing for a request that could not be parsed (or whose body never came
    in time): answered, then close. ``logged``: its incident has its own log line already."""

    __slots__ = ("logged", "reason", "status")

    def __init__(self, status: int, reason: str, logged: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.logged = logged


class Refused(Exception):
    """Raised from a parser callback: the request breaks a limit or a rule llhttp does not check."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _other_form_ok(target: bytes) -> bool:
    """A target that is not a path: ``*`` (asterisk-form) or a URL with a scheme and a host."""
    if target == b"*":
        return True
    try:
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return False
    return bool(url.schema and url.host)


class HttpProtocol(FlowControlled):
    """One client connection."""

    __slots__ = (
        "broken",
        "client",
        "closing",
        "cycle",
        "deadline",
        "deadline_kind",
        "got_head",
        "head_size",
        "headers",
        "hosts",
        "parser",
        "parsing",
        "queue",
        "rejected",
        "server",
        "sockname",
        "send_timed_out",
        "stall_mark",
        "stalled_since",
        "tail",
        "task",
        "tls",
        "upgraded",
        "url",
        "waiter",
        "ws",
    )

    def __init__(self, server: ServerState, tls: bool) -> None:
        super().__init__(server.loop)
        self.parser: Any = httptools.HttpRequestParser(self)
        self.upgraded = False  # the parser saw an upgrade: what follows the head is not HTTP
        self.server = server
        self.tls = tls
        self.client: tuple[str, int] | None = None
        self.sockname: Any = None
        self.queue: deque[Request | ParseError] = deque()
        self.task: asyncio.Task[None] | None = None
        self.cycle: RequestCycle | None = None
        self.ws: WebSocketSession | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.deadline_kind = DEADLINE_NONE
        self.stalled_since = 0.0  # when the client last took none of what waits for it (0: not stalled)
        self.stall_mark = 0  # bytes waiting for it then
        self.send_timed_out = False  # aborted because the client took nothing for send_timeout
        self.closing = False
        self.rejected = False
        self.broken = False
        self.tail = b""
        # the request head being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.hosts = 0
        self.head_size = 0  # bytes read while a head stays incomplete (bounds what llhttp buffers)
        self.got_head = False  # a head was completed during the current data_received
        self.parsing: Request | None = None  # the request whose body is arriving

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # sets TCP_NODELAY and self.transport
        server = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client = (peer[0], peer[1])
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple) and sock:
            self.sockname = (sock[0], sock[1])
        else:
            self.sockname = (sock.decode() if isinstance(sock, bytes) else (sock or ""), None)
        self.transport.set_write_buffer_limits(high=server.limits.send_buffer)  # type: ignore[union-attr]
        server.connection_made(self)
        self.deadline = server.loop.time() + server.limits.keepalive_timeout
        self.deadline_kind = DEADLINE_IDLE

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.connection_lost(self)
        super().connection_lost(exc)
        self.closing = True
        self.deadline_kind = DEADLINE_NONE
        if self.parsing is not None:
            self.parsing.fail(ConnectionResetError("client disconnected"))
        cycle = self.cycle
        if cycle is not None:
            cycle.lost()
        if self.ws is not None:
            self.ws.connection_lost()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.parser = None

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        if self.broken or self.parser is None:
            return
        if self.upgraded:
            self.tail += data
            if len(self.tail) > 65536:
                self.hold_reading()
            return
        self.got_head = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.tail = data[exc.args[0]:]
            last = self.queue[-1] if self.queue else None
            if isinstance(last, Request):
                last.upgrade = True
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, Refused):
                self._parse_failed(refused.status, refused.reason)
            else:
                self._parse_failed(400, str(exc) or type(exc).__name__)
            return
        if not self.got_head:
            kind = self.deadline_kind
            if kind and kind != DEADLINE_BODY:  # body bytes are timed in on_body
                self._reading_head(data)
            return
        self.head_size = 0
        if self.parsing is not None:
            self._start_body_clock()
        elif self.cycle is None:
            self.deadline_kind = DEADLINE_NONE
        # _wake_serve, written out: this runs for every request
        waiter = self.waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self.task is None:
            self.task = self.server.loop.create_task(self.serve())
        if not self.read_held and len(self.queue) > self.server.limits.max_pipelined:
            self.hold_reading()

    def _start_body_clock(self) -> None:
        """A request head is in and its body is on its way: from now the client is the one who
        keeps it waiting. The bytes of it that came with the head already earn their time."""
        server = self.server
        self.deadline = server.loop.time() + server.body_timeout + self.parsing.size * server.body_step  # type: ignore[union-attr]
        self.deadline_kind = DEADLINE_BODY

    def restart_body_clock(self) -> None:
        """The server held the body back (it stopped reading, or owed a 100 Continue) and lets
        it come again: the client gets at least a whole ``body_timeout`` from now."""
        if self.deadline_kind == DEADLINE_BODY:
            self.deadline = max(self.deadline, self.server.loop.time() + self.server.body_timeout)

    def _reading_head(self, data: bytes) -> None:
        """``data`` is part of a request head not read in full yet: its first bytes start the
        header timeout, and the head is bounded by the most a valid one can hold (llhttp keeps
        an unfinished header in memory). Called only when a head stays incomplete, so a request
        that arrives whole skips the bookkeeping."""
        if not data:
            return
        server = self.server
        if self.deadline_kind == DEADLINE_IDLE:
            self.deadline = server.loop.time() + server.limits.header_timeout
            self.deadline_kind = DEADLINE_HEADER
        self.head_size += len(data)
        if self.head_size > server.max_head:
            self._parse_failed(431, "request head too large")

    # -- parser callbacks (httptools) --------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        url = self.url + url if self.url else url
        self.url = url
        if len(url) > self.server.max_request_line:
            raise Refused(414, f"request target longer than {self.server.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        server = self.server
        if len(name) > server.max_header_size or len(value) > server.max_header_size:
            raise Refused(431, f"header field name or value longer than {server.max_header_size} bytes")
        if len(headers) >= server.max_headers:
            raise Refused(431, f"more than {server.max_headers} header fields")
        name = name.lower()
        if name == b"host":
            self.hosts += 1
        # RFC 9112 section 5: whitespace around a value is not part of it. llhttp drops the
        # leading whitespace; the trailing is ours to drop (rstrip returns the same object,
        # at no cost, when there is none).
        headers.append((name, value.rstrip(_OWS)))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if self.hosts != 1 and (self.hosts or version == "1.1"):
            raise Refused(400, "a request needs exactly one Host header" if self.hosts else "HTTP/1.1 request without a Host header")
        if version[0] != "1":
            raise Refused(505, f"HTTP/{version} is not supported")
        if self.url[0] != _SLASH and not _other_form_ok(self.url):  # llhttp reports no empty target
            raise Refused(400, "invalid request target")
        method = parser.get_method()
        req = Request(METHODS.get(method) or method_name(method), self.url, version, self.headers, parser.should_keep_alive())
        self.url = b""
        self.headers = []
        self.hosts = 0
        self.parsing = req
        self.queue.append(req)
        self.got_head = True

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is not None:
            req.feed(body)
            if self.deadline_kind == DEADLINE_BODY:
                self.deadline += len(body) * self.server.body_step
            if req.size > BODY_BUFFER and not self.read_held:
                self.hold_reading()

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is not None:
            self.parsing = None
            req.complete = True
            if self.deadline_kind == DEADLINE_BODY:
                self.deadline_kind = DEADLINE_NONE
            if req.waiter is not None:
                req.wake()

    def _parse_failed(self, status: int, reason: str, logged: bool = False) -> None:
        self.broken = True
        self.head_size = 0
        req = self.parsing
        if req is not None and not req.complete:
            # A malformed body (bad chunk framing, ...): an app already reading it sees
            # http.disconnect; a request no app has seen yet never reaches one.
            self.parsing = None
            req.keep_alive = False
            cycle = self.cycle
            if cycle is not None and cycle.request is req:
                req.fail(httptools.HttpParserError(reason))
                return
            try:
                self.queue.remove(req)
            except ValueError:
                pass
        self.queue.append(ParseError(status, reason, logged))
        self._wake_serve()

    def _wake_serve(self) -> None:
        if self.task is None:
            self.task = self.server.loop.create_task(self.serve())
        else:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def resume_if_drained(self) -> None:
        """Read from the socket again once the pipeline queue and the body being read are short."""
        if (
            self.read_held and not self.upgraded
            and len(self.queue) <= self.server.limits.max_pipelined // 2
            and (self.parsing is None or self.parsing.size <= BODY_BUFFER // 2)
        ):
            self.release_reading()
            self.restart_body_clock()

    # -- writing: a client that takes nothing -----------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self.stalled_since = self.server.loop.time()
        self.stall_mark = self.transport.get_write_buffer_size() if self.transport is not None else 0

    def resume_writing(self) -> None:
        self.stalled_since = 0.0
        super().resume_writing()

    def check_stall(self, now: float) -> None:
        """Called by the sweep: while output waits for the client (the app's ``send`` is held
        back, or a closed connection still has a response to flush), the client must take some
        of it every ``send_timeout`` seconds; else the connection is aborted, which frees the
        app's ``send`` and the file descriptor."""
        transport = self.transport
        if transport is None:
            return
        since = self.stalled_since
        if not since:
            if transport.is_closing():
                self.stalled_since = now
                self.stall_mark = transport.get_write_buffer_size()
            return
        size = transport.get_write_buffer_size()
        if size < self.stall_mark:  # the client took some: the clock starts again
            self.stalled_since = now
            self.stall_mark = size
        elif now - since >= self.server.limits.send_timeout:
            self.stalled_since = 0.0
            self.server.timed_out(self, "send", waiting_bytes=size)
            self.send_timed_out = True
            transport.abort()
        else:
            self.stall_mark = size  # our own writes (pings, a close frame) are not the client's progress

    # -- the connection task -------------------------------------------------------------
    async def serve(self) -> None:
        server = self.server
        queue = self.queue
        try:
            while True:
                if not queue:
                    if self.closing or self.transport is None:
                        if self.transport is not None:
                            self.transport.close()
                        break
                    self.waiter = server.loop.create_future()
                    try:
                        await self.waiter
                    finally:
                        self.waiter = None
                    continue
                req = queue.popleft()
                if self.read_held:
                    self.resume_if_drained()
                if self.transport is None:
                    break
                if isinstance(req, ParseError):
                    self.write_close(simple_response(req.status, date=server.date_header))
                    if not req.logged:
                        server.log_parse_error(self, req)
                    break
                if req.upgrade and not queue:
                    self.deadline_kind = DEADLINE_NONE  # a WebSocket has timers of its own
                    await start_websocket(self, req)
                    return
                if self.rejected:
                    self.write_close(simple_response(503, extra=b"retry-after: 1\r\n", date=server.date_header))
                    break
                keep = await RequestCycle(self, req).run()
                if not keep or self.closing:
                    if self.transport is not None:
                        self.transport.close()
                    break
                if not queue:
                    self.deadline = server.loop.time() + server.limits.keepalive_timeout
                    self.deadline_kind = DEADLINE_IDLE
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.abort()
            raise
        except Exception as exc:  # a fault of the server's own: this connection ends, the rest go on
            server.log.exception("http.connection_failed", error=f"{type(exc).__name__}: {exc}")
            if self.transport is not None:
                self.transport.abort()
        finally:
            self.task = None

    def write_close(self, data: bytes) -> None:
        """Write the last bytes of the connection (an answer of the server's own), then close."""
        transport = self.transport
        if transport is not None:
            transport.write(data)
            transport.close()

    # -- timers and drain, called by the server's sweep ------------------------------------
    def expire(self) -> None:
        """The header, body or keep-alive deadline passed."""
        kind = self.deadline_kind
        if kind == DEADLINE_BODY:
            self._body_late()
            return
        self.deadline_kind = DEADLINE_NONE
        transport = self.transport
        if transport is None:
            return
        if kind == DEADLINE_HEADER:
            self.broken = True
            self.server.timed_out(self, "header")
            transport.write(simple_response(408, date=self.server.date_header))
        transport.close()

    def _body_late(self) -> None:
        server = self.server
        req = self.parsing
        if req is None or self.transport is None:
            self.deadline_kind = DEADLINE_NONE
            return
        if self.read_held or self._owes_continue(req):
            # the server is the one holding the body back: not the client's time
            self.deadline = server.loop.time() + server.body_timeout
            return
        self.deadline_kind = DEADLINE_NONE
        server.timed_out(self, "body", body_bytes=req.size)
        cycle = self.cycle
        if cycle is not None and cycle.request is req:
            self.parsing = None
            cycle.refuse_body(408)
            req.fail(TimeoutError("the request body did not arrive in time"))  # the app's receive: http.disconnect
        else:  # a request no app has seen yet: answered in its turn
            self._parse_failed(408, "request body timeout", logged=True)

    def _owes_continue(self, req: Request) -> bool:
        """``req`` asked for ``100 Continue`` and has not had it: its client waits for us."""
        cycle = self.cycle
        if cycle is not None and cycle.request is req:
            return cycle.expect_100
        expect = req.header(b"expect")
        return expect is not None and expect.lower() == b"100-continue"

    def drain(self) -> None:
        """Graceful shutdown: idle connections close now, busy ones after their response."""
        self.closing = True
        if self.ws is not None:
            self.ws.shutdown(1001)
        elif self.cycle is None and not self.queue and self.transport is not None and self.task is None:
            self.transport.close()
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
