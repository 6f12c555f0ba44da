"""WebSocket framing, server side, without I/O: client frames in (RFC 6455), server frames out,
and permessage-deflate (RFC 7692).

Our own rather than a library's: aiohttp's frame reader can only be fed through a private queue
class, and the sans-I/O libraries cost several times more per message than this loop, which is
all the adapter needs (a server reads masked frames and writes unmasked ones).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Callable
from typing import Any

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_HEAD2 = struct.Struct("!BBH").pack
_HEAD8 = struct.Struct("!BBQ").pack
_SYNC_TAIL = b"\x00\x00\xff\xff"  # what a sync flush ends with; RFC 7692 drops it from the wire


class ProtocolError(Exception):
    """The client broke the protocol or a limit: the connection closes with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def accept_key(key: str) -> bytes:
    """The ``Sec-WebSocket-Accept`` value answering a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())


def frame_head(first: int, size: int) -> bytes:
    """The header of an unmasked (server) frame; ``first`` is FIN | RSV1 | opcode."""
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return _HEAD2(first, 126, size)
    return _HEAD8(first, 127, size)


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask``: as one big integer, a few C loops
    over the bytes instead of a Python loop over each."""
    n = len(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


# -- permessage-deflate ------------------------------------------------------------------------
def negotiate_deflate(offers: str | None) -> tuple[str, int, bool] | None:
    """Pick the first permessage-deflate offer we can honour from a ``Sec-WebSocket-Extensions``
    header: ``(response value, server window bits, server_no_context_takeover)``, or ``None``.
    An offer with an unknown or repeated parameter, or a window we cannot produce, is passed over."""
    if not offers:
        return None
    for offer in offers.split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if name.lower() != "permessage-deflate":
            continue
        bits, notakeover, seen, usable = 15, False, set(), True
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            number = int(value) if value.isascii() and value.isdigit() and len(value) <= 2 else 0
            if key in seen:
                usable = False
            elif key == "server_no_context_takeover" and not value:
                notakeover = True
            elif key == "client_no_context_takeover" and not value:
                pass  # the client's own compressor; our inflater reads either way
            elif key == "server_max_window_bits" and 9 <= number <= 15:
                bits = number  # zlib makes no raw deflate stream with a 256-byte window: 8 is passed over
            elif key == "client_max_window_bits" and (not value or 8 <= number <= 15):
                pass  # a 32 KiB inflate window reads any smaller one
            else:
                usable = False
            seen.add(key)
        if usable:
            response = "permessage-deflate"
            if bits < 15:
                response += f"; server_max_window_bits={bits}"
            if notakeover:
                response += "; server_no_context_takeover"
            return response, bits, notakeover
    return None


class Deflater:
    """Compresses outgoing messages; one per connection (the window carries over unless the
    client asked for ``server_no_context_takeover``)."""

    __slots__ = ("bits", "notakeover", "zobj")

    def __init__(self, bits: int, notakeover: bool) -> None:
        self.bits = bits
        self.notakeover = notakeover
        self.zobj = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits)

    def compress(self, data: bytes) -> bytes:
        zobj = self.zobj
        out = zobj.compress(data) + zobj.flush(zlib.Z_FULL_FLUSH if self.notakeover else zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_SYNC_TAIL) else out


def _inflate(zobj: Any, data: bytes, limit: int) -> bytes:
    """Inflate one message, refusing it as soon as it grows past ``limit`` bytes."""
    out = zobj.decompress(data + _SYNC_TAIL, limit + 1)
    while zobj.unconsumed_tail and len(out) <= limit:
        out += zobj.decompress(zobj.unconsumed_tail, limit + 1 - len(out))
    if len(out) > limit:
        raise ProtocolError(1009, f"message larger than {limit} bytes")
    return out


