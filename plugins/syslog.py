"""Example adapter plugin: syslog lines over UDP or TCP, one message scope per line.

Dropped into a plugin folder, this file is found by the gateway like any installed adapter.
It is deliberately small: read it as the template for writing your own adapter
(docs/adapters.md walks through it).

YAML::

    plugins: {paths: [plugins]}
    adapters:
      syslog: {listen: 127.0.0.1:5514, transport: udp}
    routes:
      syslog:
        - {match: "sshd\\[(?P<pid>\\d+)\\]: Failed", app: myapp.security:on_failed_login}
        - {app: myapp.logs:archive}

Scope: ``{"type": "syslog", "transport": "udp"|"tcp", "client": (host, port)}``.
Event: ``{"type": "syslog.message", "line": str, "raw": bytes, "facility": int|None,
"severity": int|None}``, then ``syslog.disconnect``. Applications send nothing back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from gateway.errors import StartupError
from gateway.events import EventSpec
from gateway.plugins import Adapter
from gateway.schema import Listen, RouteConfig, Section, parse_listen
from gateway.types import Message

_PRI = re.compile(rb"^<(\d{1,3})>")


class SyslogConfig(Section):
    listen: Listen = Field(default_factory=lambda: ["127.0.0.1:5514"], description="host:port, or a list of them, to listen on.")
    transport: Literal["udp", "tcp"] = Field("udp", description="`udp` (datagrams) or `tcp` (newline-delimited stream).")
    max_line: int = Field(8192, gt=0, description="Longest line accepted, in bytes; longer lines are dropped and counted.")
    max_in_flight: int = Field(
        64, gt=0, description="UDP: lines handled at once; beyond it datagrams are dropped and counted (UDP has no backpressure).",
    )


class RegexMatcher:
    def __init__(self, pattern: str | None) -> None:
        self.pattern = re.compile(pattern) if pattern else None

    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self.pattern is None:
            return (), {}
        m = self.pattern.search(scope["line"])
        return (m.groups(), {}) if m and not m.groupdict() else ((), m.groupdict()) if m else None

    def describe(self) -> str:
        return f"match {self.pattern.pattern}" if self.pattern else "(any)"


class SyslogRoute(RouteConfig):
    match: str | None = Field(None, description="Regex searched in the line; named groups become kwargs. No `match`: every line.")

    def matcher(self) -> RegexMatcher:
        try:
            return RegexMatcher(self.match)
        except re.error as exc:
            raise ValueError(f"invalid regex {self.match!r}: {exc}") from None


def parse_line(raw: bytes) -> dict[str, Any]:
    raw = raw.rstrip(b"\r\n")
    facility = severity = None
    m = _PRI.match(raw)
    if m and int(m.group(1)) <= 191:
        pri = int(m.group(1))
        facility, severity = pri >> 3, pri & 7
        raw_text = raw[m.end():]
    else:
        raw_text = raw
    return {"type": "syslog.message", "line": raw_text.decode("utf-8", "replace"), "raw": raw,
            "facility": facility, "severity": severity}


class SyslogAdapter(Adapter):
    """Syslog lines (UDP or TCP) as `syslog` message scopes — the example plugin."""

    name = "syslog"
    config_model = SyslogConfig
    scope_types = ("syslog",)
    route_models: ClassVar[dict[str, type[SyslogRoute]]] = {"syslog": SyslogRoute}
    send_events: ClassVar[dict[str, dict[str, EventSpec]]] = {"syslog": {}}  # applications only listen

    def __init__(self, config: SyslogConfig, context: Any) -> None:
        super().__init__(config, context)
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._bound: list[str] = []
        self._dropped = context.metrics.counter("gateway_syslog_dropped_total", "Syslog lines dropped.", ("reason",))
        self._unrouted = context.metrics.counter("gateway_syslog_unrouted_total", "Syslog lines no route matched.")

    @classmethod
    def listen_addresses(cls, config: SyslogConfig) -> list[str]:
        return [f"{config.transport}:{parse_listen(a)}" for a in config.listen]

    @property
    def addresses(self) -> list[str]:
        return self._bound

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for text in self.config.listen:
            addr = parse_listen(text)
            try:
                if self.config.transport == "udp":
                    transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), local_addr=(addr.host, addr.port))
                    self._transports.append(transport)
                    sock = transport.get_extra_info("sockname")
                else:
                    server = await asyncio.start_server(self._stream, addr.host, addr.port, limit=self.config.max_line + 2)
                    self._servers.append(server)
                    sock = server.sockets[0].getsockname()
            except OSError as exc:
                raise StartupError(f"syslog: cannot listen on {addr} ({self.config.transport}): {exc.strerror or exc}") from None
            self._bound.append(f"{sock[0]}:{sock[1]}")

    async def stop(self, drain: float) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def handle(self, raw: bytes, transport: str, client: Any) -> None:
        if len(raw) > self.config.max_line:
            self._dropped.labels("too_long").inc()
            return
        event = parse_line(raw)
        scope = {"type": "syslog", "asgi": {"version": "3.0"}, "transport": transport,
                 "client": tuple(client[:2]) if client else None, "line": event["line"]}
        match = self.context.resolve(scope)
        if match is None:
            self._unrouted.inc()
            return
        await self.context.runner.run_message(match, scope, event, _no_send, adapter=self.name)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await self.handle(exc.partial, "tcp", peer)
                    return
                except asyncio.LimitOverrunError:
                    self._dropped.labels("too_long").inc()
                    return  # the stream cannot resynchronise: drop the connection
                if line.strip():
                    await self.handle(line, "tcp", peer)  # one at a time: order kept, backpressure on the socket
        finally:
            self._tasks.discard(task)
            writer.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, adapter: SyslogAdapter) -> None:
        self.adapter = adapter

    def datagram_received(self, data: bytes, addr: Any) -> None:
        adapter = self.adapter
        if len(adapter._tasks) >= adapter.config.max_in_flight:
            adapter._dropped.labels("busy").inc()
            return
        task = asyncio.get_running_loop().create_task(adapter.handle(data, "udp", addr))
        adapter._tasks.add(task)
        task.add_done_callback(adapter._tasks.discard)


async def _no_send(event: Message) -> None:
    raise RuntimeError("syslog applications cannot send events")
