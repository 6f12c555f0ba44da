"""The embedded broker's reader for one device connection: whole reads, PUBLISH decoded in place.

amqtt's own reader loop costs more per message than the rest of the gateway together: it reads
the fixed header a byte at a time under ``asyncio.wait_for`` (a task per packet on Python 3.11),
starts another task per packet, passes each PUBLISH through a queue to a per-client loop that
waits on four futures, and then through a second queue to a broadcast task. This reader takes
whatever the connection holds (up to 64 KiB), cuts it into packets and decodes each PUBLISH
itself; the broker step (``Publish``) decides what becomes of it. Every other packet type is
decoded by amqtt's packet classes and handed to amqtt's handler methods, as amqtt's loop does,
so sessions, subscriptions and the QoS 1/2 flows stay amqtt's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Protocol

from amqtt.adapters import ReaderAdapter

from .amqtt_compat import HANDLED_TYPES, dispatch_packet, stream_read

READ_SIZE = 65536

Chunks = Callable[[], Awaitable[bytes]]

# packet types (MQTT 3.1.1, 2.2.1)
CONNECT = 1
PUBLISH = 3


class BadPacket(ValueError):
    """A packet MQTT forbids; the connection is ended, as MQTT requires (3.1.1, 4.8)."""


class InvalidPublish(BadPacket):
    """A PUBLISH whose topic is empty, not UTF-8, holds a wildcard or starts with ``$``."""

    def __init__(self, why: str, raw_topic: bytes | bytearray) -> None:
        super().__init__(why)
        self.raw_topic = bytes(raw_topic)  # a packet split across reads is parsed from a bytearray


class PacketTooLarge(BadPacket):
    """A packet other than PUBLISH longer than any the broker could accept; refused before it is read."""


class Publish(Protocol):
    """The broker step for one decoded PUBLISH from the device."""

    def __call__(
        self, topic: str, payload: bytes, qos: int, packet_id: int | None, retain: bool, dup: bool
    ) -> Coroutine[Any, Any, None] | None:
        """Handle it at once (``None``), or return the work the reader must run: as a task for
        QoS 2 (its flow waits for the device), awaited before the next packet otherwise (an
        access check that keeps the connection's order)."""


class Refuse(Protocol):
    """The broker step for a PUBLISH longer than any it accepts, read past without keeping it."""

    def __call__(
        self, topic: str, qos: int, packet_id: int | None, size: int
    ) -> Coroutine[Any, Any, None] | None:
        """Acknowledge and drop it; for QoS 2, return the flow the reader runs as a task."""


def chunk_source(reader: ReaderAdapter, max_packet: int) -> Chunks:
    """How to take whatever the connection holds from one of amqtt's reader adapters.

    A TCP or TLS connection reads up to 64 KiB at once; the HTTP adapter's WebSocket mount
    hands over each binary message (``read_some``); any other adapter (amqtt's own WebSocket
    listener) is read one packet at a time through amqtt's exact-size ``read``.
    """
    read = stream_read(reader)
    if read is not None:
        return partial(read, READ_SIZE)
    read_some = getattr(reader, "read_some", None)
    if read_some is not None:
        return read_some
    return partial(_one_packet, reader, max_packet)


async def _one_packet(reader: ReaderAdapter, max_packet: int) -> bytes:
    """One whole packet through amqtt's exact-size reads; short at the end of the stream, and
    only its fixed header when that announces more than ``max_packet`` bytes."""
    data = bytearray(await reader.read(1))
    while data and (len(data) == 1 or data[-1] & 0x80) and len(data) < 5:
        byte = await reader.read(1)
        if not byte:
            break
        data += byte
    head = _header(data, 0, len(data)) if data else None
    if head is not None and 0 < head[2] <= max_packet:
        data += await reader.read(head[2])
    return bytes(data)


def _header(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int, int] | None:
    """The first byte, the body's start and its length of the packet at ``pos``; ``None``
    while the fixed header is incomplete."""
    i = pos + 1
    length = 0
    shift = 0
    while True:
        if i >= end:
            return None
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return buf[pos], i, length
        shift += 7
        if shift == 28:
            raise BadPacket("remaining length longer than four bytes")


# the longest start of a PUBLISH body that holds its topic and packet id
_PUBLISH_HEAD = 2 + 65535 + 2


def _decode_publish(first: int, buf: bytes, start: int, end: int, publish: Publish) -> Coroutine[Any, Any, None] | None:
    qos, topic, packet_id, payload_start = _publish_head(first, buf, start, end)
    return publish(topic, buf[payload_start:end], qos, packet_id, bool(first & 0x01), bool(first & 0x08))


def _publish_head(first: int, buf: bytes | bytearray, start: int, end: int) -> tuple[int, str, int | None, int]:
    """QoS, topic, packet id and the payload's start of the PUBLISH whose body is ``buf[start:end]``."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise BadPacket("PUBLISH with QoS 3")
    if end - start < 2:
        raise BadPacket("PUBLISH shorter than its topic length")
    topic_end = start + 2 + (buf[start] << 8 | buf[start + 1])
    payload_start = topic_end + 2 if qos else topic_end
    if payload_start > end:
        raise BadPacket("PUBLISH topic longer than the packet")
    raw = buf[start + 2:topic_end]
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPublish("PUBLISH topic is not valid UTF-8", raw) from None
    if not topic:
        raise InvalidPublish("empty PUBLISH topic", raw)
    if "+" in topic or "#" in topic:
        raise InvalidPublish("wildcard ('+' or '#') in a PUBLISH topic", raw)
    if topic[0] == "$":
        raise InvalidPublish("PUBLISH to a '$' topic (reserved for the broker)", raw)
    packet_id = (buf[topic_end] << 8 | buf[topic_end + 1]) if qos else None
    return qos, topic, packet_id, payload_start


async def _next_chunk(read: Chunks, keepalive: float | None) -> bytes:
    if keepalive:
        async with asyncio.timeout(keepalive):
            return await read()
    return await read()


async def _skip_publish(
    first: int, data: memoryview, length: int, read: Chunks, keepalive: float | None
) -> tuple[int, str, int | None, bytes]:
    """Read past a PUBLISH body of ``length`` bytes that starts with ``data``, keeping only its
    head (topic and packet id). Returns QoS, topic, packet id and the bytes that followed it."""
    head = bytearray()
    seen = 0
    chunk: bytes | memoryview = data
    while True:
        take = min(len(chunk), length - seen)
        if len(head) < _PUBLISH_HEAD:
            head += chunk[:min(take, _PUBLISH_HEAD - len(head))]
        seen += take
        if seen == length:
            rest = bytes(chunk[take:])
            break
        chunk = await _next_chunk(read, keepalive)
        if not chunk:
            raise ConnectionError("the connection closed in the middle of a PUBLISH")
    qos, topic, packet_id, _ = _publish_head(first, head, 0, len(head))
    return qos, topic, packet_id, rest


async def read_packets(
    handler: Any,
    read: Chunks,
    publish: Publish,
    refuse: Refuse,
    gate: asyncio.Event,
    keepalive: float | None,
    max_packet: int,
    tasks: deque[asyncio.Task[None]],
) -> None:
    """Read and handle packets until the device closes the connection.

    Raises ``TimeoutError`` when nothing arrived for ``keepalive`` seconds and ``BadPacket``
    for a packet that ends the connection. A PUBLISH longer than ``max_packet`` is read past
    without being kept (only its topic and packet id) and handed to ``refuse``, so the device
    gets its acknowledgement and does not resend it for ever; any other packet that long
    raises ``PacketTooLarge`` as soon as its fixed header arrives. Between packets it waits
    while ``gate`` is closed (a route's backlog is full), so a device's burst stops at the
    socket, not in memory (a route that stays full of QoS 0 messages overflows and opens the
    gate again after its ``drop_after``, see ``dispatch``). ``tasks`` collects amqtt's handler
    tasks for the caller to cancel at the end.
    """
    pending = bytearray()  # the start of a packet that has not arrived whole
    need = 0  # how long ``pending`` must grow before it is worth parsing again
    carry: bytes | None = None  # what followed a skipped PUBLISH, parsed before the next read
    while True:
        if carry is not None:
            data, carry = carry, None
        else:
            data = await _next_chunk(read, keepalive)
            if not data:
                return
        if pending:
            pending += data  # a large packet grows in place: no copy of all of it per read
            if len(pending) < need:
                continue
            buf = bytes(pending)
            pending.clear()
        else:
            buf = data
        end = len(buf)
        pos = 0
        while pos < end:
            head = _header(buf, pos, end)
            if head is None:
                need = 0
                break
            first, start, length = head
            kind = first >> 4
            if length > max_packet:
                if kind != PUBLISH:
                    raise PacketTooLarge(f"a packet of {length} bytes, more than the {max_packet} this broker accepts")
                qos, topic, packet_id, rest = await _skip_publish(first, memoryview(buf)[start:], length, read, keepalive)
                work = refuse(topic, qos, packet_id, length - (len(topic.encode()) + 2 + (2 if qos else 0)))
                if work is not None:
                    tasks.append(asyncio.get_running_loop().create_task(work))
                pos = end
                if rest:
                    carry = rest
                break
            stop = start + length
            if stop > end:
                need = stop - pos
                break
            pos = stop
            if kind == PUBLISH:
                work = _decode_publish(first, buf, start, stop, publish)
                if work is not None:
                    if first & 0x06 == 0x04:  # QoS 2
                        tasks.append(asyncio.get_running_loop().create_task(work))
                    else:
                        await work
            elif kind in HANDLED_TYPES:
                await dispatch_packet(handler, first, buf[start:stop], tasks)
            else:
                raise BadPacket(f"reserved packet type {kind}")
            while tasks and tasks[0].done():
                tasks.popleft()
            if not gate.is_set():
                await gate.wait()
        if pos < end:
            pending += memoryview(buf)[pos:]