# -- reading client frames ---------------------------------------------------------------------
class FrameReader:
    """Parses the client's byte stream into messages and hands each complete one to ``deliver``
    as ``(opcode, data)``: ``str`` for text, ``bytes`` for binary, ping and pong payloads, and
    ``(code, reason)`` for close (code 0: the frame had none). Raises ``ProtocolError``; reads
    nothing after a close frame."""

    __slots__ = (
        "closed",
        "compressed",
        "deliver",
        "fragments",
        "have",
        "inflater",
        "max_frame",
        "max_message",
        "message_opcode",
        "message_size",
        "need",
        "small",
        "stash",
    )

    def __init__(self, deliver: Callable[[int, Any], None], max_message: int, max_frame: int | None, deflate: bool) -> None:
        self.deliver = deliver
        self.max_message = max_message
        self.max_frame = max_frame
        self.inflater: Any = zlib.decompressobj(-15) if deflate else None
        self.stash: list[bytes] = []  # bytes of an incomplete frame, joined once it is all here
        self.have = 0
        self.need = 0
        self.message_opcode = 0  # TEXT or BINARY while a fragmented message is arriving
        self.message_size = 0
        self.compressed = False
        self.fragments: list[bytes] = []
        self.closed = False
        # 0x80 (the mask bit) | the largest one-byte length no limit refuses: the fast path's bound
        self.small = 0x80 | min(125, max_message, 125 if max_frame is None else max_frame)

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        if self.stash:
            self.stash.append(data)
            self.have += len(data)
            if self.have < self.need:
                return
            data = b"".join(self.stash)
            self.stash = []
        pos, end = 0, len(data)
        while pos < end:
            avail = end - pos
            if avail < 2:
                self._wait(data, pos, 2)
                return
            first, second = data[pos], data[pos + 1]
            if (first == 0x81 or first == 0x82) and 0x80 < second <= self.small and not self.message_opcode:
                # The usual frame, written out: a whole small text or binary message, masked,
                # uncompressed, within every limit.
                start = pos + 6
                stop = start + (second & 0x7F)
                if stop <= end:
                    n = stop - start
                    key = (data[pos + 2:start] * ((n >> 2) + 1))[:n]
                    payload = (int.from_bytes(data[start:stop], "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
                    pos = stop
                    if first == 0x82:
                        self.deliver(BINARY, payload)
                        continue
                    try:
                        text = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(1007, "text message is not valid UTF-8") from None
                    self.deliver(TEXT, text)
                    continue
            size = second & 0x7F
            if not second & 0x80:
                raise ProtocolError(1002, "unmasked frame from the client")
            head = 6 if size < 126 else 8 if size == 126 else 14
            if avail < head:
                self._wait(data, pos, head)
                return
            if size == 126:
                size = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif size == 127:
                size = int.from_bytes(data[pos + 2:pos + 10], "big")
                if size >> 63:
                    raise ProtocolError(1002, "frame length with the high bit set")
            opcode = first & 0x0F
            self._check(first, opcode, size)
            if avail < head + size:
                self._wait(data, pos, head + size)
                return
            start = pos + head
            payload = data[start:start + size]
            if size:
                payload = unmask(payload, data[start - 4:start])
            pos = start + size
            self._frame(first, opcode, payload)
            if self.closed:
                return

    def _wait(self, data: bytes, pos: int, need: int) -> None:
        rest = data[pos:]
        self.stash = [rest]
        self.have = len(rest)
        self.need = need

    def _check(self, first: int, opcode: int, size: int) -> None:
        """Refuse a frame by its header alone, before its payload is read."""
        if opcode >= CLOSE:
            if opcode > PONG:
                raise ProtocolError(1002, f"unknown opcode {opcode}")
            if not first & 0x80 or size > 125:
                raise ProtocolError(1002, "control frame fragmented or longer than 125 bytes")
            if first & 0x70:
                raise ProtocolError(1002, "reserved bits set on a control frame")
            return
        if opcode == CONTINUATION:
            if not self.message_opcode:
                raise ProtocolError(1002, "continuation frame without a message to continue")
            if first & 0x70:
                raise ProtocolError(1002, "reserved bits set on a continuation frame")
            compressed = self.compressed
        elif opcode <= BINARY:
            if self.message_opcode:
                raise ProtocolError(1002, "a new message before the last one ended")
            if first & 0x30 or (first & 0x40 and self.inflater is None):
                raise ProtocolError(1002, "reserved bits set that no extension defines")
            compressed = bool(first & 0x40)
        else:
            raise ProtocolError(1002, f"unknown opcode {opcode}")
        max_frame = self.max_frame
        if max_frame is not None and size > max_frame:
            raise ProtocolError(1009, f"frame larger than {max_frame} bytes")
        limit = self.max_message
        if compressed:  # deflate may grow data that does not compress: a stored block's few bytes per 64 KiB
            limit += (limit >> 13) + 64
        if self.message_size + size > limit:
            raise ProtocolError(1009, f"message larger than {self.max_message} bytes")

    def _frame(self, first: int, opcode: int, payload: bytes) -> None:
        if opcode == TEXT or opcode == BINARY:  # noqa: SIM109 - per frame: no tuple built from the globals
            if first & 0x80:
                self._message(opcode, payload, bool(first & 0x40))
            else:
                self.message_opcode = opcode
                self.compressed = bool(first & 0x40)
                self.fragments = [payload]
                self.message_size = len(payload)
        elif opcode == CONTINUATION:
            self.fragments.append(payload)
            self.message_size += len(payload)
            if first & 0x80:
                opcode = self.message_opcode
                payload = b"".join(self.fragments)
                self.message_opcode = 0
                self.message_size = 0
                self.fragments = []
                self._message(opcode, payload, self.compressed)
        elif opcode == CLOSE:
            if len(payload) == 1:
                raise ProtocolError(1002, "close frame with a one-byte payload")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "close reason is not valid UTF-8") from None
            self.closed = True
            self.deliver(CLOSE, (int.from_bytes(payload[:2], "big") if payload else 0, reason))
        else:  # PING, PONG
            self.deliver(opcode, payload)

    def _message(self, opcode: int, payload: bytes, compressed: bool) -> None:
        if compressed:
            try:
                payload = _inflate(self.inflater, payload, self.max_message)
            except zlib.error as exc:
                raise ProtocolError(1007, f"invalid deflate data: {exc}") from None
        if opcode == TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "text message is not valid UTF-8") from None
            self.deliver(TEXT, text)
        else:
            self.deliver(BINARY, payload)
