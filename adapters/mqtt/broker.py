"""Broker mode: an embedded amqtt broker whose PUBLISH handling feeds the router.

Why amqtt is subclassed rather than used as it comes: amqtt cannot make a PUBACK (or a PUBREC)
wait for the application, so "acknowledged" could not mean "handled"; its per-packet machinery
costs about two thirds of the broker's time; and 0.12 does not enforce the keep-alive or the
PUBLISH topic rules. So the gateway reads each connection itself (``broker_reader``), routes
PUBLISHes as they are decoded and hands the other packets to amqtt's handler methods; every
private name of amqtt this needs is in ``amqtt_compat``, checked when the broker starts.

The behaviour (acknowledgement, backpressure, keep-alive, refused topics, redelivery) is in
docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from amqtt.contexts import Action
from amqtt.errors import AMQTTError, NoDataError

from gateway.errors import StartupError
from gateway.schema import parse_listen

from .access import USER, Access
from .amqtt_compat import CONTRACT, CompatBroker, CompatHandler
from .broker_reader import BadPacket, InvalidPublish, PacketTooLarge, chunk_source, read_packets
from .dispatch import Dispatcher, message_event
from .events import Outgoing
from .exhausted import Exhausted
from .websocket import EXTERNAL_LISTENER, MqttOverWebSocket

if TYPE_CHECKING:
    from .adapter import MqttAdapter


class _Broker(CompatBroker):
    mode: BrokerMode

    def session_opened(self, session: Any) -> None:
        if session.keep_alive > 0:  # the reader waits exactly this long for the next packet
            session.keep_alive = math.ceil(session.keep_alive * 1.5)

    async def open_session(self, start: Callable[[], Awaitable[tuple[Any, Any]]], writer: Any,
                           remote_address: str, remote_port: int) -> tuple[Any, Any]:
        # amqtt waits for ever for a CONNECT, and leaves the connection open when the first
        # packet is not one: a client that sends nothing, or garbage, would hold it
        try:
            async with asyncio.timeout(self.mode.config.connect_timeout):
                handler, session = await start()
            # amqtt hands back a persistent session's old object, with the address of its last
            # connection: logins are checked and throttled by the address of this one
            session.remote_address, session.remote_port = remote_address, remote_port
            return handler, session
        except (TimeoutError, AMQTTError, NoDataError) as exc:
            why = "no complete CONNECT in time" if isinstance(exc, TimeoutError) else "the first packet is not a valid CONNECT"
            self.mode.log.info("mqtt.connection_refused", client=f"{remote_address}:{remote_port}", why=f"{why}; closed")
            try:
                await writer.close()
            except Exception:  # noqa: BLE001 - gone already
                pass
            raise AMQTTError(why) from None

    async def authenticate(self, session: Any) -> bool:
        return await self.mode.access.authenticate(session)

    async def topic_allowed(self, session: Any, topic: str, action: Action) -> bool:
        return await self.mode.access.permitted(session, topic, action)

    def receive_allowed(self, target: Any, topic: str) -> bool:
        return self.mode.access.table_allows(target, topic, Action.RECEIVE)

    def delivery_failed(self, error: BaseException) -> None:
        self.mode.log.warning("mqtt.delivery_failed", error=f"{type(error).__name__}: {error}")

    async def read_connection(self, handler: CompatHandler, session: Any, tasks: deque[asyncio.Task[None]]) -> None:
        mode = self.mode
        publish = partial(self.publish_from, session, handler)
        refuse = partial(self.refuse_oversized, session, handler)
        try:
            limit = mode.max_packet
            source = chunk_source(handler.reader, limit)
            await read_packets(handler, source, publish, refuse, mode.gate, session.keep_alive or None, limit, tasks)
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
            pass  # amqtt's stop() cancels the reader and waits for the end of the loop
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the device dropped the connection: handled as such (the will is published)

    def publish_from(self, session: Any, handler: Any, topic: str, payload: bytes, qos: int, packet_id: int | None,
                     retain: bool, dup: bool) -> Coroutine[Any, Any, None] | None:
        """A PUBLISH the reader decoded. QoS 0 and 1 are accepted at once (a QoS 1 message is
        acknowledged when its app returned), or after ``acl_app`` answered (returned for the
        reader to await); QoS 2 goes through amqtt's four-packet flow, with ``CompatHandler``
        holding the PUBREC back, returned for the reader to run."""
        if qos == 2:
            return handler.receive_qos2(topic, payload, packet_id, dup, retain)
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
            return handler.complete_qos2(packet_id)
        return None

    async def received_qos2(self, session: Any, handler: CompatHandler, topic: str, payload: bytes, qos: int,
                            packet_id: int | None, retain: bool, dup: bool, done: Callable[[bool], None]) -> None:
        allowed = await self.mode.access.permitted(session, topic, Action.PUBLISH)
        self.accept(session, handler, topic, payload, qos, packet_id, retain, dup, done, allowed)

    def accept(self, session: Any, handler: Any, topic: str, payload: bytes, qos: int, packet_id: int | None, retain: bool,
               dup: bool, done: Callable[[bool], None], allowed: bool) -> None:
        """One PUBLISH from a device, with the ACL's verdict: size check, then fan-out, retain and routing."""
        mode = self.mode
        if not allowed:
            mode.dispatcher.count("denied")
            why = "not allowed by the ACL: dropped" + (" (acknowledged: MQTT 3.1.1 has no negative acknowledgement)" if qos else "")
            mode.log.info("mqtt.publish_denied", client_id=session.client_id, username=session.username, topic=topic, qos=qos, why=why)
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


def _ignore(ok: bool) -> None:
    """QoS 0 has nothing to acknowledge."""


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
        CONTRACT.require()
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
        for name, sock in broker.listening_sockets():
            kind = names.get(name, name).split("-")[0]
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._addresses.append(f"{'ws' if kind == 'ws' else 'mqtts' if kind == 'tls' else 'mqtt'}://{shown}:{port}")
        if self.config.ws_path:
            self._addresses.append(f"mount:{self.config.ws_path}")

    async def routes_changed(self) -> None:
        """Nothing to do: the broker resolves each message against the routes as they are."""

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
            except Exception as exc:
                self.log.warning("mqtt.broker_shutdown_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
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

