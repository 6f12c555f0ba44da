"""One HTTP request/response: the ASGI ``receive`` and ``send`` of its instance, its run, and the
answers the server gives in its place.

The cycle owns its request from the scope to the last byte: it runs the app (a mount, the route's
instance, or the 404), and when the app breaks the protocol it answers for it: a clean 500 while
nothing is on the wire, a close once the response has started (the only honest signal left).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from gateway.routing import unmatched
from gateway.runner import Outcome
from gateway.types import Message

from .head import CONTINUE, LAST_CHUNK, check_header, simple_response, write_head

if TYPE_CHECKING:
    from .connection import HttpProtocol
    from .request import Request

HTTP_EXTENSIONS: dict[str, Any] = {"http.response.trailers": {}}
_OK = Outcome.OK  # read per request: a module global is cheaper than an enum attribute


class RequestCycle:
    """One HTTP request/response on a connection."""

    __slots__ = (
        "chunked",
        "conn",
        "disconnect",
        "done",
        "expect_100",
        "expected",
        "head",
        "head_sent",
        "headers",
        "keep_alive",
        "max_body",
        "more_body",
        "no_body",
        "received",
        "request",
        "sent",
        "silenced",
        "started",
        "status",
        "trailers",
        "version11",
    )

    def __init__(self, conn: HttpProtocol, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.head = request.method == "HEAD"
        self.version11 = request.version == "1.1"
        self.keep_alive = request.keep_alive
        self.expect_100 = False
        self.more_body = True  # every request has at least one http.request event
        self.status = 0
        self.headers: Any = ()
        self.started = False
        self.head_sent = False
        self.done = False
        self.chunked = False
        self.trailers = False
        self.no_body = False
        self.sent = 0
        self.received = 0
        self.disconnect: asyncio.Future[None] | None = None
        self.silenced = 0  # the status the server answered with (413, 408): the app's sends go nowhere
        self.max_body = conn.server.limits.max_body_size
        self.expected = -1  # the response's Content-Length, -1 when it has none

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> bool:
        """Serve the request; ``True`` if the connection may carry another one."""
        conn = self.conn
        server = conn.server
        req = self.request
        started = time.perf_counter() if server.access_log else 0.0
        scope = server.scope(conn, req, "http")
        method = scope["method"] = req.method
        scope["extensions"] = HTTP_EXTENSIONS
        path = scope["path"]
        client = scope["client"]
        if req.chunks or not req.complete:  # the request has a body
            max_body = self.max_body
            if max_body is not None:
                length = req.header(b"content-length")
                if length is not None and int(length) > max_body:
                    conn.write_close(simple_response(413, date=server.date_header))
                    server.log_access(method, path, 413, 0, started, client)
                    return False
            if self.version11:
                expect = req.header(b"expect")
                self.expect_100 = expect is not None and expect.lower() == b"100-continue"
        conn.cycle = self
        failed = False
        try:
            mount = server.mounts.find(path) if server.mounts.items else None
            if mount is not None:
                try:
                    await mount.app(scope, self.receive, self.send)
                except Exception as exc:
                    failed = True
                    server.log.error("http.mount_failed", mount=mount.prefix, owner=mount.owner,
                                     error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            else:
                match = server.resolve_http(scope)
                if match is None:
                    await unmatched(scope, self.receive, self.send)
                else:
                    # Runs inline in this connection's task (the runner records it, so a second
                    # stop signal or the end of the drain can cancel it). Saying which task that
                    # is spares the runner looking it up for every request.
                    inst = server.runner.instance(match, scope, self.send_now, adapter="http", receive=self.receive, fresh_scope=True)
                    inst.task = conn.task
                    result = await inst.run()
                    failed = result.outcome is not _OK
        finally:
            conn.cycle = None
        # The app has returned: what it left unfinished is made a valid end here (written out:
        # this runs for every request).
        status = self.status
        if self.silenced:
            status = self.silenced
        elif not self.head_sent:
            # Nothing is on the wire yet (no start, or a start the body never followed): a clean 500.
            if not self.started and not failed:
                server.log.error("http.no_response", method=method, path=path,
                                 error="the application returned without sending 'http.response.start'")
            status = 500
            conn.write_close(simple_response(500, date=server.date_header))
            self.keep_alive = False
        elif not self.done:
            # The response is on the wire already: the only honest signal left is to close.
            self.keep_alive = False
            if conn.transport is not None:
                conn.transport.close()
        if server.access_log:
            server.log_access(method, path, status, self.sent, started, client)
        if self.disconnect is not None:
            self.wake()
        return self.keep_alive and req.complete  # an unread body that was all read in is dropped

    def refuse_body(self, status: int) -> None:
        """The body being read breaks a limit: past ``max_body_size`` (413), too slow (408). The
        client gets ``status`` if no response has started, else the connection just closes."""
        self.keep_alive = False
        conn = self.conn
        if not self.head_sent:
            self.silenced = status
            conn.write_close(simple_response(status, date=conn.server.date_header))
        elif conn.transport is not None:
            conn.transport.close()
        conn.broken = True

    # -- connection events ----------------------------------------------------------------
    def lost(self) -> None:
        # the request's body, if still arriving, was failed by the connection (it is ``parsing``)
        self.wake()

    def wake(self) -> None:
        """Answer a ``receive`` waiting for ``http.disconnect``."""
        fut = self.disconnect
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- ASGI receive ---------------------------------------------------------------------
    async def receive(self) -> Message:
        if self.more_body and not self.silenced:
            req = self.request
            conn = self.conn
            if req.chunks:
                chunk = req.take()
            elif req.complete:  # a request without a body: its end came with its head
                chunk = b""
            else:
                if self.expect_100:
                    self.expect_100 = False
                    if not self.started and conn.transport is not None:
                        conn.transport.write(CONTINUE)
                        conn.restart_body_clock()
                try:
                    chunk = await req.read(conn.server.loop)
                except Exception:  # noqa: BLE001 - whatever broke the body (reset, bad framing) ends it
                    self.more_body = False
                    self.keep_alive = False
                    return {"type": "http.disconnect"}
            more = not req.complete
            if not more:
                self.more_body = False
            if chunk:
                if conn.read_held:
                    conn.resume_if_drained()
                self.received += len(chunk)
                if self.max_body is not None and self.received > self.max_body:
                    self.more_body = False
                    self.refuse_body(413)
                    return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": more}
        if not self.done and self.conn.transport is not None and not self.silenced:
            fut = self.disconnect = self.conn.server.loop.create_future()
            await fut
        return {"type": "http.disconnect"}

    # -- ASGI send ------------------------------------------------------------------------
    async def send(self, event: Message) -> None:
        """The ASGI ``send`` for apps the runner does not run (mounts, the 404)."""
        pending = self.send_now(event)
        if pending is not None:
            await pending

    def send_now(self, event: Message) -> Awaitable[None] | None:
        """Send ``event``; return what to await before the next one (the transport's buffer
        draining) or ``None``. A plain function, so the runner's ``send`` does not create and
        run a second coroutine for every event of every response."""
        kind = event["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("'http.response.body' sent before 'http.response.start'")
            if self.done:
                raise RuntimeError("'http.response.body' sent after the response was complete")
            conn = self.conn
            transport = conn.transport
            if transport is None or self.silenced:
                return None
            body = event.get("body") or b""  # None: absent, as the event specs read it
            more = bool(event.get("more_body"))
            if not self.head_sent:
                write_head(self, transport, body, more)
            elif body and not self.no_body:
                if self.expected >= 0 and self.sent + len(body) > self.expected:
                    raise RuntimeError("the response body is longer than its Content-Length")
                if self.chunked:
                    transport.write(b"%x\r\n%s\r\n" % (len(body), body))
                else:
                    transport.write(body)
                self.sent += len(body)
            if not more:
                if self.chunked and not self.trailers:
                    transport.write(LAST_CHUNK)
                if not self.trailers or not self.chunked:
                    self._complete()
            if conn.write_paused:
                return self._drained()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("'http.response.start' sent twice")
            self.started = True
            self.status = event["status"]
            self.headers = event.get("headers") or ()
            self.trailers = bool(event.get("trailers"))
        elif kind == "http.response.trailers":
            if not self.trailers or not self.head_sent or self.done:
                raise RuntimeError("'http.response.trailers' needs 'trailers': True in the start event and a sent body")
            transport = self.conn.transport
            if transport is None or self.silenced:
                return None
            lines = [b"0\r\n"] if self.chunked else []
            for name, value in event.get("headers") or ():
                check_header(name, value)
                lines.append(b"%s: %s\r\n" % (name, value))
            if not event.get("more_trailers"):
                if self.chunked:
                    lines.append(b"\r\n")
                    transport.write(b"".join(lines))
                    self._complete()
                else:
                    self._complete()
            else:
                raise RuntimeError("'more_trailers' is not supported: send all trailers in one event")
        else:
            raise RuntimeError(f"unexpected event {kind!r} on an http scope")
        return None

    async def _drained(self) -> None:
        try:
            await self.conn.wait_writable()
        except ConnectionError:
            pass

    def _complete(self) -> None:
        self.done = True
        if self.expected >= 0 and self.sent < self.expected:
            # Shorter than announced: the client would wait for the rest; closing tells it.
            self.keep_alive = False
            transport = self.conn.transport
            if transport is not None:
                transport.close()
        if self.disconnect is not None:
            self.wake()
