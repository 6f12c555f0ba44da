"""Broker mode: an embedded amqtt broker whose PUBLISH handling feeds the router.

amqtt's plugin events are fire-and-forget and its protocol handler acknowledges an inbound
QoS 1 PUBLISH as soon as the message is queued, so neither can make the PUBACK wait for an
application; and its per-packet machinery (tasks and queues for every message) cost about two
thirds of the broker's time. This module goes one level deeper, with two narrow subclasses:

* ``_Handler`` (amqtt's ``BrokerProtocolHandler``) reads each connection with the gateway's
  own reader (``broker_reader``): QoS 0 and 1 PUBLISHes are checked and routed as they are
  decoded, everything else goes to amqtt's handler methods. A QoS 1 message gets its PUBACK
  only when the routed app returned normally; for QoS 2 the PUBREC is held back the same way
  (then PUBREL/PUBCOMP as usual). A failed message stays unacknowledged while the
  dispatcher runs it again; after its last attempt it is dead-lettered or the device's
  connection is closed (``close_connection``) so that the device resends it.
* ``_Broker`` (amqtt's ``Broker``): every accepted PUBLISH is routed to the gateway and fanned
  out to MQTT subscribers at once (``accept``, ``fan_out``); authentication and ACL come from
  ``access``; every reader waits on one gate that closes while a route's backlog is full
  (backpressure towards the devices; a route full of QoS 0 messages overflows after its
  ``drop_after`` and drops them instead, so a device's PINGREQ behind them is still answered).

What the reader enforces that amqtt 0.12 does not:

* Keep-alive: amqtt read each packet under a timeout of the client's keep-alive and then
  ignored the timeout, so a device that vanished without closing its TCP connection kept its
  session (and never had its will published). The reader ends such a connection after one and
  a half times the keep-alive (MQTT 3.1.1, 3.1.2.10).
* Topics: a PUBLISH topic with a wildcard (amqtt dropped the packet and kept the connection),
  that is not UTF-8 (amqtt routed it as the text ``"b'...'"``), empty or starting with ``$``
  ends the connection, as does a malformed packet, as MQTT requires.

Each connection's handler is switched to ``_Handler`` right after amqtt created it from the
CONNECT packet (``handler.__class__ = _Handler``: same object, same state, a few methods
overridden). That and the private methods overridden here tie this module to the amqtt minor
version pinned in pyproject.toml; ``tests/test_mqtt_broker.py`` covers each of them.

A device that reconnects while its unacknowledged message is still being handled resends it
(DUP flag, same packet id): that copy is not routed again but acknowledged when the running
instance ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import math
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import INCOMING
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrec import PubrecPacket

from gateway.errors import StartupError
from gateway.schema import parse_listen

from .access import USER, Access
from .broker_reader import BadPacket, InvalidPublish, PacketTooLarge, chunk_source, read_packets
from .dispatch import Dispatcher, message_event
from .events import Outgoing
from .exhausted import Exhausted
from .websocket import EXTERNAL_LISTENER, MqttOverWebSocket

if TYPE_CHECKING:
    from .adapter import MqttAdapter


_acks: set[asyncio.Task[None]] = set()  # PUBACKs being written
_connection: contextvars.ContextVar[tuple[_Broker, Any] | None] = contextvars.ContextVar("mqtt_broker_connection", default=None)


class _Handler(BrokerProtocolHandler):
    """Reads with the gateway's reader and acknowledges inbound QoS 1/2 messages only when the
    gateway says they were handled."""

    async def _reader_loop(self) -> None:
        current = _connection.get()
        assert current is not None and self._reader_ready is not None
        broker, session = current
        mode = broker.mode
        tasks: deque[asyncio.Task[None]] = deque()
        publish = partial(broker.publish_from, session, self)
        refuse = partial(broker.refuse_oversized, session, self)
        self._reader_ready.set()
        try:
            limit = mode.max_packet
            await read_packets(self, chunk_source(self.reader, limit), publish, refuse, mode.gate, session.keep_alive or None, limit, tasks)
        except TimeoutError:
            mode.log.info("mqtt.keepalive_expired", client_id=session.client_id, timeout_s=session.keep_alive,
                          why="no packet from the client within 1.5 x its keep-alive; connection closed")
        except InvalidPublish as exc:
            mode.dispatcher.count("invalid")
            mode.log.warning("mqtt.invalid_publish", client_id=session.client_id, topic=repr(exc.raw_topic[:100]),
                             why=f"{exc}; closing the connection")
        except PacketTooLarge as exc:
            mode.dispatcher.count("oversized")
            mode.log.warning("mqtt.packet_too_large", client_id=session.client_id, max_payload=mode.config.max_payload,
                             why=f"{exc}; closing the connection without reading it (only a PUBLISH is read past and dropped)")
        except BadPacket as exc:
            mode.log.warning("mqtt.protocol_error", client_id=session.client_id, why=f"{exc}; closing the connection")
        except asyncio.CancelledError:
            pass  # amqtt's stop() cancels the reader and waits for _reader_stopped below
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the device dropped the connection: handled as such below (the will is published)
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

    async def _wait_handled(self, app_message: Any) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gw_pending()[app_message.packet_id] = fut
        try:
            await self.session.delivered_message_queue.put(app_message)  # type: ignore[union-attr]
            return await fut
        finally:
            self._gw_pending().pop(app_message.packet_id, None)

    def acknowledge(self, packet_id: int, ok: bool) -> None:
        """PUBACK an inbound QoS 1 message once its app returned, unless the connection ended
        meanwhile (the device then resends it on its next session)."""
        if ok and not self._reader_stopped.is_set():
            task = asyncio.get_running_loop().create_task(self._send_packet(PubackPacket.build(packet_id)))
            _acks.add(task)
            task.add_done_callback(_acks.discard)

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
            task = asyncio.get_running_loop().create_task(self.writer.close())
            _acks.add(task)
            task.add_done_callback(_acks.discard)


class _Broker(Broker):
    mode: BrokerMode

    async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, handler: Any, server: Any, listener_name: str) -> None:
        if type(handler) is BrokerProtocolHandler:
            handler.__class__ = _Handler
        _connection.set((self, client_session))  # inherited by the reader task amqtt starts below
        if client_session.keep_alive > 0:  # the reader waits exactly this long for the next packet
            client_session.keep_alive = math.ceil(client_session.keep_alive * 1.5)
        await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        # amqtt waits for ever for a CONNECT, and leaves the connection open when the first
        # packet is not one: a client that sends nothing, or garbage, would hold it
        try:
            async with asyncio.timeout(self.mode.config.connect_timeout):
                handler, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
            # amqtt hands back a persistent session's old object, with the address of its last
            # connection: logins are checked and throttled by the address of this one
            session.remote_address, session.remote_port = remote_address, remote_port
            return handler, session
        except (TimeoutError, AMQTTError, NoDataError) as exc:
            why = "no complete CONNECT in time" if isinstance(exc, TimeoutError) else "the first packet is not a valid CONNECT"
            self.mode.log.info("mqtt.connection_refused", client=f"{remote_address}:{remote_port}", why=f"{why}; closed")
            try:
                await writer.close()
            except Exception:  # noqa: BLE001, S110 - gone already
                pass
            raise AMQTTError(why) from None

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        return await self.mode.access.authenticate(session)

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        return await self.mode.access.permitted(session, topic, action)

    def publish_from(self, session: Any, handler: Any, topic: str, payload: bytes, qos: int, packet_id: int | None,
                     retain: bool, dup: bool) -> Coroutine[Any, Any, None] | None:
        """A PUBLISH the reader decoded. QoS 0 and 1 are accepted at once (a QoS 1 message is
        acknowledged when its app returned), or after ``acl_app`` answered (returned for the
        reader to await); QoS 2 goes through amqtt's four-packet flow, with ``_Handler``
        holding the PUBREC back, returned for the reader to run."""
        if qos == 2:
            return handler.handle_publish(PublishPacket.build(topic, payload, packet_id, dup, qos, retain))  # type: ignore[no-any-return]
        done = _ignore if packet_id is None else partial(handler.acknowledge, packet_id)
        allowed = self.mode.access.cached(session, topic, Action.PUBLISH)
        if allowed is None:
            return self._accept_when_permitted(session, handler, topic, payload, qos, packet_id, retain, dup, done)
        self.accept(session, handler, topic, payload, qos, packet_id, retain, dup, done, allowed)
        return None

    async def _accept_when_permitted(self, session: Any, handler: Any, topic: str, payload: bytes, qos: int, packet_id: int | None,
                                     retain: bool, dup: bool, done: Callable[[bool], None]) -> None:
        allowed = await self.mode.access.permitted(session, topic, Action.PUBLISH)
        self.accept(session, handler, topic, payload, qos, packet_id, retain, dup, done, allowed)

    def refuse_oversized(self, session: Any, handler: Any, topic: str, qos: int, packet_id: int | None,
                         size: int) -> Coroutine[Any, Any, None] | None:
        """A PUBLISH longer than any this broker accepts, read past without being kept: it is
        acknowledged and dropped like a payload just over ``max_payload``, so that the device
        does not resend it on every reconnect."""
        mode = self.mode
        mode.dispatcher.count("oversized")
        mode.log.warning(
            "mqtt.payload_too_large", client_id=session.client_id, topic=topic, size=size,
            max_payload=mode.config.max_payload, why="refused (acknowledged and dropped, not forwarded)",
        )
        if qos == 1 and packet_id is not None:
            handler.acknowledge(packet_id, True)
        elif qos == 2 and packet_id is not None:
            return handler.complete_qos2(packet_id)  # type: ignore[no-any-return]
        return None

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: asyncio.Future[Any]) -> bool:
        # amqtt's per-client loop hands over the QoS 2 messages here, after its own flow
        app_message = wait_deliver.result()
        if app_message is None:
            return True
        fut = handler.__dict__.get("_gw_acks", {}).get(app_message.packet_id)

        def done(ok: bool) -> None:
            if fut is not None and not fut.done():
                fut.set_result(ok)

        packet = app_message.publish_packet
        allowed = await self.mode.access.permitted(client_session, app_message.topic, Action.PUBLISH)
        self.accept(client_session, handler, app_message.topic, bytes(app_message.data), app_message.qos, app_message.packet_id,
                    bool(packet and packet.retain_flag), bool(packet and packet.dup_flag), done, allowed)
        return True

    def accept(self, session: Any, handler: Any, topic: str, payload: bytes, qos: int, packet_id: int | None, retain: bool,
               dup: bool, done: Callable[[bool], None], allowed: bool) -> None:
        """One PUBLISH from a device, with the ACL's verdict: size check, then fan-out, retain and routing."""
        mode = self.mode
        if not allowed:
            mode.dispatcher.count("denied")
            mode.log.info("mqtt.publish_denied", client_id=session.client_id, username=session.username, topic=topic, qos=qos,
                          why="not allowed by the ACL: dropped" + (" (acknowledged: MQTT 3.1.1 has no negative acknowledgement)" if qos else ""))
            done(True)  # as Mosquitto does
            return
        if len(payload) > mode.config.max_payload:
            mode.dispatcher.count("oversized")
            mode.log.warning(
                "mqtt.payload_too_large", client_id=session.client_id, topic=topic, size=len(payload),
                max_payload=mode.config.max_payload, why="refused (acknowledged and dropped, not forwarded)",
            )
            done(True)
            return
        self.fan_out(session, topic, payload, qos)
        if retain:
            self.retain(session, topic, payload, qos)
        mode.route(session, handler, topic, payload, qos, packet_id, retain, dup, done)

    async def _broadcast_message(self, session: Any, topic: str | None, data: bytes | bytearray | None, force_qos: int | None = None) -> None:
        # amqtt calls this for wills (and its plugins' broadcasts); it would queue them for its
        # broadcast task. Without a QoS amqtt delivers at each subscription's own: the highest
        # QoS, which fan_out lowers to the subscription's.
        if topic is not None and data is not None:
            self.fan_out(session, topic, bytes(data), 2 if force_qos is None else force_qos)

    def fan_out(self, source: Any, topic: str, data: bytes, qos: int) -> None:
        """Deliver a message to the MQTT subscribers whose filters match, at once.

        The rules are those of amqtt's broadcast task, which this replaces (one queue hop and
        a task per message fewer), except the QoS: each subscriber gets the lower of the
        message's and its subscription's, as MQTT 3.1.1 (3.8.4) requires; amqtt upgraded.
        """
        deliveries = self._tasks_queue
        while deliveries and deliveries[0].done():
            _log_failure(deliveries.popleft(), self.mode.log)
        for topic_filter, subscribers in self._subscriptions.items():
            if not self._matches(topic, topic_filter):
                continue
            for target, granted in subscribers:
                if not self.mode.access.table_allows(target, topic, Action.RECEIVE):
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


