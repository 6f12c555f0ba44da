"""Broker mode: an embedded amqtt broker whose PUBLISH handling feeds the router.

amqtt's plugin events are fire-and-forget and its protocol handler acknowledges an inbound
QoS 1 PUBLISH as soon as the message is queued, so neither can make the PUBACK wait for an
application. This module goes one level deeper, with two narrow subclasses:

* ``_Handler`` (amqtt's ``BrokerProtocolHandler``): for an *inbound* QoS 1 message it queues the
  message together with a future and sends PUBACK only when the future says the routed app
  returned normally; for QoS 2 it holds the PUBREC back the same way (then PUBREL/PUBCOMP as
  usual). A failed message stays unacknowledged, so the device resends it on its next session.
* ``_Broker`` (amqtt's ``Broker``): its per-client delivery step routes each accepted PUBLISH
  to the gateway (and still fans it out to MQTT subscribers at once), authentication and ACL
  come from the gateway config, and every client's reader waits on one gate that closes while
  a route's bound is reached (backpressure towards the devices).

* Keep-alive: amqtt 0.12's broker reads each packet under a timeout of the client's keep-alive
  and then ignores the timeout, so a device that vanished without closing its TCP connection
  kept its session (and never had its will published). ``_Handler`` ends such a connection,
  and ``_Broker`` sets the timeout to one and a half times the keep-alive (MQTT 3.1.1,
  3.1.2.10).

* ``_CheckedPublishPacket`` replaces amqtt's PUBLISH packet class in its packet table: a topic
  with a wildcard (amqtt dropped the packet silently and kept the connection) or that is not
  UTF-8 (amqtt routed it as the text ``"b'...'"``) ends the connection, as MQTT requires.

Each connection's handler is switched to ``_Handler`` right after amqtt created it from the
CONNECT packet (``handler.__class__ = _Handler``: same object, same state, two methods
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
import hmac
import logging
import math
from struct import unpack
from typing import TYPE_CHECKING, Any

import amqtt.mqtt
from amqtt.broker import Broker
from amqtt.codecs_amqtt import decode_packet_id, read_or_raise
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, NoDataError
from amqtt.mqtt.packet import PUBLISH
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import INCOMING
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.publish import PublishPacket, PublishVariableHeader
from amqtt.mqtt.pubrec import PubrecPacket

from gateway.apps import import_string
from gateway.errors import StartupError
from gateway.schema import parse_listen

from .dispatch import Dispatcher, message_event
from .events import Outgoing
from .topics import TopicMatcher
from .websocket import EXTERNAL_LISTENER, MqttOverWebSocket

if TYPE_CHECKING:
    from .adapter import MqttAdapter


_closing: set[asyncio.Task[None]] = set()  # connections being closed for an expired keep-alive
_connection: contextvars.ContextVar[tuple[BrokerMode, Any] | None] = contextvars.ContextVar("mqtt_broker_connection", default=None)


class InvalidPublish(ValueError):
    """A PUBLISH whose topic MQTT forbids; amqtt's reader closes the connection on it."""


class _CheckedPublishHeader(PublishVariableHeader):
    """Reads the topic as raw bytes so a topic that is not UTF-8 (amqtt would route it as the
    text ``"b'...'"``) or holds a wildcard (amqtt would silently drop it and keep the
    connection) ends that connection instead, as MQTT requires, and is counted and logged."""

    __slots__ = ()

    @classmethod
    async def from_stream(cls, reader: Any, fixed_header: Any) -> Any:
        (size,) = unpack("!H", await read_or_raise(reader, 2))
        raw = await read_or_raise(reader, size) if size else b""
        try:
            topic = raw.decode("utf-8")
        except UnicodeDecodeError:
            topic, problem = "", "PUBLISH topic is not valid UTF-8"
        else:
            problem = (
                "empty PUBLISH topic" if not topic
                else "wildcard ('+' or '#') in a PUBLISH topic" if ("+" in topic or "#" in topic)
                else "PUBLISH to a '$' topic (reserved for the broker)" if topic.startswith("$")
                else None
            )
        if problem:
            current = _connection.get()
            if current is not None:
                mode, session = current
                mode.dispatcher.count("invalid")
                mode.log.warning("mqtt.invalid_publish", client_id=session.client_id, topic=repr(raw[:100]),
                                 why=f"{problem}; closing the connection")
            raise InvalidPublish(problem)
        packet_id = await decode_packet_id(reader) if (fixed_header.flags >> 1) & 0x03 else None
        return cls(topic, packet_id)


class _CheckedPublishPacket(PublishPacket):
    VARIABLE_HEADER = _CheckedPublishHeader


