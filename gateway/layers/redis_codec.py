"""The Redis layer's wire format: messages are msgpack, and every queued element is one line of
header plus a body (``redis_scripts`` lists the kinds)::

    <13-digit expiry, ms since the epoch><kind><name>\\n<body>

The scripts read the expiry with ``string.sub(e, 1, 13)`` and the kind at byte 14: change one
side, change both.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack

STAMP = 13


def now_ms() -> int:
    return int(time.time() * 1000)


def check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"a channel layer message must be a dict, not {type(message).__name__}")


def pack(message: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a Redis channel layer message must be msgpack-serialisable: {exc}") from None


def unpack(payload: bytes) -> dict[str, Any]:
    return msgpack.unpackb(payload, raw=False)


def element(expires_ms: int, kind: bytes, name: str = "", body: bytes = b"") -> bytes:
    return b"%013d" % expires_ms + kind + name.encode() + b"\n" + body


def expiry(element: bytes) -> int:
    return int(element[:STAMP])


def parse(element: bytes) -> tuple[int, bytes, str, bytes]:
    """``(expires_ms, kind, name, body)``."""
    nl = element.index(b"\n", STAMP + 1)
    return int(element[:STAMP]), element[STAMP : STAMP + 1], element[STAMP + 1 : nl].decode(), element[nl + 1 :]


def payload(element: bytes) -> bytes:
    return element[element.index(b"\n", STAMP + 1) + 1 :]
