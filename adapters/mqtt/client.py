"""Client mode: the gateway as a client of an external broker, on paho-mqtt's external loop.

Why paho-mqtt (>= 2) and why its external-loop API
--------------------------------------------------
The acknowledgement must wait for the application, and paho-mqtt is the Python client with
``manual_ack``: with it no PUBACK leaves before ``client.ack(mid, qos)``. Paho normally runs a
network thread; instead this module drives it from asyncio (``loop_read`` when the socket is
readable, ``loop_write`` when paho has bytes to send, ``loop_misc`` once a second for
keep-alive). So every paho callback runs in the event-loop thread: no locks, no
``call_soon_threadsafe`` on the message path, ``ack`` is called where the instance finished,
and backpressure is exact — when a route's bound is reached the socket's reader is removed and
the broker (then the TCP window) holds the messages. Only the blocking TCP/TLS connect of
(re)connects runs in a worker thread.

QoS 2: paho sends PUBREC as soon as a QoS 2 PUBLISH arrives, which would hand the message over
before the app ran. ``CompatClient`` defers the PUBREC to ``ack()`` (and answers PUBREL with
PUBCOMP), so a QoS 2 message the app did not handle is redelivered like a QoS 1 one (at least
once). That and the buffered reads need paho's private methods: all of them are in
``paho_compat``, checked when client mode starts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.errors import StartupError

from .config import broker_url
from .dispatch import Dispatcher, message_event
from .events import Outgoing
from .exhausted import Exhausted
from .paho_compat import CONTRACT, CompatClient, raw_topic

if TYPE_CHECKING:
    from .adapter import MqttAdapter

_ids = itertools.count(1)
_READ_BATCH = 64

# MQTT 5 publish properties: paho attribute name <-> event key
_PROPS = {
    "PayloadFormatIndicator": "payload_format_indicator",
    "MessageExpiryInterval": "message_expiry_interval",
    "ContentType": "content_type",
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "UserProperty": "user_properties",
    "SubscriptionIdentifier": "subscription_identifier",
    "TopicAlias": "topic_alias",
}
_PROPS_BACK = {v: k for k, v in _PROPS.items()}


def properties_to_dict(props: Any) -> dict[str, Any]:
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for attr, key in _PROPS.items():
        if hasattr(props, attr):
            value = getattr(props, attr)
            if key == "user_properties":
                value = [tuple(pair) for pair in value]
            out[key] = value
    return out


def dict_to_properties(values: dict[str, Any] | None) -> Properties | None:
    if not values:
        return None
    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        attr = _PROPS_BACK.get(key)
        if attr is None or key in ("subscription_identifier", "topic_alias"):
            raise ValueError(f"unknown or read-only MQTT 5 property {key!r} (known: {', '.join(sorted(_PROPS_BACK))})")
        if key == "user_properties":
            value = [tuple(p) for p in value]
        setattr(props, attr, value)
    return props


def _lost_why(rc: MQTTErrorCode) -> str:
    """What a paho read error means, in words (paho reports most of them as "Unspecified error")."""
    if rc == MQTTErrorCode.MQTT_ERR_CONN_LOST:
        return "connection lost: the broker closed the TCP connection"
    if rc == MQTTErrorCode.MQTT_ERR_PROTOCOL:
        return "connection closed: the broker sent a packet that breaks the MQTT protocol"
    return f"connection lost: {paho.error_string(rc)}"


class ClientMode:
    """Connects, subscribes, reads with backpressure, acknowledges, reconnects."""

    def __init__(self, adapter: MqttAdapter) -> None:
        self.adapter = adapter
        self.config = cfg = adapter.config
        self.context = adapter.context
        self.log = adapter.context.log
        assert cfg.url is not None, "MqttConfig requires url in client mode"
        self.broker = broker_url(cfg.url)
        self.client_id = cfg.client_id or f"asgi-gateway-{socket.gethostname()}-{os.getpid()}-{next(_ids)}"
        self.persistent = cfg.persistent
        self.v5 = cfg.protocol == "5"
        why = ("left unacknowledged; reconnecting so that the broker sends it again" if self.persistent else
               "left unacknowledged (clean session: the broker sends it again only if the connection drops before it gives up; "
               "set client_id for a persistent session)")
        exhausted = Exhausted(self.context, cfg.retry, self.publish, why)
        self.dispatcher = Dispatcher(self.context, adapter.send_for, self._resume, retry=cfg.retry, give_up=exhausted)
        exhausted.dispatcher = self.dispatcher
        self.loop: asyncio.AbstractEventLoop  # start() sets it: every other method runs after start()
        self.client: CompatClient | None = None
        self.generation = 0  # connections lost so far
        # Per-session state, keyed by packet id: valid only while the broker keeps the session.
        # ``session`` counts the sessions; a CONNACK without session_present starts a new one.
        self.session = 0
        self.inflight: dict[int, int] = {}  # mid -> session, QoS>0 messages being handled (or retried)
        self.acked_offline: set[int] = set()  # handled while disconnected: ack when redelivered
        self._lost_why: str | None = None
        self.paused = False
        self.stopping = False
        self.connected = False
        self._watched: Any = None  # the socket registered with the event loop
        self._loop_thread = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pub_waiters: dict[int, asyncio.Future[None]] = {}
        self._sub_mid: dict[int, list[str]] = {}
        self._filters = adapter.subscriptions()
        self._backoff = cfg.reconnect.min_delay

    # -- start / stop ---------------------------------------------------------------------------
    async def start(self) -> None:
        CONTRACT.require()
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        kwargs: dict[str, Any] = {"client_id": self.client_id, "manual_ack": True}
        if self.v5:
            kwargs["protocol"] = paho.MQTTv5
        else:
            kwargs["protocol"] = paho.MQTTv311
            kwargs["clean_session"] = not self.persistent
        client = self.client = CompatClient(CallbackAPIVersion.VERSION2, **kwargs)
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        username = cfg.username if cfg.username is not None else self.broker.username
        password = cfg.password if cfg.password is not None else self.broker.password
        if username is not None:
            client.username_pw_set(username, password)
        if self.broker.tls or cfg.tls is not None:
            tls = cfg.tls
            context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
            if tls and tls.cert_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            if tls and tls.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        self._ready = self.loop.create_future()
        connect_kwargs: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry if self.persistent else 0
            connect_kwargs = {"clean_start": not self.persistent, "properties": props}
        try:
            await self.loop.run_in_executor(
                None, lambda: client.connect(self.broker.host, self.broker.port, cfg.keepalive, **connect_kwargs)
            )
        except (OSError, ssl.SSLError) as exc:
            if cfg.reconnect.at_start == "fail" or isinstance(exc, ssl.SSLError):  # TLS set up wrong: not a broker coming up
                raise StartupError(f"mqtt: cannot connect to the broker at {self.broker}: {exc}") from exc
            self._wait_for_broker(exc)
            return
        self._spawn(self._misc_loop())
        try:
            async with asyncio.timeout(15):
                await self._ready
        except TimeoutError:
            raise StartupError(f"mqtt: the broker at {self.broker} did not answer CONNECT/SUBSCRIBE within 15 s") from None

    def _wait_for_broker(self, exc: BaseException) -> None:
        """Start without the broker: not ready until the first CONNACK, then the usual subscribe.
        Nobody awaits ``_ready`` any more, so a later refusal is logged, not raised."""
        self._ready = None
        self.context.health.set("adapter.mqtt.broker", "degraded", f"cannot reach {self.broker}: {exc}")
        self.log.warning(
            "mqtt.broker_unreachable_at_start", broker=str(self.broker), error=str(exc), retry_in=self._backoff,
            why="reconnect.at_start is wait: the gateway serves its other adapters and keeps trying",
        )
        self._spawn(self._misc_loop())
        self._reconnect_task = self._spawn(self._reconnect())

    async def routes_changed(self) -> None:
        """Subscribe to the topic filters the new routes need and unsubscribe from the ones no
        route needs any more (the next reconnect subscribes the new set anyway)."""
        wanted = self.adapter.subscriptions()
        added = [(f, q) for f, q in wanted if (f, q) not in self._filters]
        gone = [f for f, _ in self._filters if f not in {w for w, _ in wanted}]
        self._filters = wanted
        if not self.connected or self.client is None:
            return
        if gone:
            self.client.unsubscribe(gone)
        if added:
            self._subscribe(self.client, added)
        self.log.info("mqtt.subscriptions_changed", subscribed=[f for f, _ in added], unsubscribed=gone)

    async def stop(self, drain: float) -> None:
        self.stopping = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        await self.dispatcher.drain(drain)
        client = self.client
        if client is not None and self.connected:
            deadline = time.monotonic() + 2
            while client.want_write() and time.monotonic() < deadline:  # noqa: ASYNC110 - paho has no event for an empty buffer
                await asyncio.sleep(0.01)
            client.disconnect()
            deadline = time.monotonic() + 2
            while client.socket() is not None and time.monotonic() < deadline:
                client.loop_write()
                if client.socket() is not None:
                    await asyncio.sleep(0.01)
        if client is not None and client.socket() is not None:
            client.close_socket()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fut in self._pub_waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the mqtt adapter stopped before the broker acknowledged the publish"))
        self._pub_waiters.clear()

    @property
    def addresses(self) -> list[str]:
        return [str(self.broker)]

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- socket plumbing ---------------------------------------------------------------------
    def _in_loop(self, fn: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        try:  # acknowledgements and replies are small packets: do not let Nagle hold them back
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

        def register() -> None:
            if sock.fileno() == -1:
                return
            self._watched = sock
            if not self.paused:
                self.loop.add_reader(sock, self._on_readable)
        self._in_loop(register)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        def unregister() -> None:
            if self._watched is sock:
                self._watched = None
            try:
                self.loop.remove_reader(sock)
                self.loop.remove_writer(sock)
            except (ValueError, OSError):
                pass
        # must run before paho closes the fd, so never deferred when we are in the loop thread
        self._in_loop(unregister)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        def register() -> None:
            if sock.fileno() != -1:
                self.loop.add_writer(sock, self._on_writable)
        self._in_loop(register)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        def unregister() -> None:
            if sock.fileno() != -1:
                self.loop.remove_writer(sock)
        self._in_loop(unregister)

    def _on_readable(self) -> None:
        """Read what is there: up to ``_READ_BATCH`` packets per wake-up (paho's ``loop_read``
        stops after one), never past the moment a full lane pauses reading."""
        client = self.client
        assert client is not None
        for _ in range(_READ_BATCH):
            if self.paused or client.socket() is None:
                return
            rc = client.read_packet()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                if not client.has_buffered():
                    return
            elif rc > 0:
                self._lost_why = _lost_why(rc)
                client.read_failed(rc)
                return
        self._maybe_read_soon()

    def _maybe_read_soon(self) -> None:
        """Buffered bytes never wake the selector: read them on the next loop turn."""
        client = self.client
        if client is not None and client.socket() is not None and not self.paused and client.has_buffered():
            self.loop.call_soon(self._on_readable)

    def _on_writable(self) -> None:
        assert self.client is not None
        self.client.loop_write()

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            if self._watched is not None:
                self.loop.remove_reader(self._watched)

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            if self._watched is not None and self._watched.fileno() != -1:
                self.loop.add_reader(self._watched, self._on_readable)
                self._maybe_read_soon()

    async def _misc_loop(self) -> None:
        client = self.client
        assert client is not None
        while True:
            await asyncio.sleep(1.0)
            if client.socket() is None:
                continue
            # while paused for backpressure, still read when a PINGRESP is due, or paho would
            # declare the connection dead after `keepalive` seconds of a slow consumer
            if self.paused and client.ping_outstanding():
                client.loop_read()
            client.loop_misc()

    # -- paho callbacks (all in the event-loop thread) ------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.log.error("mqtt.connect_refused", broker=str(self.broker), reason=str(reason))
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(StartupError(f"mqtt: the broker at {self.broker} refused the connection: {reason}"))
            return
        self.connected = True
        self._lost_why = None
        self._backoff = self.config.reconnect.min_delay
        self.context.health.set("adapter.mqtt.broker", "ok", str(self.broker))
        session_present = bool(getattr(flags, "session_present", False))
        self.log.info(
            "mqtt.connected", broker=str(self.broker), client_id=self.client_id,
            session_present=session_present, persistent=self.persistent,
        )
        if not session_present:
            self._session_lost()
        if not self._filters:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        self._subscribe(client, self._filters)

    def _subscribe(self, client: paho.Client, filters: list[tuple[str, int]]) -> None:
        """Ask for ``filters``; the SUBACK of that request's mid is checked against them."""
        if self.v5:
            rc, mid = client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        else:
            rc, mid = client.subscribe(filters)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._sub_mid[mid] = [f for f, _ in filters]

    def _session_lost(self) -> None:
        """The broker has no session for us (a clean session, a broker restarted without
        persistence, an expired session, a failover): every packet id we hold belonged to the
        old one and will mean a different message from now on. Forget them all."""
        self.session += 1
        in_app, handled = len(self.inflight), len(self.acked_offline)
        self.inflight.clear()
        self.acked_offline.clear()
        if in_app or handled:
            self.dispatcher.count("session_lost", in_app + handled)
            self.log.warning(
                "mqtt.session_lost", broker=str(self.broker), client_id=self.client_id, in_app=in_app,
                handled_unacknowledged=handled,
                why="the broker no longer has the session these messages came in: it will not send them again and "
                "their acknowledgements are dropped (messages still running finish, but a failure cannot be retried by the broker)",
            )

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        filters = self._sub_mid.pop(mid, [])
        refused = [f for f, r in zip(filters, reasons, strict=False) if r.is_failure]
        if refused:
            msg = f"mqtt: the broker at {self.broker} refused the subscription to {', '.join(refused)}"
            self.log.error("mqtt.subscribe_refused", broker=str(self.broker), filters=refused)
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(StartupError(msg))
            return
        self.log.debug("mqtt.subscribed", filters=filters)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected
        self.connected = False
        self.generation += 1
        # messages still waiting in a lane stay there and run; their acks go to the resumed
        # session, or are dropped if the broker comes back without it (_session_lost)
        if self.stopping:
            return
        self.context.health.set("adapter.mqtt.broker", "degraded", f"disconnected from {self.broker}")
        if was:
            if getattr(flags, "is_disconnect_packet_from_server", False):
                why = f"the broker sent DISCONNECT: {reason}"
            elif getattr(reason, "value", None) == 141:
                why = "no PINGRESP from the broker within the keep-alive"
            else:
                why = self._lost_why or "connection lost (the broker closed the TCP connection or the network failed)"
            self.log.warning("mqtt.disconnected", broker=str(self.broker), reason=why)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        assert self.client is not None
        while not self.stopping:
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.config.reconnect.max_delay)
            await asyncio.sleep(delay)
            try:
                await self.loop.run_in_executor(None, self.client.reconnect)
                return
            except (OSError, ssl.SSLError) as exc:
                self.log.warning("mqtt.reconnect_failed", broker=str(self.broker), error=str(exc), retry_in=self._backoff)

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self.stopping:
            return  # not acknowledged: the broker hands it to the next session
        qos, mid = msg.qos, msg.mid
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.dispatcher.count("invalid")
            self.log.warning("mqtt.invalid_topic", topic=repr(raw_topic(msg)), why="not valid UTF-8; refused")
            self._ack(mid, qos)
            return
        if qos and mid in self.acked_offline:
            self.acked_offline.discard(mid)
            self._ack(mid, qos)
            return
        if qos and self.persistent and mid in self.inflight:
            self.dispatcher.count("duplicate")
            self.log.debug("mqtt.redelivered_in_flight", topic=topic, mid=mid)
            return
        payload = bytes(msg.payload)  # bytes already: no copy, only the type narrowed
        if len(payload) > self.config.max_payload:
            self.dispatcher.count("oversized")
            self.log.warning(
                "mqtt.payload_too_large", topic=topic, size=len(payload), max_payload=self.config.max_payload,
                why="refused (acknowledged and dropped so it is not redelivered forever)",
            )
            self._ack(mid, qos)
            return
        props = properties_to_dict(msg.properties) if self.v5 else {}
        scope = self.adapter.scope(topic, qos, msg.retain, client_id=None, username=None, broker=str(self.broker), properties=props)
        event = message_event(topic, payload, qos, msg.retain, bool(msg.dup), props)
        session = self.session
        if qos:
            self.inflight[mid] = session
        self.dispatcher.submit(scope, event, lambda ok: self._done(mid, qos, session, ok), self._reconnect_for_redelivery)
        if self.dispatcher.blocked:
            self._pause()

    def _done(self, mid: int, qos: int, session: int, ok: bool) -> None:
        if not qos:
            return
        if session != self.session:
            return  # the broker lost that session (counted in _session_lost): this mid may mean another message now
        if self.inflight.get(mid) == session:
            del self.inflight[mid]
        if not ok:
            return  # left unacknowledged: the broker sends it again on the next connection (persistent session)
        if self.connected:
            self._ack(mid, qos)
        else:
            self.acked_offline.add(mid)

    def _ack(self, mid: int, qos: int) -> None:
        if qos and self.client is not None:
            self.client.ack(mid, qos)

    def _reconnect_for_redelivery(self) -> None:
        """A message's retries are used up (``retry.exhausted: disconnect``): drop the TCP
        connection, without DISCONNECT semantics that could end the session, so that the broker
        sends what is unacknowledged again on the next one."""
        if not self.persistent or self.stopping or not self.connected or self.client is None:
            return
        self._lost_why = "reconnecting so that the broker sends the unacknowledged messages again"
        self._backoff = 0.05
        self.client.drop_connection()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        fut = self._pub_waiters.pop(mid, None)
        if fut is None or fut.done():
            return
        if reason is not None and getattr(reason, "is_failure", False):
            fut.set_exception(ConnectionError(f"the broker refused the publish: {reason}"))
        else:
            fut.set_result(None)

    # -- outbound -----------------------------------------------------------------------------
    async def publish(self, out: Outgoing, wait: bool) -> None:
        client = self.client
        if client is None or self.stopping:
            raise ConnectionError("the mqtt adapter is not running")
        properties = dict_to_properties(out.properties) if self.v5 else None
        info = client.publish(out.topic, out.payload, out.qos, out.retain, properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise ConnectionError(f"not connected to the broker at {self.broker}: QoS 0 message to {out.topic!r} not sent")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,):
            raise ConnectionError(f"publish to {out.topic!r} failed: {paho.error_string(info.rc)}")
        if wait and out.qos > 0 and not info.is_published():
            fut = self._pub_waiters[info.mid] = self.loop.create_future()
            await fut
