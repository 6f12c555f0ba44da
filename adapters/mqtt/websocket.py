"""MQTT over WebSocket on the HTTP adapter's port.

Browsers and many device SDKs reach MQTT through a WebSocket, often on the one port a firewall
or proxy lets through. Broker mode can therefore mount an ASGI app at ``ws_path`` on the HTTP
listener: the HTTP adapter does the handshake, TLS, proxies and connection limits as for any
WebSocket, and this app hands the binary stream to the embedded broker as a connection of an
*external* amqtt listener. From there the device is like any other: same authentication, ACLs,
routing and acknowledgement. (``ws_listen`` remains for a WebSocket listener on a port of its
own, served by amqtt itself.)
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter

from gateway.types import Message, Receive, Scope, Send

EXTERNAL_LISTENER = "http-mount"
# MQTT-over-WebSocket names: "mqtt" (MQTT 3.1.1 and 5), "mqttv3.1" (older clients)
SUBPROTOCOLS = ("mqtt", "mqttv3.1")

Connect = Callable[[ReaderAdapter, WriterAdapter], Awaitable[None]]


class _Reader(ReaderAdapter):
    """Reads the MQTT byte stream out of binary WebSocket messages (a packet may span several,
    and one message may hold several packets)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._buffer = bytearray()
        self._eof = False
        self.text_frame = False

    async def read(self, n: int = -1) -> bytes:
        # amqtt expects n bytes unless the stream ended, as from StreamReader.readexactly
        await self._fill(n)
        size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read_some(self) -> bytes:
        """Whatever has arrived (at least one message's worth), for the broker's reader;
        empty at the end of the stream."""
        await self._fill(1)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def _fill(self, n: int) -> None:
        """Receive until the buffer holds ``n`` bytes (all of the stream for ``n < 0``)."""
        while not self._eof and (n < 0 or len(self._buffer) < n):
            event = await self._receive()
            if event["type"] == "websocket.receive":
                data = event.get("bytes")
                if data is None:  # MQTT over WebSocket is binary only: end the connection
                    self.text_frame = True
                    self._eof = True
                else:
                    self._buffer += data
            elif event["type"] == "websocket.disconnect":
                self._eof = True

    def feed_eof(self) -> None:
        self._eof = True


class _Writer(WriterAdapter):
    """Sends what amqtt writes between two ``drain()`` calls (one MQTT packet) as one binary message."""

    def __init__(self, send: Send, client: tuple[str, int] | None) -> None:
        self._send = send
        self._client = client
        self._pending: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    async def drain(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self.closed:
            raise ConnectionResetError("the MQTT WebSocket is closed")
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except OSError as exc:  # the client went away: amqtt closes the session on this error
            raise ConnectionResetError(str(exc)) from exc

    def get_peer_info(self) -> tuple[str, int] | None:
        return self._client or ("", 0)

    def get_ssl_info(self) -> ssl.SSLObject | None:
        return None  # TLS, if any, ended at the HTTP listener

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._send({"type": "websocket.close", "code": 1000})
        except OSError:
            pass  # already gone


class MqttOverWebSocket:
    """The ASGI app mounted at ``ws_path``. ``connect`` runs one MQTT connection to its end."""

    def __init__(self, connect: Connect, log: Any) -> None:
        self.connect = connect
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        event: Message = await receive()
        if event["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        chosen = next((p for p in offered if p in SUBPROTOCOLS), None)
        if offered and chosen is None:
            self.log.info("mqtt.ws_refused", path=scope["path"], offered=offered,
                          why=f"no MQTT subprotocol offered (expected one of {', '.join(SUBPROTOCOLS)})")
            await send({"type": "websocket.close", "code": 1002})
            return
        await send({"type": "websocket.accept", "subprotocol": chosen})
        reader, writer = _Reader(receive), _Writer(send, scope.get("client"))
        try:
            await self.connect(reader, writer)
        finally:
            if reader.text_frame:
                self.log.info("mqtt.ws_text_frame", path=scope["path"], why="MQTT over WebSocket uses binary messages; connection closed")
            await writer.close()
