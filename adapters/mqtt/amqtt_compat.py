"""Every use of amqtt's private internals, for the embedded broker (``broker.py``), checked at start-up.

amqtt's plugin events are fire-and-forget and its protocol handler acknowledges an inbound QoS 1
PUBLISH as soon as the message is queued, so neither can make the PUBACK wait for an application;
and its per-packet machinery (a task and queues for every message) costs about two thirds of the
broker's time. So the broker goes one level deeper, with two subclasses kept here:

* ``CompatHandler`` (amqtt's ``BrokerProtocolHandler``): its reader loop (``_reader_loop``) hands
  the connection to the gateway's reader (``CompatBroker.read_connection``) and ends the way
  amqtt's own loop does; the inbound QoS 2 flow (``_handle_qos2_message_flow``) holds the PUBREC
  back until the gateway says the message was handled; ``acknowledge``, ``complete_qos2``,
  ``receive_qos2`` and ``close_connection`` write packets and close through amqtt's private
  writer and waiters. Each connection's handler is switched to this class right after amqtt
  created it from the CONNECT packet (``handler.__class__ = CompatHandler``: same object, same
  state, a few methods overridden).
* ``CompatBroker`` (amqtt's ``Broker``): the private steps a connection goes through become
  public hooks (``open_session``, ``session_opened``, ``authenticate``, ``topic_allowed``,
  ``received_qos2``, ``read_connection``); ``fan_out`` and ``retain`` deliver and keep messages
  at once, replacing amqtt's broadcast queue and task (``_broadcast_message``).
* ``packet_handler``/``dispatch_packet`` decode every packet other than PUBLISH with amqtt's
  packet classes and hand it to the handler method amqtt's loop would call; ``stream_read``
  reaches the asyncio ``StreamReader`` inside amqtt's TCP reader adapter.

``CONTRACT`` lists every private name and signature used here; ``BrokerMode.start`` calls
``CONTRACT.require()``. The range in ``SUPPORTED`` is the one in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from functools import partial
from typing import Any

from amqtt.adapters import BufferReader, ReaderAdapter, StreamReaderAdapter
from amqtt.broker import Broker, RetainedApplicationMessage, Server
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import INCOMING
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.session import ApplicationMessage, IncomingApplicationMessage, Session

from gateway.libcompat import Contract

SUPPORTED = ">=0.12,<0.13"

# amqtt's handler method for each packet type a connection may carry after CONNECT (the ones a
# broker never expects, such as CONNACK, are handled by amqtt's methods the way amqtt does)
_HANDLERS = {
    CONNACK: "handle_connack", SUBSCRIBE: "handle_subscribe", UNSUBSCRIBE: "handle_unsubscribe",
    SUBACK: "handle_suback", UNSUBACK: "handle_unsuback", PUBACK: "handle_puback", PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel", PUBCOMP: "handle_pubcomp", PINGREQ: "handle_pingreq", PINGRESP: "handle_pingresp",
    DISCONNECT: "handle_disconnect",
}
HANDLED_TYPES = frozenset((*_HANDLERS, CONNECT))

_writes: set[asyncio.Task[None]] = set()  # PUBACKs being written, connections being closed
_connection: contextvars.ContextVar[tuple[CompatBroker, Any] | None] = contextvars.ContextVar("mqtt_broker_connection", default=None)


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _writes.add(task)
    task.add_done_callback(_writes.discard)


class CompatHandler(BrokerProtocolHandler):
    """Reads with the gateway's reader and acknowledges inbound QoS 1/2 messages only when the
    gateway says they were handled."""

    async def _reader_loop(self) -> None:
        current = _connection.get()
        assert current is not None and self._reader_ready is not None
        broker, session = current
        tasks: deque[asyncio.Task[None]] = deque()
        self._reader_ready.set()
        await broker.read_connection(self, session, tasks)
        # what follows is what amqtt's own reader loop does when it ends
        while tasks:
            tasks.popleft().cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    def _gw_pending(self) -> dict[int, asyncio.Future[bool]]:
        pending = self.__dict__.get("_gw_acks")
        if pending is None:
            pending = self.__dict__["_gw_acks"] = {}
        return pending

    def settle(self, packet_id: int | None) -> Callable[[bool], None]:
        """What to call with the verdict on the inbound QoS 2 message ``packet_id``."""
        fut = self.__dict__.get("_gw_acks", {}).get(packet_id)

        def done(ok: bool) -> None:
            if fut is not None and not fut.done():
                fut.set_result(ok)

        return done

    async def _wait_handled(self, app_message: Any) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gw_pending()[app_message.packet_id] = fut
        try:
            await self.session.delivered_message_queue.put(app_message)
            return await fut
        finally:
            self._gw_pending().pop(app_message.packet_id, None)

    def acknowledge(self, packet_id: int, ok: bool) -> None:
        """PUBACK an inbound QoS 1 message once its app returned, unless the connection ended
        meanwhile (the device then resends it on its next session)."""
        if ok and not self._reader_stopped.is_set():
            _spawn(self._send_packet(PubackPacket.build(packet_id)))

    def receive_qos2(self, topic: str, payload: bytes, packet_id: int | None, dup: bool, retain: bool) -> Awaitable[None]:
        """amqtt's four-packet flow for an inbound QoS 2 PUBLISH (the PUBREC held back, see
        ``_handle_qos2_message_flow``)."""
        return self.handle_publish(PublishPacket.build(topic, payload, packet_id, dup, 2, retain))

    async def _handle_qos2_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING:
            await super()._handle_qos2_message_flow(app_message)
            return
        if not await self._wait_handled(app_message):
            return
        await self.complete_qos2(app_message.packet_id, app_message)

    async def complete_qos2(self, packet_id: int, app_message: Any = None) -> None:
        """The rest of an inbound QoS 2 flow once the message counts as received: PUBREC,
        wait for PUBREL, PUBCOMP."""
        pubrec = PubrecPacket.build(packet_id)
        await self._send_packet(pubrec)
        if app_message is not None:
            app_message.pubrec_packet = pubrec
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        old = self._pubrel_waiters.get(packet_id)
        if old is not None and not old.done():
            old.cancel()
        self._pubrel_waiters[packet_id] = waiter
        try:
            pubrel = await waiter
        except asyncio.CancelledError:
            return
        finally:
            self._pubrel_waiters.pop(packet_id, None)
        pubcomp = PubcompPacket.build(packet_id)
        await self._send_packet(pubcomp)
        if app_message is not None:
            app_message.pubrel_packet = pubrel
            app_message.pubcomp_packet = pubcomp

    def close_connection(self) -> None:
        """End this device's connection (its unacknowledged messages come again on the next)."""
        if not self._reader_stopped.is_set() and self.writer is not None:
            _spawn(self.writer.close())