class _GatedReader:
    """A client's reader that waits while the gateway is saturated (backpressure)."""

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self._inner = inner
        self._gate = gate

    async def read(self, n: int = -1) -> bytes:
        if not self._gate.is_set():
            await self._gate.wait()
        return await self._inner.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Handler(BrokerProtocolHandler):
    """Acknowledges inbound QoS 1/2 messages only when the gateway says they were handled, and
    ends connections whose keep-alive expired."""

    def handle_read_timeout(self) -> None:
        # called by amqtt's reader loop, which goes on reading: end the connection as if it
        # had dropped (amqtt then publishes the will) and let the loop be cancelled by that
        if self.__dict__.get("_gw_expired"):
            return
        self.__dict__["_gw_expired"] = True
        current = _connection.get()
        if current is not None:
            mode, session = current
            mode.log.info("mqtt.keepalive_expired", client_id=session.client_id, timeout_s=session.keep_alive,
                          why="no packet from the client within 1.5 x its keep-alive; connection closed")
        task = asyncio.get_running_loop().create_task(self.handle_connection_closed())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

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

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING:
            await super()._handle_qos1_message_flow(app_message)
            return
        if await self._wait_handled(app_message):
            puback = PubackPacket.build(app_message.packet_id)
            await self._send_packet(puback)
            app_message.puback_packet = puback

    async def _handle_qos2_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING:
            await super()._handle_qos2_message_flow(app_message)
            return
        if not await self._wait_handled(app_message):
            return
        packet_id = app_message.packet_id
        pubrec = PubrecPacket.build(packet_id)
        await self._send_packet(pubrec)
        app_message.pubrec_packet = pubrec
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        old = self._pubrel_waiters.get(packet_id)
        if old is not None and not old.done():
            old.cancel()
        self._pubrel_waiters[packet_id] = waiter
        try:
            app_message.pubrel_packet = await waiter
        except asyncio.CancelledError:
            return
        finally:
            self._pubrel_waiters.pop(packet_id, None)
        pubcomp = PubcompPacket.build(packet_id)
        await self._send_packet(pubcomp)
        app_message.pubcomp_packet = pubcomp


class _Broker(Broker):
    mode: BrokerMode

    async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, handler: Any, server: Any, listener_name: str) -> None:
        if type(handler) is BrokerProtocolHandler:
            handler.__class__ = _Handler
        _connection.set((self.mode, client_session))  # inherited by the reader task amqtt starts below
        gated = _GatedReader(reader, self.mode.gate)
        if client_session.keep_alive > 0:  # amqtt waits exactly this long for each packet
            client_session.keep_alive = math.ceil(client_session.keep_alive * 1.5)
        await super()._handle_client_session(gated, writer, client_session, handler, server, listener_name)

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        # amqtt waits for ever for a CONNECT, and leaves the connection open when the first
        # packet is not one: a client that sends nothing, or garbage, would hold it
        try:
            async with asyncio.timeout(self.mode.config.connect_timeout):
                return await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        except (TimeoutError, AMQTTError, NoDataError) as exc:
            why = "no complete CONNECT in time" if isinstance(exc, TimeoutError) else "the first packet is not a valid CONNECT"
            self.mode.log.info("mqtt.connection_refused", client=f"{remote_address}:{remote_port}", why=f"{why}; closed")
            try:
                await writer.close()
            except Exception:  # noqa: BLE001, S110 - gone already
                pass
            raise AMQTTError(why) from None

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        return await self.mode.authenticate(session)

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        return self.mode.allowed(session, topic, action)

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: asyncio.Future[Any]) -> bool:
        app_message = wait_deliver.result()
        if app_message is None:
            return True
        pending = handler.__dict__.get("_gw_acks", {})
        fut = pending.get(app_message.packet_id) if app_message.packet_id is not None else None

        def done(ok: bool) -> None:
            if fut is not None and not fut.done():
                fut.set_result(ok)

        topic = app_message.topic
        if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
            self.mode.dispatcher.count("invalid")
            self.mode.log.warning(
                "mqtt.invalid_publish", client_id=client_session.client_id, topic=topic,
                why="empty, wildcard or '$' topic in PUBLISH; closing the connection",
            )
            done(False)
            await handler.handle_connection_closed()  # returning False would only stop amqtt's loop, not the connection
            return True
        if not await self._topic_filtering(client_session, topic, Action.PUBLISH):
            self.mode.log.info("mqtt.publish_denied", client_id=client_session.client_id, username=client_session.username, topic=topic)
            done(True)  # MQTT 3.1.1 has no negative PUBACK: acknowledged and dropped, as Mosquitto does
            return True
        if len(app_message.data) > self.mode.config.max_payload:
            self.mode.dispatcher.count("oversized")
            self.mode.log.warning(
                "mqtt.payload_too_large", client_id=client_session.client_id, topic=topic, size=len(app_message.data),
                max_payload=self.mode.config.max_payload, why="refused (acknowledged and dropped, not forwarded)",
            )
            done(True)
            return True
        retain = bool(app_message.publish_packet and app_message.publish_packet.retain_flag)
        await self._broadcast_message(client_session, topic, app_message.data)
        if retain:
            await self.retain_message(client_session, topic, app_message.data, app_message.qos)
        self.mode.route(client_session, app_message, retain, done)
        return True


