"""Trusted reverse proxies: X-Forwarded-* and RFC 7239 ``Forwarded``, honoured only from them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Address = tuple[str, int] | None


class TrustedProxies:
    """Decides whether a peer is a trusted proxy and rewrites client/scheme/host from its headers.

    The rightmost forwarded address that is not itself a trusted proxy becomes the client
    (so a client cannot forge its address by sending its own X-Forwarded-For through the chain).
    """

    __slots__ = ("_cache", "_networks", "_unix")

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = []
        self._unix = False
        for entry in entries:
            if entry == "unix":
                self._unix = True
            else:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks) or self._unix

    def trusts(self, host: str | None) -> bool:
        if host is None:
            return self._unix
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            found = False
        else:
            mapped = getattr(ip, "ipv4_mapped", None)
            found = any(ip in net or (mapped is not None and mapped in net) for net in self._networks)
        if len(self._cache) < 4096:
            self._cache[host] = found
        return found

    def apply(
        self, headers: list[tuple[bytes, bytes]], client: Address, scheme: str, server: Any,
    ) -> tuple[Address, str, Any, list[tuple[bytes, bytes]] | None]:
        """``(client, scheme, server, new_headers_or_None)`` after honouring the proxy headers.

        ``new_headers`` replaces the Host header when X-Forwarded-Host / ``Forwarded: host=`` says so.
        Call only for a trusted peer.
        """
        forwarded: list[bytes] = []
        xff: list[bytes] = []
        proto = host = port = None
        for name, value in headers:
            if name == b"forwarded":
                forwarded.append(value)
            elif name == b"x-forwarded-for":
                xff.append(value)
            elif name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-host":
                host = value
            elif name == b"x-forwarded-port":
                port = value
        websocket = scheme in ("ws", "wss")
        if forwarded:
            hops = _parse_forwarded(b",".join(forwarded).decode("latin-1"))
            # Walk from the nearest hop back; stop at the first one that is not a trusted proxy.
            chosen: dict[str, str] | None = None
            for hop in reversed(hops):
                chosen = hop
                addr = hop.get("for")
                if addr is None or not self.trusts(_strip_for(addr)[0]):
                    break
            if chosen is not None:
                if "for" in chosen:
                    h, p = _strip_for(chosen["for"])
                    client = (h, p if p is not None else 0) if h else client
                if "proto" in chosen:
                    scheme = _scheme(chosen["proto"], websocket) or scheme
                if "host" in chosen:
                    host = chosen["host"].encode("latin-1")
        else:
            if xff:
                hops_x = [h.strip() for h in b",".join(xff).decode("latin-1").split(",") if h.strip()]
                for addr in reversed(hops_x):
                    h, p = _strip_for(addr)
                    client = (h, p if p is not None else 0)
                    if not self.trusts(h):
                        break
            if proto is not None:
                last = proto.decode("latin-1").split(",")[-1].strip()
                scheme = _scheme(last, websocket) or scheme
        new_headers = None
        if host is not None:
            host_text = host.decode("latin-1").split(",")[-1].strip()
            if port is not None and ":" not in host_text.rsplit("]", 1)[-1]:
                host_text = f"{host_text}:{port.decode('latin-1').strip()}"
            new_headers = [(n, v) for n, v in headers if n != b"host"]
            new_headers.insert(0, (b"host", host_text.encode("latin-1")))
            server = _server_from_host(host_text, scheme, server)
        elif port is not None and server is not None:
            try:
                server = (server[0], int(port.decode("latin-1").split(",")[-1].strip()))
            except ValueError:
                pass
        return client, scheme, server, new_headers


def _scheme(value: str, websocket: bool) -> str | None:
    value = value.strip().lower()
    if value in ("https", "wss"):
        return "wss" if websocket else "https"
    if value in ("http", "ws"):
        return "ws" if websocket else "http"
    return None


def _strip_for(value: str) -> tuple[str, int | None]:
    value = value.strip().strip('"')
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    try:
        return host, int(port) if port else None
    except ValueError:
        return host, None


def _server_from_host(host: str, scheme: str, server: Any) -> Any:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = host.partition(":")
    try:
        port = int(port_text) if port_text else (443 if scheme in ("https", "wss") else 80)
    except ValueError:
        return server
    return (name, port)


def _parse_forwarded(text: str) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` elements, each a dict of lowercase parameter names to values."""
    hops: list[dict[str, str]] = []
    for element in _split_quoted(text, ","):
        params: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            name, sep, value = pair.partition("=")
            if not sep:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1].replace('\\"', '"')
            params[name.strip().lower()] = value
        if params:
            hops.append(params)
    return hops


def _split_quoted(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]