def _ignore(ok: bool) -> None:
    """QoS 0 has nothing to acknowledge."""


def _log_failure(task: asyncio.Task[Any], log: Any) -> None:
    error = None if task.cancelled() else task.exception()
    if error is not None:
        log.warning("mqtt.delivery_failed", error=f"{type(error).__name__}: {error}")


class BrokerMode:
    """Runs the embedded broker; every PUBLISH it accepts is offered to the router."""

    def __init__(self, adapter: MqttAdapter) -> None:
        self.adapter = adapter
        self.config = cfg = adapter.config
        self.context = adapter.context
        self.log = adapter.context.log
        self.gate = asyncio.Event()
        self.gate.set()
        exhausted = Exhausted(self.context, cfg.retry, self.publish,
                              "left unacknowledged; the device's connection is closed so that it sends the message again")
        self.dispatcher = Dispatcher(self.context, adapter.send_for, self.gate.set, retry=cfg.retry, give_up=exhausted)
        exhausted.dispatcher = self.dispatcher
        # the longest PUBLISH that could still be accepted (topic length, the longest topic,
        # packet id, payload); anything longer is refused unread
        self.max_packet = 2 + 65535 + 2 + cfg.max_payload
        self.stopping = False
        self.inflight: dict[tuple[Any, Any], tuple[tuple[str, bytes], list[Any]]] = {}
        self.broker: _Broker | None = None
        self._addresses: list[str] = []
        self.access = Access(cfg, self.context)
        self._listeners: dict[str, dict[str, Any]] = {}
        for kind, items in (("tcp", cfg.listen), ("tls", cfg.tls_listen), ("ws", cfg.ws_listen)):
            for i, text in enumerate(items):
                addr = parse_listen(text)
                listener: dict[str, Any] = {"type": "ws" if kind == "ws" else "tcp", "bind": f"{addr.host}:{addr.port}"}
                if kind == "tls":
                    assert cfg.tls is not None
                    listener.update(ssl=True, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
                    if cfg.tls.ca_file:
                        listener["cafile"] = cfg.tls.ca_file
                self._listeners[f"{kind}-{i}"] = listener

    async def start(self) -> None:
        listeners = dict(self._listeners)
        if not listeners and not self.config.ws_path:
            raise StartupError("mqtt: broker mode needs at least one listener (listen, tls_listen, ws_listen or ws_path)")
        names = {}
        if listeners:
            first = next(iter(listeners))
            listeners["default"] = listeners.pop(first)
            names["default"] = first
        if self.config.ws_path:
            # amqtt skips listeners without "bind"; an external one never binds anything
            listeners[EXTERNAL_LISTENER] = {"type": "external", "bind": self.config.ws_path}
        # amqtt logs every connection and session state change at INFO (through `transitions`);
        # the adapter logs what matters itself. A level set explicitly by the user is kept.
        for name in ("amqtt", "transitions"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        broker = _Broker({"listeners": listeners, "plugins": {}, "timeout_disconnect_delay": 0})
        broker.mode = self
        amqtt_log = logging.getLogger("amqtt.broker")
        level = amqtt_log.level
        amqtt_log.setLevel(logging.CRITICAL)  # a failed start is reported once, below, not as a traceback
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps OSError in BrokerError
            cause = exc.__cause__ or exc
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                taken = " or ".join(listener["bind"] for listener in self._listeners.values())
                raise StartupError(
                    f"mqtt: cannot listen on {taken}: address already in use (another MQTT broker, such as "
                    "Mosquitto, may be running there: stop it, or change adapters.mqtt.listen)"
                ) from None
            raise StartupError(f"mqtt: the embedded broker could not start: {cause}") from exc
        finally:
            amqtt_log.setLevel(level)
        self.broker = broker
        if self.config.ws_path:
            app = MqttOverWebSocket(lambda r, w: broker.external_connected(r, w, EXTERNAL_LISTENER), self.log)
            self.context.mounts.add(self.config.ws_path, app, "mqtt", scope_types=("websocket",), required=True)
        for name, server in broker._servers.items():
            kind = names.get(name, name).split("-")[0]
            for sock in getattr(server.instance, "sockets", ()) or ():
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                self._addresses.append(f"{'ws' if kind == 'ws' else 'mqtts' if kind == 'tls' else 'mqtt'}://{shown}:{port}")
        if self.config.ws_path:
            self._addresses.append(f"mount:{self.config.ws_path}")

    async def stop(self, drain: float) -> None:
        # New messages are refused (left unacknowledged) from now on. The gate stays open: a
        # reader parked on a closed gate could miss its cancellation (Python 3.11's wait_for can
        # swallow one that races with a completed read) and hold amqtt's shutdown forever.
        self.stopping = True
        self.gate.set()
        await self.dispatcher.drain(drain)
        if self.broker is not None:
            try:
                await self.broker.shutdown()
            except Exception as exc:  # noqa: BLE001
                self.log.warning("mqtt.broker_shutdown_failed", error=f"{type(exc).__name__}: {exc}")
            self.broker = None
        self.gate.set()

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    # -- called by _Broker ------------------------------------------------------------------
    def route(self, session: Any, handler: Any, topic: str, payload: bytes, qos: int, packet_id: int | None, retain: bool,
              dup: bool, done: Callable[[bool], None]) -> None:
        if self.stopping:
            done(False)  # not acknowledged: the device resends it to the next gateway session
            return
        if qos:
            key = (session.client_id, packet_id)
            running = self.inflight.get(key)
            if running is not None and dup and running[0] == (topic, payload):
                # the device reconnected and resent a message whose instance is still running:
                # acknowledge this copy when that instance ends instead of routing it twice
                running[1].append(done)
                self.dispatcher.count("duplicate")
                return
            waiters = [done]
            self.inflight[key] = ((topic, payload), waiters)

            def finished(ok: bool, key: Any = key, waiters: list[Any] = waiters) -> None:
                if self.inflight.get(key, (None, None))[1] is waiters:
                    del self.inflight[key]
                for waiter in waiters:
                    waiter(ok)

            done = finished
        scope = self.adapter.scope(topic, qos, retain, client_id=session.client_id, username=session.username)
        if session.remote_address is not None:
            scope["client"] = (session.remote_address, session.remote_port)
        user = session.attributes.get(USER)
        if user is not None:
            scope["user"] = user
        self.dispatcher.submit(scope, message_event(topic, payload, qos, retain, dup), done, handler.close_connection)
        if self.dispatcher.blocked:
            self.gate.clear()

    async def publish(self, out: Outgoing, wait: bool) -> None:
        broker = self.broker
        if broker is None:
            raise ConnectionError("the embedded mqtt broker is not running")
        if out.properties:
            self.log.debug("mqtt.properties_ignored", topic=out.topic, why="the embedded broker speaks MQTT 3.1.1")
        broker.fan_out(None, out.topic, out.payload, out.qos)
        if out.retain:
            broker.retain(None, out.topic, out.payload, out.qos)