class BrokerMode:
    """Runs the embedded broker; every PUBLISH it accepts is offered to the router."""

    def __init__(self, adapter: MqttAdapter) -> None:
        self.adapter = adapter
        self.config = cfg = adapter.config
        self.context = adapter.context
        self.log = adapter.context.log
        self.gate = asyncio.Event()
        self.gate.set()
        self.dispatcher = Dispatcher(self.context, adapter.send_for, self.gate.set)
        self.stopping = False
        self.inflight: dict[tuple[Any, Any], tuple[tuple[str, bytes], list[Any]]] = {}
        self.broker: _Broker | None = None
        self._addresses: list[str] = []
        self._auth_app: Any = None
        if cfg.auth_app:
            self._auth_app = import_string(cfg.auth_app)
        self._allow_anonymous = cfg.allow_anonymous if cfg.allow_anonymous is not None else not (cfg.users or cfg.auth_app)
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
        # amqtt looks packet classes up in this table on every packet: PUBLISH topics get checked
        amqtt.mqtt.packet_dict[PUBLISH] = _CheckedPublishPacket
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
    def route(self, session: Any, app_message: Any, retain: bool, done: Any) -> None:
        if self.stopping:
            done(False)  # not acknowledged: the device resends it to the next gateway session
            return
        qos = app_message.qos or 0
        dup = bool(app_message.publish_packet and app_message.publish_packet.dup_flag)
        payload = bytes(app_message.data)
        if qos:
            key = (session.client_id, app_message.packet_id)
            running = self.inflight.get(key)
            if running is not None and dup and running[0] == (app_message.topic, payload):
                # the device reconnected and resent a message whose instance is still running:
                # acknowledge this copy when that instance ends instead of routing it twice
                running[1].append(done)
                self.dispatcher.count("duplicate")
                return
            waiters = [done]
            self.inflight[key] = ((app_message.topic, payload), waiters)

            def finished(ok: bool, key: Any = key, waiters: list[Any] = waiters) -> None:
                if self.inflight.get(key, (None, None))[1] is waiters:
                    del self.inflight[key]
                for waiter in waiters:
                    waiter(ok)

            done = finished
        scope = self.adapter.scope(app_message.topic, qos, retain, client_id=session.client_id, username=session.username)
        if session.remote_address is not None:
            scope["client"] = (session.remote_address, session.remote_port)
        event = message_event(app_message.topic, payload, qos, retain, dup)
        self.dispatcher.submit(scope, event, done)
        if self.dispatcher.backlog:
            self.gate.clear()

    async def authenticate(self, session: Any) -> bool:
        username, password = session.username, session.password
        users = self.config.users
        if username is None:
            ok = self._allow_anonymous
        elif username in users:
            ok = password is not None and hmac.compare_digest(str(password).encode(), users[username].password.encode())
        elif self._auth_app is not None:
            try:
                ok = bool(await self._auth_app(session.client_id, username, password))
            except Exception as exc:  # noqa: BLE001
                self.log.error("mqtt.auth_app_failed", client_id=session.client_id, username=username, error=f"{type(exc).__name__}: {exc}")
                ok = False
        else:
            ok = False
        if not ok:
            self.log.info("mqtt.login_refused", client_id=session.client_id, username=username)
        return ok

    def allowed(self, session: Any, topic: str, action: Action) -> bool:
        acl = self.config.acl
        if acl is None:
            return True
        rule = acl.get(session.username) if session.username is not None else None
        if rule is None:
            rule = acl.get("*")
        if rule is None:
            return False
        filters = rule.publish if action == Action.PUBLISH else rule.subscribe
        client_id = session.client_id or ""
        username = session.username or ""
        for pattern in filters:
            allowed = pattern.replace("%u", username).replace("%c", client_id)
            if action == Action.PUBLISH:
                if TopicMatcher(allowed).match_topic(topic) is not None:
                    return True
            elif filter_covers(allowed, topic):
                return True
        return False

    async def publish(self, out: Outgoing, wait: bool) -> None:
        broker = self.broker
        if broker is None:
            raise ConnectionError("the embedded mqtt broker is not running")
        if out.properties:
            self.log.debug("mqtt.properties_ignored", topic=out.topic, why="the embedded broker speaks MQTT 3.1.1")
        await broker._broadcast_message(None, out.topic, out.payload, out.qos)
        if out.retain:
            await broker.retain_message(None, out.topic, out.payload, out.qos)


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether subscribing to ``requested`` stays inside what the filter ``allowed`` permits."""
    a_levels = allowed.split("/")
    r_levels = requested.split("/")
    if requested.startswith("$") and a_levels[0] in ("+", "#"):
        return False
    for i, a in enumerate(a_levels):
        if a == "#":
            return True
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if r == "#":
            return False
        if a == "+":
            continue
        if a != r:
            return False
    return len(r_levels) == len(a_levels)
