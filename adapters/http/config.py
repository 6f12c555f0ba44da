"""The ``adapters.http`` block of the YAML: listeners, TLS, proxies and every limit."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

import structlog
from pydantic import Field, field_validator, model_validator

from gateway.schema import Listen, ListenAddress, Section, parse_listen

log = structlog.get_logger("gateway.config")

KiB = 1024
MiB = 1024 * KiB

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class TLSConfig(Section):
    """`tls:` — serve HTTPS / WSS on every listener of this adapter."""

    cert: str = Field(description="PEM certificate chain file.")
    key: str = Field(description="PEM private key file.")
    client_ca: str | None = Field(
        None, description="PEM CA bundle: when set, clients must present a certificate signed by it (mutual TLS)."
    )


class Limits(Section):
    """`limits:` — every bound the adapter enforces. Each one answers with the status or close code named."""

    max_request_line: PositiveInt = Field(
        8 * KiB, description="Longest request target (the URL in the request line) in bytes; longer: 414."
    )
    max_header_size: PositiveInt = Field(
        8 * KiB, description="Longest header field name, and longest header value, in bytes; longer: 431."
    )
    max_headers: PositiveInt = Field(100, description="Most header fields in one request; more: 431.")
    max_body_size: int | None = Field(
        16 * MiB, ge=0,
        description="Largest request body in bytes, checked against Content-Length before the app runs and "
        "while the body streams (chunked); larger: 413. null: unlimited.",
    )
    header_timeout: PositiveFloat = Field(
        10.0, description="Seconds a client has, once it starts a request, to send the complete request head "
        "(slow-loris guard); then 408 and close.",
    )
    body_timeout: PositiveFloat = Field(
        20.0, description="Seconds a request body has to arrive, counted from the end of the request head and "
        "extended by one second for every `body_min_rate` bytes received; the clock stops while the server is not "
        "reading (the app has not read what arrived, or has not yet asked for an `Expect: 100-continue` body). "
        "Then 408 (the connection is closed instead if the response has started) and the app's `receive` "
        "returns `http.disconnect`.",
    )
    body_min_rate: int | None = Field(
        500, gt=0, description="Bytes per second a request body must average to outlast `body_timeout` "
        "(slow-body guard). null: the whole body must arrive within `body_timeout`.",
    )
    send_timeout: PositiveFloat = Field(
        30.0, description="Seconds a client may take none of the data waiting for it (more than `send_buffer`, "
        "so the app's `send` waits; or the rest of a response on a connection being closed). Then the connection "
        "is aborted: an HTTP app's `send` returns and its `receive` gives `http.disconnect`; a WebSocket app's "
        "`send` raises OSError and it gets `websocket.disconnect` 1006.",
    )
    keepalive_timeout: PositiveFloat = Field(
        5.0, description="Seconds an idle keep-alive connection (or a new connection with no request yet) is kept open."
    )
    ws_max_message_size: PositiveInt = Field(
        1 * MiB, description="Largest WebSocket message (after reassembly of fragments and decompression), and "
        "therefore largest frame, in bytes; larger: close 1009.",
    )
    ws_max_frame_size: int | None = Field(
        None, gt=0, description="Largest single WebSocket frame payload in bytes, checked from the frame header before "
        "the payload is read; larger: close 1009. null: bounded by `ws_max_message_size` only.",
    )
    ws_ping_interval: float | None = Field(
        20.0, gt=0, description="Seconds between server pings on an idle WebSocket; null: no pings."
    )
    ws_ping_timeout: PositiveFloat = Field(
        20.0, description="Seconds to wait for the pong (or any frame) after a ping before the connection is closed (1011)."
    )
    max_connections: PositiveInt = Field(
        10_000, description="Open client connections (HTTP and WebSocket) per adapter. Beyond it a request gets 503 "
        "(a WebSocket handshake is refused with 503) and the connection is closed; accepted again below it.",
    )
    send_buffer: PositiveInt = Field(
        64 * KiB, description="Bytes buffered for writing on one connection, HTTP or WebSocket (beyond what the kernel "
        "accepted), before the app's `send` waits (backpressure): a client that does not read stalls only its own "
        "sender. Formerly `ws_send_buffer` (still accepted, with a deprecation warning).",
    )
    max_pipelined: PositiveInt = Field(
        16, description="Pipelined requests parsed ahead of the one being answered before reading pauses."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """``ws_send_buffer`` bounded HTTP writes too: it is ``send_buffer`` now, the old name still read."""
        if not isinstance(data, dict) or "ws_send_buffer" not in data:
            return data
        if "send_buffer" in data:
            raise ValueError("ws_send_buffer is the old name of send_buffer: give send_buffer only")
        data = dict(data)
        data["send_buffer"] = data.pop("ws_send_buffer")
        log.warning(
            "config.deprecated_key", key="adapters.http.limits.ws_send_buffer", replacement="send_buffer",
            detail="ws_send_buffer bounds HTTP writes as well; rename it to send_buffer (the old name will go)",
        )
        return data


class HttpConfig(Section):
    """`adapters.http` — HTTP/1.1 (httptools) and WebSocket (the adapter's own frame codec)."""

    listen: Listen = Field(
        default_factory=lambda: ["127.0.0.1:8000"],
        description="Address or list of addresses: `host:port`, `[::1]:port`, `:port` (all IPv4), "
        "`unix:/path/to.sock`, `fd://3` (an inherited listening socket).",
    )
    root_path: str = Field(
        "", description="Mount point of the apps behind a path-stripping proxy: sent as `scope['root_path']` and "
        "prepended to `scope['path']` (routes still match the path without it).",
    )
    tls: TLSConfig | None = Field(None, description="TLS for every listener of this adapter.")
    reuse_port: bool = Field(False, description="Set SO_REUSEPORT so several processes can listen on one port.")
    backlog: PositiveInt = Field(2048, description="Listen backlog.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (`10.0.0.0/8`, `::1`, `unix` for unix-socket peers) whose "
        "X-Forwarded-For/-Proto/-Host/-Port and `Forwarded` headers are honoured; from anyone else they are ignored.",
    )
    ws_compression: bool = Field(True, description="Negotiate permessage-deflate when a WebSocket client offers it.")
    access_log: bool = Field(True, description="One structured log line per HTTP request and per WebSocket connection.")
    limits: Limits = Field(default_factory=Limits, description="Limits; see below.")

    @field_validator("root_path")
    @classmethod
    def _root(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("root_path must start with '/'")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            if item == "unix":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {item!r} is not an IP address or network") from None
        return value

    def addresses(self) -> list[ListenAddress]:
        return [parse_listen(item) for item in self.listen]
