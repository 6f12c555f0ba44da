"""Checking a WebSocket handshake's ``Origin`` before the application sees it.

Browsers send a page's cookies with a WebSocket handshake to any site, so a page elsewhere could
open a socket as the logged-in user (cross-site WebSocket hijacking). A websocket route with
``origins:`` accepts only handshakes whose ``Origin`` matches; with Django configured every
websocket route is checked against ``ALLOWED_HOSTS`` unless it says ``origins: "*"``.

Patterns use Django's ``ALLOWED_HOSTS`` syntax, plus full origins: ``example.com`` (that host),
``.example.com`` (it and every subdomain), ``example.com:8443`` (that port only),
``https://example.com`` (that scheme too), ``*`` (anything, including no ``Origin`` at all).
A handshake without ``Origin`` (most non-browser clients) passes only ``*``, as in Channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from .types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger("gateway.origins")


@dataclass(frozen=True)
class _Pattern:
    scheme: str | None
    host: str
    port: int | None

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        if self.scheme is not None and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("."):
            return host == self.host[1:] or host.endswith(self.host)
        return host == self.host


class Origins:
    """A parsed ``origins:`` value."""

    def __init__(self, patterns: Iterable[_Pattern], any_origin: bool, described: str) -> None:
        self.patterns = tuple(patterns)
        self.any_origin = any_origin
        self.described = described

    @classmethod
    def parse(cls, value: str | Iterable[str], source_name: str = "origins") -> Origins:
        items = [value] if isinstance(value, str) else list(value)
        patterns = []
        for item in items:
            if item == "*":
                return cls((), True, "*")
            patterns.append(_parse_pattern(item, source_name))
        return cls(patterns, False, f"{source_name}: {', '.join(items) or '(empty)'}")

    def allows(self, origin: bytes | None) -> bool:
        if self.any_origin:
            return True
        if not origin:
            return False
        try:
            parts = urlsplit(origin.decode("latin-1"))
            port = parts.port
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        if not parts.scheme or not host:
            return False  # "null" (a sandboxed page or file://) and other non-URLs
        port = _with_default(parts.scheme, port)
        return any(p.matches(parts.scheme, host, port) for p in self.patterns)


def _with_default(scheme: str, port: int | None) -> int | None:
    """The port an origin names, or its scheme's default when it names none."""
    return port if port is not None else {"http": 80, "https": 443}.get(scheme)


def _parse_pattern(text: str, source_name: str) -> _Pattern:
    raw = text.strip().lower()
    if "://" in raw:
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{source_name}: {text!r} has a port that is not a number") from None
        if not parts.hostname:
            raise ValueError(f"{source_name}: {text!r} has no host (write https://example.com)")
        return _Pattern(parts.scheme, parts.hostname, _with_default(parts.scheme, port))
    host, port_text = raw, ""
    if raw.startswith("["):
        host, _, rest = raw.partition("]")
        host += "]"
        port_text = rest[1:] if rest.startswith(":") else ""
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    if not host:
        raise ValueError(f"{source_name}: empty pattern")
    if port_text and not port_text.isdigit():
        raise ValueError(f"{source_name}: {text!r} has a port that is not a number")
    return _Pattern(None, host.strip("[]") if host.startswith("[") else host, int(port_text) if port_text else None)


class OriginCheck:
    """ASGI middleware: refuse (HTTP 403) a WebSocket handshake from an origin not allowed."""

    def __init__(self, app: ASGIApp, origins: Origins) -> None:
        self.app = app
        self.origins = origins
        self.consumer_class = getattr(app, "consumer_class", None)  # so route listings name the app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = next((v for k, v in scope.get("headers", ()) if k == b"origin"), None)
            if not self.origins.allows(origin):
                client = scope.get("client")
                log.warning(
                    "websocket.origin_refused", origin=origin.decode("latin-1") if origin else None,
                    path=scope.get("path"), route=scope.get("route_name"), allowed=self.origins.described,
                    client=f"{client[0]}:{client[1]}" if client else None,
                )
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)
