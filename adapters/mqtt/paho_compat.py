"""Every use of paho-mqtt's private internals, for client mode (``client.py``), checked at start-up.

paho's public API cannot do three things the client mode needs, so ``CompatClient`` overrides
private methods of ``paho.mqtt.client.Client``:

* hold a QoS 2 message's PUBREC until the application returned (paho sends it on arrival, which
  would hand the message over before it was handled): ``_handle_publish``, ``_send_pubrec``,
  ``_handle_pubrel``;
* read from asyncio without a system call per byte: paho reads a packet with a ``recv`` for its
  command byte, one per length byte and one for the body; ``_sock_recv`` serves them from one
  ``recv`` of up to 64 KiB (``_sock_close`` forgets the buffer), and ``read_packet`` /
  ``read_failed`` stand for the ``_packet_read`` / ``_loop_rc_handle`` pair that ``loop_read``
  runs once per wake-up;
* call ``on_message`` directly (``_handle_on_message``), skipping paho's per-filter callback walk
  the gateway never uses, and drop the TCP connection so that the broker resends what is
  unacknowledged (``drop_connection``).

``CONTRACT`` lists every private name and signature used here; ``ClientMode.start`` calls
``CONTRACT.require()``. The range in ``SUPPORTED`` is the one in pyproject.toml.
"""

from __future__ import annotations

import ssl
import struct

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.libcompat import Contract

SUPPORTED = ">=2.0,<2.3"
_RECV_CHUNK = 65536
_log = structlog.get_logger("gateway.adapters.mqtt")


class CompatClient(paho.Client):
    """paho's ``Client`` with the QoS 2 PUBREC held back until ``ack()``, reads buffered, and
    ``on_message`` called directly.

    Bytes left in the read buffer do not make the socket readable: the reader asks
    ``has_buffered()`` before it waits again."""

    _defer_pubrec = False
    _deferred_mid = -1
    _rbuf = b""
    _rpos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(_RECV_CHUNK)
            if len(data) <= bufsize:
                return data
            buf, pos = self._rbuf, self._rpos = data, 0
        end = self._rpos = min(pos + bufsize, len(buf))
        return buf[pos:end]

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def has_buffered(self) -> bool:
        """Bytes received but not parsed yet, here or (TLS) decrypted inside the SSL object."""
        if self._rpos < len(self._rbuf):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def read_packet(self) -> MQTTErrorCode:
        """Read (part of) one packet and handle it, as one step of ``loop_read``."""
        return self._packet_read()

    def read_failed(self, rc: MQTTErrorCode) -> None:
        """What ``loop_read`` does after a failed read: close, and report the disconnection."""
        self._loop_rc_handle(rc)

    def ping_outstanding(self) -> bool:
        """A PINGREQ was sent and its PINGRESP has not come yet."""
        return bool(self._ping_t > 0)

    def close_socket(self) -> None:
        """Close the connection at once, without DISCONNECT."""
        self._sock_close()

    def drop_connection(self) -> None:
        """Close the TCP connection without DISCONNECT (which could end the session) and report
        it as lost, so that ``on_disconnect`` runs and the broker resends what is unacknowledged."""
        self._sock_close()
        self._state = paho._ConnectionState.MQTT_CS_CONNECTION_LOST
        self._do_on_disconnect(packet_from_broker=False, v1_rc=MQTTErrorCode.MQTT_ERR_CONN_LOST)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            try:
                on_message(self, self._userdata, message)
            except Exception:  # noqa: BLE001 - a bug of ours must not end the connection's read loop
                _log.exception("mqtt.on_message_failed", mid=message.mid)

    def _send_pubrec(self, mid: int) -> MQTTErrorCode:
        if self._defer_pubrec:
            self._deferred_mid = mid
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._send_pubrec(mid)

    def _handle_publish(self) -> MQTTErrorCode:
        qos = (self._in_packet["command"] & 0x06) >> 1
        if qos != 2 or not self._manual_ack:
            return super()._handle_publish()
        self._defer_pubrec, self._deferred_mid = True, -1
        try:
            rc = super()._handle_publish()
        finally:
            self._defer_pubrec = False
        with self._in_message_mutex:
            message = self._in_messages.pop(self._deferred_mid, None)
        if message is not None:
            self._handle_on_message(message)
        return rc

    def _handle_pubrel(self) -> MQTTErrorCode:
        if not self._manual_ack:
            return super()._handle_pubrel()
        (mid,) = struct.unpack("!H", bytes(self._in_packet["packet"][:2]))
        return self._send_pubcomp(mid)

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        if self._manual_ack and qos == 2:
            return super()._send_pubrec(mid)
        return super().ack(mid, qos)


def raw_topic(message: paho.MQTTMessage) -> bytes:
    """A message's topic as received (``message.topic`` raises when it is not UTF-8)."""
    return bytes(message._topic)


def _in_packet_fields() -> str | None:
    fields = paho.Client(CallbackAPIVersion.VERSION2)._in_packet
    missing = [key for key in ("command", "packet") if key not in fields]
    return f"Client._in_packet has no {', '.join(missing)}" if missing else None


def _connection_lost_state() -> str | None:
    if hasattr(paho._ConnectionState, "MQTT_CS_CONNECTION_LOST"):
        return None
    return "_ConnectionState.MQTT_CS_CONNECTION_LOST is missing"


CONTRACT = Contract("paho-mqtt", SUPPORTED)
for _name, _params in (
    ("_sock_recv", ("self", "bufsize")),
    ("_sock_close", ("self",)),
    ("_handle_on_message", ("self", "message")),
    ("_send_pubrec", ("self", "mid")),
    ("_send_pubcomp", ("self", "mid")),
    ("_handle_publish", ("self",)),
    ("_handle_pubrel", ("self",)),
    ("_packet_read", ("self",)),
    ("_loop_rc_handle", ("self", "rc")),
    ("_do_on_disconnect", ("self", "packet_from_broker", "v1_rc", "reason", "properties")),
    ("ack", ("self", "mid", "qos")),
):
    CONTRACT.method(paho.Client, _name, _params)
for _name in ("_sock", "_userdata", "_in_packet", "_manual_ack", "_in_message_mutex", "_in_messages", "_ping_t", "_state"):
    CONTRACT.attribute(paho.Client, _name)
CONTRACT.attribute(paho.MQTTMessage, "_topic")
CONTRACT.attribute(paho, "_ConnectionState")
CONTRACT.custom(_connection_lost_state)
CONTRACT.custom(_in_packet_fields)
