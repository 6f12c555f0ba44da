"""The admin listener: metrics and health on an internal address of their own.

On the public port, ``/metrics`` and the health paths sit in front of the application's own
routes (a Django catch-all included) and are reachable by anyone who reaches the site. With
``admin: {listen: ...}`` they move to a separate listener that a deployment keeps on an internal
network. It serves only ``GET``/``HEAD`` of a few fixed paths, so it is a small HTTP/1.1
responder of its own instead of a second instance of the http adapter: the core must not
depend on an adapter, and the admin port must answer while the adapters are still starting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from .types import ASGIApp, Message, Scope

log = structlog.get_logger("gateway.admin")

MAX_HEAD = 8192
"""Bytes of request line and headers accepted; probes and scrapers send a few hundred."""
READ_TIMEOUT = 10.0
"""Seconds a client gets to send its request head."""
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class AdminListener:
    """Serves ``endpoints`` (path -> ASGI app, ``http`` scopes only) on ``listen`` (``host:port``)."""

    def __init__(self, listen: str, endpoints: Mapping[str, ASGIApp]) -> None:
        self.listen = listen
        self.endpoints = dict(endpoints)
        self._server: asyncio.Server | None = None

    @property
    def addresses(self) -> list[str]:
        if self._server is None:
            return []
        return [_format(s.getsockname()) for s in self._server.sockets]

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._connection, host.strip("[]") or None, int(port), limit=MAX_HEAD)
        log.info("admin.started", addresses=self.addresses, paths=sorted(self.endpoints))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, headers, body = await self._answer(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status, headers, body = 400, [], b"bad request\n"
        try:
            # HEAD gets the headers of the GET answer without its body
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}".encode()]
            named = {k.lower() for k, _ in headers}
            if b"content-length" not in named:
                headers = [*headers, (b"content-length", str(len(body)).encode())]
            lines += [k + b": " + v for k, v in headers] + [b"connection: close", b"", b""]
            writer.write(b"\r\n".join(lines) + (b"" if head.startswith(b"HEAD ") else body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return 400, [], b"bad request line\n"
        path = target.split("?", 1)[0]
        app = self.endpoints.get(path)
        if app is None:
            return 404, [], f"not found; this admin listener serves {', '.join(sorted(self.endpoints))}\n".encode()
        if method not in ("GET", "HEAD"):
            return 405, [(b"allow", b"GET, HEAD")], b"method not allowed\n"
        return await _call(app, method, path, target)


async def _call(app: ASGIApp, method: str, path: str, target: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one of the gateway's own endpoints and collect its response."""
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": target.partition("?")[2].encode(),
        "root_path": "", "headers": [], "client": None, "server": None,
    }
    started: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(event: Message) -> None:
        if event["type"] == "http.response.start":
            started.update(event)
        elif event["type"] == "http.response.body":
            chunks.append(event.get("body", b""))

    await app(scope, receive, send)
    return started.get("status", 500), list(started.get("headers", [])), b"".join(chunks)


def _format(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
