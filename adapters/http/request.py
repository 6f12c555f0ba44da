"""One parsed HTTP/1.1 request: its head as the parser reported it, and its body as it arrives.

The parser (httptools, in ``connection.py``) fills a ``Request`` from its callbacks; the request's
``RequestCycle`` reads the body out of it. Bodies are never buffered whole: the connection stops
reading from the socket while a request holds more than ``BODY_BUFFER`` unread bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import httptools

BODY_BUFFER = 2**16  # unread body bytes a request may hold before the socket is paused

METHODS: dict[bytes, str] = {}  # method bytes -> str: a dict lookup instead of a decode per request


def method_name(raw: bytes) -> str:
    name = METHODS.get(raw)
    if name is None:
        name = raw.decode("ascii")
        if len(METHODS) < 64:  # extension methods are tokens anyone can make up: bounded
            METHODS[raw] = name
    return name


class Request:
    """A request head and the state of its body.

    ``complete`` turns true when the parser has seen the end of the message; for a request
    without a body that happens in the same read as the head, before the app runs, so the
    app's first ``receive`` never waits.
    """

    __slots__ = (
        "chunks",
        "complete",
        "error",
        "headers",
        "keep_alive",
        "method",
        "size",
        "target",
        "upgrade",
        "version",
        "waiter",
    )

    def __init__(self, method: str, target: bytes, version: str, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # lowercased names, in order, duplicates kept
        self.keep_alive = keep_alive
        self.upgrade = False
        self.complete = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    # -- fed by the parser ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.wake()

    def fail(self, exc: BaseException) -> None:
        """The body cannot arrive in full (bad framing, the client went away)."""
        if not self.complete:
            self.error = exc
            self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- read by the cycle ------------------------------------------------------------------
    def take(self) -> bytes:
        """The body bytes that have arrived, as one chunk (``b""`` if none)."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.size = 0
        return data

    async def read(self, loop: asyncio.AbstractEventLoop) -> bytes:
        """``take()`` once some body has arrived or its end; raises the error that cut it short."""
        while not self.chunks and not self.complete:
            if self.error is not None:
                raise self.error
            self.waiter = waiter = loop.create_future()
            await waiter
        return self.take()


def split_target(target: bytes, root_path: str) -> tuple[str, bytes, bytes]:
    """``(path, raw_path, query_string)`` from the request target, ASGI style."""
    if target[:1] != b"/":
        # absolute-form ("GET http://host/x") or asterisk-form ("OPTIONS *")
        if target == b"*":
            raw, query = target, b""
        else:
            url: Any = httptools.parse_url(target)
            raw, query = url.path or b"/", url.query or b""
    else:
        q = target.find(b"?")
        if q < 0:
            raw, query = target, b""
        else:
            raw, query = target[:q], target[q + 1:]
            h = query.find(b"#")
            if h >= 0:
                query = query[:h]
        h = raw.find(b"#")
        if h >= 0:
            raw = raw[:h]
    # The parser admits only visible ASCII in a target: latin-1 is a plain byte-for-byte copy.
    path = raw.decode("latin-1")
    if "%" in path:
        path = unquote(path)  # percent-escapes are UTF-8, as ASGI asks ("replace" for the invalid)
    if root_path:
        path = root_path + path
        raw = root_path.encode("utf-8") + raw
    return path, raw, query