class CompatBroker(Broker):
    """amqtt's ``Broker`` with its private per-connection steps turned into public hooks, and
    messages delivered to subscribers at once (``fan_out``)."""

    # -- hooks, for the gateway's broker to implement ------------------------------------------
    async def open_session(self, start: Callable[[], Awaitable[tuple[Any, Session]]], writer: Any,
                           remote_address: str, remote_port: int) -> tuple[Any, Session]:
        """Wait for the CONNECT (``start`` is amqtt's step) and return amqtt's handler and session."""
        raise NotImplementedError

    def session_opened(self, session: Session) -> None:
        """The CONNECT was read; the session is about to be served."""
        raise NotImplementedError

    async def authenticate(self, session: Session) -> bool:
        raise NotImplementedError

    async def topic_allowed(self, session: Session, topic: str, action: Action) -> bool:
        raise NotImplementedError

    async def read_connection(self, handler: CompatHandler, session: Session, tasks: deque[asyncio.Task[None]]) -> None:
        """Read the connection's packets until it ends, whatever the reason; ``tasks`` collects
        amqtt's handler tasks, cancelled at the end."""
        raise NotImplementedError

    async def received_qos2(self, session: Session, handler: CompatHandler, topic: str, payload: bytes, qos: int,
                            packet_id: int | None, retain: bool, dup: bool, done: Callable[[bool], None]) -> None:
        """An inbound QoS 2 message, its PUBREC held back until ``done(True)``."""
        raise NotImplementedError

    def receive_allowed(self, target: Session, topic: str) -> bool:
        """May ``target`` receive a message on ``topic`` (asked per delivery)."""
        raise NotImplementedError

    def delivery_failed(self, error: BaseException) -> None:
        """A delivery to a subscriber raised."""
        raise NotImplementedError

    # -- amqtt's private steps, forwarded to the hooks -------------------------------------------
    async def _handle_client_session(
        self, reader: Any, writer: Any, client_session: Any, handler: Any, server: Any, listener_name: str
    ) -> None:
        if type(handler) is BrokerProtocolHandler:
            handler.__class__ = CompatHandler
        _connection.set((self, client_session))  # inherited by the reader task amqtt starts below
        self.session_opened(client_session)
        await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        start = partial(super()._initialize_client_session, reader, writer, remote_address, remote_port)
        return await self.open_session(start, writer, remote_address, remote_port)

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        return await self.authenticate(session)

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        return await self.topic_allowed(session, topic, action)

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: asyncio.Future[Any]) -> bool:
        # amqtt's per-client loop hands over the QoS 2 messages here, after its own flow
        app_message: ApplicationMessage | None = wait_deliver.result()
        if app_message is None:
            return True
        packet = app_message.publish_packet
        await self.received_qos2(client_session, handler, app_message.topic, bytes(app_message.data), app_message.qos,
                                 app_message.packet_id, bool(packet and packet.retain_flag), bool(packet and packet.dup_flag),
                                 handler.settle(app_message.packet_id))
        return True

    async def _broadcast_message(
        self, session: Any, topic: str | None, data: bytes | bytearray | None, force_qos: int | None = None
    ) -> None:
        # amqtt calls this for wills (and its plugins' broadcasts); it would queue them for its
        # broadcast task. Without a QoS amqtt delivers at each subscription's own: the highest
        # QoS, which fan_out lowers to the subscription's.
        if topic is not None and data is not None:
            self.fan_out(session, topic, bytes(data), 2 if force_qos is None else force_qos)

    # -- delivery ----------------------------------------------------------------------------
    def fan_out(self, source: Any, topic: str, data: bytes, qos: int) -> None:
        """Deliver a message to the MQTT subscribers whose filters match, at once.

        The rules are those of amqtt's broadcast task, which this replaces (one queue hop and
        a task per message fewer), except the QoS: each subscriber gets the lower of the
        message's and its subscription's, as MQTT 3.1.1 (3.8.4) requires; amqtt upgraded.
        """
        deliveries = self._tasks_queue
        while deliveries and deliveries[0].done():
            task = deliveries.popleft()
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self.delivery_failed(error)
        for topic_filter, subscribers in self._subscriptions.items():
            if not self._matches(topic, topic_filter):
                continue
            for target, granted in subscribers:
                if not self.receive_allowed(target, topic):
                    continue
                level = min(qos, granted)
                if target.transitions.state != "connected":
                    # kept for a persistent session that is away (MQTT 3.1.2.4), except QoS 0
                    # and anonymous ones, as amqtt does
                    if level and not target.clean_session and not target.is_anonymous:
                        target.retained_messages.put_nowait(RetainedApplicationMessage(source, topic, data, level))
                    continue
                handler = self._get_handler(target)
                if handler is not None:
                    deliveries.append(asyncio.ensure_future(handler.mqtt_publish(topic, data, level, retain=False)))

    def retain(self, source: Any, topic: str, data: bytes, qos: int) -> None:
        """Keep (or, for an empty payload, forget) the topic's retained message (MQTT 3.3.1.3)."""
        if data:
            self._retained_messages[topic] = RetainedApplicationMessage(source, topic, data, qos)
        else:
            self._retained_messages.pop(topic, None)

    def listening_sockets(self) -> Iterator[tuple[str, Any]]:
        """``(listener name, socket)`` for every socket amqtt listens on."""
        for name, server in self._servers.items():
            for sock in getattr(server.instance, "sockets", ()) or ():
                yield name, sock


