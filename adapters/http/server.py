"""The adapter: listeners, the state its connections share (limits, scope building, logging and
metrics), the timer sweep (header/keep-alive deadlines, WebSocket pings, the Date header) and
graceful drain. One request is served by ``cycle.RequestCycle``, one connection by
``connection.HttpProtocol``."""

from __future__ import annotations

import asyncio
import os
import time
from email.utils import formatdate
from functools import partial
from typing import Any, ClassVar

from gateway.plugins import Adapter, AdapterContext
from gateway.schema import PathRoute

from .config import HttpConfig
from .connection import HttpProtocol, ParseError
from .listeners import describe, open_socket, ssl_context
from .proxies import TrustedProxies
from .request import Request, split_target

ASGI = {"version": "3.0", "spec_version": "2.5"}


class ServerState:
    """What every connection of one adapter shares."""

    def __init__(self, config: HttpConfig, context: AdapterContext, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.limits = config.limits
        # read by the parser callbacks for every header: one attribute away
        self.max_request_line = config.limits.max_request_line
        self.max_header_size = config.limits.max_header_size
        self.max_headers = config.limits.max_headers
        # the most a valid request head can hold: its target, every field at its limits (name,
        # ": ", value, CRLF), and 64 bytes for the method, the version and the line ends
        self.max_head = self.max_request_line + self.max_headers * (2 * self.max_header_size + 4) + 64
        # read for every chunk of a request body: the time it buys, and the time a body starts with
        self.body_timeout = config.limits.body_timeout
        self.body_step = 1.0 / config.limits.body_min_rate if config.limits.body_min_rate else 0.0
        self.context = context
        self.loop = loop
        self.runner = context.runner
        self.mounts = context.mounts
        self.mounts.served_by = context.name
        self.proxies = TrustedProxies(config.trusted_proxies) if config.trusted_proxies else None
        self.root_path = config.root_path
        self.log = context.log
        self.access_log = config.access_log
        self.connections: set[HttpProtocol] = set()
        self.active = 0
        self.refused_in_a_row = 0  # connections refused at max_connections since one was last accepted
        metrics = context.metrics
        self._timeouts = metrics.counter(
            "gateway_http_timeouts_total",
            "HTTP/WebSocket connections closed because the client was too slow: to send its request head "
            "(phase=header) or body (body), or to take its response (send).",
            ("phase",),
        )
        self._refused = metrics.counter(
            "gateway_http_connections_refused_total",
            "Connections answered 503 and closed: over limits.max_connections, or arriving during the drain.",
            ("reason",),
        )
        self.draining = False
        self.empty = asyncio.Event()
        self.date_header = b""
        self.update_date()
        self._resolvers: dict[str, Any] = {kind: context.router_for(kind).resolve for kind in ("http", "websocket")}
        # every request resolves its route: straight to the router when no root path is cut first
        self.resolve_http: Any = partial(self.resolve, "http") if self.root_path else self._resolvers["http"]
        ticks = [
            self.limits.header_timeout, self.limits.keepalive_timeout, self.limits.ws_ping_timeout,
            self.limits.body_timeout, self.limits.send_timeout,
        ]
        if self.limits.ws_ping_interval:
            ticks.append(self.limits.ws_ping_interval)
        self.tick = max(0.02, min(1.0, *(t / 4 for t in ticks)))

    def update_date(self) -> None:
        self.date_header = b"date: %s\r\nserver: asgi-gateway\r\n" % formatdate(usegmt=True).encode()

    # -- connections ------------------------------------------------------------------------
    def connection_made(self, conn: HttpProtocol) -> None:
        self.connections.add(conn)
        if self.active >= self.limits.max_connections or self.draining:
            conn.rejected = True
            self._refuse()
        else:
            self.active += 1
            if self.refused_in_a_row:
                self.log.info("http.max_connections_recovered", limit=self.limits.max_connections, refused=self.refused_in_a_row)
                self.refused_in_a_row = 0

    def _refuse(self) -> None:
        """Count every refused connection; log the limit once per time it is reached."""
        if self.draining:
            self._refused.labels("draining").inc()
            return
        self._refused.labels("max_connections").inc()
        self.refused_in_a_row += 1
        if self.refused_in_a_row == 1:
            self.log.warning(
                "http.max_connections_reached", limit=self.limits.max_connections,
                detail="new connections get 503 until open ones close (each one counted in "
                "gateway_http_connections_refused_total)",
            )

    def connection_lost(self, conn: HttpProtocol) -> None:
        self.connections.discard(conn)
        if not conn.rejected:
            self.active -= 1
        if not self.connections:
            self.empty.set()

    def resolve(self, kind: str, scope: dict[str, Any]) -> Any:
        if self.root_path:
            scope = dict(scope, path=scope["path"][len(self.root_path):] or "/")
        return self._resolvers[kind](scope)

    def scope(self, conn: HttpProtocol, req: Request, kind: str) -> dict[str, Any]:
        """The keys an ``http`` and a ``websocket`` scope share, trusted proxies applied."""
        path, raw_path, query = split_target(req.target, self.root_path)
        headers = req.headers
        client = conn.client
        scheme = ("https" if conn.tls else "http") if kind == "http" else "wss" if conn.tls else "ws"
        server = conn.sockname
        proxies = self.proxies
        if proxies is not None and proxies.trusts(client[0] if client else None):
            client, scheme, server, new = proxies.apply(headers, client, scheme, server)
            if new is not None:
                headers = new
        return {
            "type": kind,
            "asgi": ASGI,
            "http_version": req.version,
            "scheme": scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.root_path,
            "headers": headers,
            "client": client,
            "server": server,
        }

    # -- logging and metrics ----------------------------------------------------------------
    def log_access(self, method: str, path: str, status: int, sent: int, started: float, client: Any) -> None:
        """One access-log line for a request (``started``: its ``perf_counter``), if they are on."""
        if not self.access_log:
            return
        self.log.info(
            "http.request", method=method, path=path, status=status, bytes=sent,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            client=f"{client[0]}:{client[1]}" if client else None,
        )

    def timed_out(self, conn: HttpProtocol, phase: str, **facts: Any) -> None:
        """A client too slow in ``phase`` (header, body, send) loses its connection: counted and logged."""
        self._timeouts.labels(phase).inc()
        client = conn.client
        self.log.info("http.timeout", phase=phase, client=f"{client[0]}:{client[1]}" if client else None, **facts)

    def log_parse_error(self, conn: HttpProtocol, err: ParseError) -> None:
        client = conn.client
        self.log.info("http.bad_request", status=err.status, reason=err.reason,
                      client=f"{client[0]}:{client[1]}" if client else None)

    # -- timers ------------------------------------------------------------------------------
    async def sweep(self) -> None:
        last_date = 0.0
        while True:
            await asyncio.sleep(self.tick)
            now = self.loop.time()
            if now - last_date >= 1.0:
                self.update_date()
                last_date = now
            for conn in list(self.connections):
                if conn.deadline_kind and now >= conn.deadline:
                    conn.expire()
                elif conn.ws is not None:
                    conn.ws.tick(now)
                conn.check_stall(now)


class HttpAdapter(Adapter):
    """HTTP/1.1 and WebSocket listeners producing ``http`` and ``websocket`` scopes."""

    name: ClassVar[str] = "http"
    config_model: ClassVar[type[HttpConfig]] = HttpConfig
    scope_types: ClassVar[tuple[str, ...]] = ("http", "websocket")
    route_models: ClassVar[dict[str, type[PathRoute]]] = {"http": PathRoute, "websocket": PathRoute}

    def __init__(self, config: HttpConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        self.state: ServerState | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._addresses: list[str] = []
        self._unix_paths: list[str] = []
        self._sweep: asyncio.Task[None] | None = None

    @classmethod
    def listen_addresses(cls, config: HttpConfig) -> list[str]:
        out = []
        for addr in config.addresses():
            if addr.kind == "tcp":
                out.append(f"tcp:{addr}")
            else:
                out.append(str(addr))
        return out

    @classmethod
    def connection_limit(cls, config: HttpConfig) -> int:
        return config.limits.max_connections

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config: HttpConfig = self.config
        state = self.state = ServerState(config, self.context, loop)
        ctx = ssl_context(config.tls) if config.tls else None
        tls = ctx is not None

        def factory() -> HttpProtocol:
            return HttpProtocol(state, tls)

        for addr in config.addresses():
            sock = open_socket(addr, config)
            try:
                if sock.family == getattr(__import__("socket"), "AF_UNIX", None):
                    server = await loop.create_unix_server(factory, sock=sock, ssl=ctx, backlog=config.backlog)
                    if addr.kind == "unix":
                        self._unix_paths.append(addr.path)
                else:
                    server = await loop.create_server(factory, sock=sock, ssl=ctx, backlog=config.backlog)
            except BaseException:
                sock.close()
                raise
            self._servers.append(server)
            self._addresses.append(describe(sock))
        self._sweep = loop.create_task(state.sweep())

    async def stop(self, drain: float) -> None:
        state = self.state
        for server in self._servers:
            server.close()
        if state is not None:
            state.draining = True
            deadline = state.loop.time() + drain
            for conn in list(state.connections):
                conn.drain()
            while state.connections:
                remaining = deadline - state.loop.time()
                if remaining <= 0:
                    break
                state.empty.clear()
                if not state.connections:
                    break
                try:
                    await asyncio.wait_for(state.empty.wait(), remaining)
                except TimeoutError:
                    break
            tasks = []
            for conn in list(state.connections):
                if conn.task is not None:
                    conn.task.cancel()
                    tasks.append(conn.task)
                if conn.transport is not None:
                    conn.transport.abort()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
            self._sweep = None
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        self._servers.clear()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._unix_paths.clear()
