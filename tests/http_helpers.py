"""Helpers for the http adapter tests: serve an ASGI app on loopback port 0, talk raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gateway.server import Gateway


@contextlib.asynccontextmanager
async def serve(app: Any, *, listen: str | list[str] = "127.0.0.1:0", drain: float = 1.0, **http: Any) -> AsyncIterator[Gateway]:
    """Run ``app`` for every HTTP and WebSocket path; ``gw.addresses['http'][0]`` is where."""
    gw = Gateway.from_app(app, listen=listen, http=http)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(drain)


def addr(gw: Gateway, i: int = 0) -> str:
    return gw.addresses["http"][i]


def host_port(gw: Gateway, i: int = 0) -> tuple[str, int]:
    text = addr(gw, i)
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def raw(gw: Gateway, data: bytes, *, timeout: float = 5.0, i: int = 0) -> bytes:
    """Send raw bytes, read until the server closes (or timeout); return everything read."""
    host, port = host_port(gw, i)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_all(reader, timeout)
    finally:
        writer.close()


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[bytes, bytes], bytes]:
    """Read one response with a content-length or chunked body: ``(status, headers, body)``."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            body = b""
        return status, headers, body


def status_of(response: bytes) -> int:
    return int(response.split(b"\r\n", 1)[0].split()[1])


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A small app: reads the whole body, answers 200 with ``path`` + body."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = scope["path"].encode() + b"|" + body
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The value of one sample on the gateway's /metrics (0 when it has not been created)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(gw.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