def stream_read(reader: ReaderAdapter) -> Callable[[int], Awaitable[bytes]] | None:
    """The ``read`` of the asyncio ``StreamReader`` inside amqtt's TCP/TLS reader adapter
    (whatever has arrived, up to n bytes); ``None`` for any other adapter."""
    if isinstance(reader, StreamReaderAdapter):
        return reader._reader.read
    return None


async def dispatch_packet(handler: Any, first: int, body: bytes, tasks: deque[asyncio.Task[None]]) -> None:
    """Decode a packet other than PUBLISH with amqtt's classes and run amqtt's handler method
    for it, as amqtt's reader loop does (CONNECT awaited, the others as tasks)."""
    kind = first >> 4
    fixed = MQTTFixedHeader(kind, first & 0x0F, len(body))
    try:
        packet = await packet_class(fixed).from_stream(BufferReader(body), fixed_header=fixed)
    except MQTTError:
        return  # amqtt discards a packet its classes cannot decode and reads on
    if kind == CONNECT:
        await handler.handle_connect(packet)  # a second CONNECT: amqtt ends the session
    else:
        tasks.append(asyncio.get_running_loop().create_task(getattr(handler, _HANDLERS[kind])(packet)))


def _application_message_fields() -> str | None:
    message = IncomingApplicationMessage(1, "t", 1, b"", False)
    missing = [name for name in ("direction", "packet_id", "publish_packet", "topic", "data", "qos",
                                 "pubrec_packet", "pubrel_packet", "pubcomp_packet") if not hasattr(message, name)]
    return f"IncomingApplicationMessage has no {', '.join(missing)}" if missing else None


CONTRACT = Contract("amqtt", SUPPORTED)
_params: tuple[str, ...]
for _name, _params in (
    ("_handle_client_session", ("self", "reader", "writer", "client_session", "handler", "server", "listener_name")),
    ("_initialize_client_session", ("self", "reader", "writer", "remote_address", "remote_port")),
    ("_authenticate", ("self", "session", "_")),
    ("_topic_filtering", ("self", "session", "topic", "action")),
    ("_handle_message_delivery", ("self", "client_session", "handler", "wait_deliver")),
    ("_broadcast_message", ("self", "session", "topic", "data", "force_qos")),
    ("_matches", ("self", "topic", "a_filter")),
    ("_get_handler", ("self", "session")),
    ("external_connected", ("self", "reader", "writer", "listener_name")),
):
    CONTRACT.method(Broker, _name, _params)
for _name in ("_tasks_queue", "_subscriptions", "_retained_messages", "_servers"):
    CONTRACT.attribute(Broker, _name)
CONTRACT.attribute(Server, "instance")
for _name, _params in (
    ("_reader_loop", ("self",)),
    ("_handle_qos2_message_flow", ("self", "app_message")),
    ("_send_packet", ("self", "packet")),
    ("handle_connection_closed", ("self",)),
    ("handle_publish", ("self", "publish_packet")),
    ("handle_connect", ("self", "connect")),
    ("mqtt_publish", ("self", "topic", "data", "qos", "retain", "ack_timeout")),
    ("stop", ("self",)),
):
    CONTRACT.method(BrokerProtocolHandler, _name, _params)
for _name in _HANDLERS.values():
    CONTRACT.attribute(BrokerProtocolHandler, _name)
for _name in ("_reader_ready", "_reader_stopped", "_pubrel_waiters", "reader", "writer", "session"):
    CONTRACT.attribute(BrokerProtocolHandler, _name)
CONTRACT.attribute(StreamReaderAdapter, "_reader")
for _name in ("attributes", "client_id", "username", "remote_address", "remote_port", "delivered_message_queue", "retained_messages",
              "transitions", "is_anonymous", "clean_session", "keep_alive"):
    CONTRACT.attribute(Session, _name)
CONTRACT.custom(_application_message_fields)
