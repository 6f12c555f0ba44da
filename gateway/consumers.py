"""Channels' consumer shapes without Django.

``AsyncConsumer``, ``AsyncWebsocketConsumer`` and ``AsyncJsonWebsocketConsumer`` have the same
method names and signatures as their ``channels.generic`` namesakes, so a consumer moves between
Channels and the gateway by changing its import. They talk to the gateway's channel layer
(``gateway.layers.get_channel_layer()``), and need neither Django settings nor a database.

One addition over Channels: a consumer always leaves the groups it joined when it ends, also
after an exception or a cancellation (the runner cancels instances whose peer vanished), so
``group_send`` does not keep filling the channel of a consumer that no longer exists.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from asgiref.sync import async_to_sync

from .layers import get_channel_layer
from .layers.base import BaseChannelLayer
from .threads import run_sync
from .types import Message, Receive, Scope, Send

log = structlog.get_logger("gateway.consumers")


class StopConsumer(Exception):
    """Raised by a handler to end the consumer cleanly (Channels' exception of the same name)."""


class AcceptConnection(Exception):
    """Raised from ``connect()`` to accept the WebSocket (as in Channels)."""


class DenyConnection(Exception):
    """Raised from ``connect()`` to refuse the WebSocket (as in Channels)."""


def get_handler_name(message: Message) -> str:
    """The method that handles ``message``: its ``type`` with ``.`` replaced by ``_``.

    A leading underscore is refused so a message can never call a private method.
    """
    if "type" not in message:
        raise ValueError("Incoming message has no 'type' key")
    name = str(message["type"]).replace(".", "_")
    if name.startswith("_"):
        raise ValueError(f"Malformed message type {message['type']!r} (leading underscore)")
    return name


class _TrackedLayer:
    """The layer as a consumer sees it: every attribute of the real layer, but ``group_add`` and
    ``group_discard`` with the consumer's own channel are recorded, so cleanup can leave exactly
    the groups still joined (including those joined by user code in ``connect()``)."""

    def __init__(self, layer: BaseChannelLayer, channel_name: str, joined: set[str]) -> None:
        self._layer = layer
        self._channel_name = channel_name
        self._joined = joined

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)

    async def group_add(self, group: str, channel: str) -> None:
        await self._layer.group_add(group, channel)
        if channel == self._channel_name:
            self._joined.add(group)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._layer.group_discard(group, channel)
        if channel == self._channel_name:
            self._joined.discard(group)


class AsyncConsumer:
    """An ASGI application that dispatches each event to the method named after its type.

    Events come from the ASGI ``receive`` and, when a channel layer is present, from the
    consumer's own channel (``self.channel_name``), whichever arrives first.
    """

    channel_layer: Any = None
    """``None``: use the gateway's layer. Set it (class attribute or ``as_asgi(channel_layer=...)``)
    to use another one."""

    def __init__(self, **initkwargs: Any) -> None:
        # Like Django's as_view(): initkwargs may only override attributes the class defines.
        for key, value in initkwargs.items():
            if not hasattr(type(self), key):
                raise TypeError(
                    f"{type(self).__name__}.as_asgi() got {key!r}, which is not an attribute of the class"
                )
            setattr(self, key, value)
        self.channel_name: str | None = None
        self._joined_groups: set[str] = set()

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """An ASGI 3 callable that builds a new ``cls(**initkwargs)`` for every scope."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            consumer = cls(**initkwargs)
            await consumer(scope, receive, send)

        app.consumer_class = cls  # type: ignore[attr-defined]
        app.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
        functools.update_wrapper(app, cls, updated=())
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.base_send = send
        layer = self.channel_layer if self.channel_layer is not None else get_channel_layer()
        sources: list[Callable[[], Awaitable[Message]]] = [receive]
        if layer is not None:
            self.channel_name = await layer.new_channel()
            self.channel_layer = _TrackedLayer(layer, self.channel_name, self._joined_groups)
            sources.append(functools.partial(layer.receive, self.channel_name))
        else:
            self.channel_layer = None
        try:
            await self._dispatch_from(sources)
        except StopConsumer:
            pass
        finally:
            if layer is not None and self.channel_name is not None:
                await self._leave_groups(layer, self.channel_name)

    async def _leave_groups(self, layer: BaseChannelLayer, channel_name: str) -> None:
        """Leave every group still joined; a failing layer is logged, never masks the real exit."""
        for group in sorted(self._joined_groups):
            try:
                await layer.group_discard(group, channel_name)
            except Exception:
                log.warning("consumer.group_discard_failed", group=group, channel=channel_name, exc_info=True)
        self._joined_groups.clear()

    async def _dispatch_from(self, sources: list[Callable[[], Awaitable[Message]]]) -> None:
        """Race every source; dispatch whatever arrives, then ask that source for the next event.

        On exit (StopConsumer, an error, cancellation) the outstanding receives are cancelled, so
        no listener outlives the consumer.
        """
        pending: dict[asyncio.Future[Message], int] = {
            asyncio.ensure_future(source()): index for index, source in enumerate(sources)
        }
        try:
            while True:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=pending.__getitem__):  # ASGI events before layer messages
                    index = pending.pop(task)
                    await self.dispatch(task.result())
                    pending[asyncio.ensure_future(sources[index]())] = index
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def dispatch(self, message: Message) -> None:
        """Call the handler for ``message``; ``ValueError`` when the class has none."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def send(self, message: Message) -> None:
        """Send an ASGI event to the peer (overridable, as in Channels)."""
        await self.base_send(message)


class AsyncWebsocketConsumer(AsyncConsumer):
    """A WebSocket consumer: joins ``groups`` on connect, leaves them on disconnect."""

    groups: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # A per-instance copy: appending to self.groups must not change the class's list.
        self.groups = list(self.groups or ())

    async def websocket_connect(self, message: Message) -> None:
        await self._join_groups(self.groups or ())
        try:
            await self.connect()
        except AcceptConnection:
            await self.accept()
        except DenyConnection:
            await self.close()

    async def connect(self) -> None:
        """Called on ``websocket.connect``; the default accepts."""
        await self.accept()

    async def accept(self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] | None = None) -> None:
        message: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
        if headers:
            message["headers"] = list(headers)
        await super().send(message)

    async def websocket_receive(self, message: Message) -> None:
        if message.get("text") is not None:
            await self.receive(text_data=message["text"])
        else:
            await self.receive(bytes_data=message["bytes"])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame received from the peer."""

    async def send(  # type: ignore[override]  # Channels' signature
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool | int = False
    ) -> None:
        """Send one frame to the peer, then close the socket if ``close`` is true (or a close code)."""
        if text_data is not None:
            await super().send({"type": "websocket.send", "text": text_data})
        elif bytes_data is not None:
            await super().send({"type": "websocket.send", "bytes": bytes_data})
        else:
            raise ValueError("You must pass one of bytes_data or text_data")
        if close:
            await self.close(close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket from the server end."""
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None and code is not True:
            message["code"] = code
        if reason:
            message["reason"] = reason
        await super().send(message)

    async def websocket_disconnect(self, message: Message) -> None:
        if self.channel_layer is not None:
            for group in self.groups or ():
                await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message.get("code", 1000))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        """Called when the socket has closed."""

    async def _join_groups(self, groups: Iterable[str]) -> None:
        groups = list(groups)
        if not groups:
            return
        if self.channel_layer is None:
            raise RuntimeError(
                f"{type(self).__name__} has groups {groups} but there is no channel layer "
                "(configure `layer:` in the gateway YAML or set channel_layer on the class)"
            )
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)


class AsyncJsonWebsocketConsumer(AsyncWebsocketConsumer):
    """A WebSocket consumer that exchanges JSON text frames."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if text_data:
            await self.receive_json(await self.decode_json(text_data), **kwargs)
        else:
            raise ValueError("No text section for incoming WebSocket frame!")

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Called with the decoded content of each text frame."""

    async def send_json(self, content: Any, close: bool | int = False) -> None:
        await super().send(text_data=await self.encode_json(content), close=close)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        return json.loads(text_data)

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return json.dumps(content)


class AsyncEmailConsumer(AsyncConsumer):
    """One inbound e-mail (scope type ``email``, see docs/specs/email.md).

    Override ``message(msg)``; ``msg`` is the parsed message (``self.raw`` holds the bytes).
    Returning normally acknowledges the message (SMTP 250, IMAP ``\\Seen``); raising leaves it
    to be retried. ``reply(...)`` answers the sender, threaded (In-Reply-To, References);
    ``reject(code, reason)`` refuses the message with that SMTP reply.
    """

    async def email_message(self, message: Message) -> None:
        self.raw: bytes = message.get("raw", b"")
        self.email: dict[str, Any] = message.get("message") or {}
        await self.message(self.email)

    async def message(self, msg: dict[str, Any]) -> None:
        """Called with the parsed message; override it."""

    async def email_disconnect(self, message: Message) -> None:
        raise StopConsumer()

    async def reply(self, text: str | None = None, *, html: str | None = None, subject: str | None = None,
                    reply_all: bool = False, **fields: Any) -> None:
        """Send a threaded reply to the message's Reply-To (or From, or envelope sender)."""
        await self.send(reply_event(self.scope, getattr(self, "email", None) or {}, text, html=html, subject=subject,
                                    reply_all=reply_all, **fields))

    async def send_mail(self, **fields: Any) -> None:
        """Send a new message (the fields of an ``email.send`` event; ``from`` may be given as ``from_``)."""
        await self.send(mail_event(**fields))

    async def reject(self, code: int = 550, reason: str = "5.7.1 Message rejected") -> None:
        """Refuse the message: the SMTP client gets ``code reason`` (4xx: it retries later)."""
        await self.send({"type": "email.reject", "code": code, "reason": reason})


class AsyncMqttConsumer(AsyncConsumer):
    """One inbound MQTT message (scope type ``mqtt``, see docs/specs/mqtt.md).

    Override ``message(topic, payload, **info)``: ``payload`` is bytes, ``info`` holds ``qos``,
    ``retain``, ``dup`` and, with MQTT 5, ``properties``; named topic wildcards are in
    ``self.kwargs``. Returning normally acknowledges the message (PUBACK/PUBREC); raising leaves
    it unacknowledged so the broker or device delivers it again. ``publish(...)`` sends an
    ``mqtt.publish`` (``json=`` encodes a value as JSON).
    """

    async def mqtt_message(self, message: Message) -> None:
        self.kwargs: dict[str, Any] = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        await self.message(message["topic"], message["payload"], **_mqtt_info(message))

    async def message(self, topic: str, payload: bytes, **info: Any) -> None:
        """Called with the message; override it."""

    async def mqtt_disconnect(self, message: Message) -> None:
        raise StopConsumer()

    async def publish(self, topic: str, payload: bytes | str | None = None, *, json: Any = None, qos: int = 0,
                      retain: bool = False, properties: dict[str, Any] | None = None) -> None:
        """Publish to ``topic`` (QoS > 0: returns once the broker has the message)."""
        await self.send(publish_event(topic, payload, json=json, qos=qos, retain=retain, properties=properties))


class AsyncSmsConsumer(AsyncConsumer):
    """One inbound text or delivery report (scope type ``sms``, see docs/specs/sms.md).

    Override ``message(body, **info)`` for texts: ``info`` holds ``from``, ``to``, ``message_id``,
    ``provider``, ``media``, ``segments`` and ``encoding``; ``body`` regex captures are in
    ``self.kwargs``. Override ``status(status, **info)`` for delivery reports (routes with
    ``events: status``). Returning normally acknowledges the webhook (2xx); raising makes the
    provider deliver it again. ``reply(text)`` answers the sender (inline where the provider
    allows it); ``send_sms(to, body)`` texts anyone.
    """

    async def sms_message(self, message: Message) -> None:
        self.kwargs: dict[str, Any] = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        self.sms: Message = message
        await self.message(message.get("body", ""), **_sms_info(message))

    async def message(self, body: str, **info: Any) -> None:
        """Called with the text; override it."""

    async def sms_status(self, message: Message) -> None:
        self.kwargs = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        await self.status(message["status"], **_sms_status_info(message))

    async def status(self, status: str, **info: Any) -> None:
        """Called with a delivery report (``delivered``, ``failed``, ...); override it."""

    async def sms_disconnect(self, message: Message) -> None:
        raise StopConsumer()

    async def reply(self, body: str, *, media: list[str] | None = None) -> None:
        """Answer the sender of the text, from the number it was sent to."""
        await self.send_sms(_sender(self.scope, getattr(self, "sms", None)), body, media=media)

    async def send_sms(self, to: str, body: str | None = None, *, from_: str | None = None, media: list[str] | None = None,
                       account: str | None = None, idempotency_key: str | None = None) -> None:
        """Send a text (an ``sms.send``); returns once the provider took it, raises when it did not."""
        await self.send(sms_event(to, body, from_=from_, media=media, account=account, idempotency_key=idempotency_key))


# -- the events the message consumers send, built once for the async and the sync forms --------
def reply_event(scope: Scope, msg: dict[str, Any], text: str | None = None, *, html: str | None = None,
                subject: str | None = None, reply_all: bool = False, **fields: Any) -> dict[str, Any]:
    """An ``email.send`` answering ``msg``: to its Reply-To (or From, or the envelope sender), threaded."""
    to = [a["address"] for a in msg.get("reply_to") or []] or (
        [msg["from"]["address"]] if msg.get("from") else [scope.get("mail_from") or ""])
    cc = fields.pop("cc", None)
    if reply_all:
        mine = {str(scope.get("rcpt_to", "")).lower(), *(a.lower() for a in to)}
        cc = list(cc or []) + [a["address"] for a in (msg.get("to") or []) + (msg.get("cc") or [])
                               if a["address"].lower() not in mine]
    original = msg.get("subject") or ""
    if subject is None:
        subject = original if original[:3].lower() == "re:" else f"Re: {original}".strip()
    references = list(msg.get("references") or [])
    if msg.get("message_id") and msg["message_id"] not in references:
        references.append(msg["message_id"])
    event: dict[str, Any] = {"type": "email.send", "to": [a for a in to if a], "subject": subject,
                             "from": fields.pop("from", None) or scope.get("rcpt_to")}
    if cc:
        event["cc"] = cc
    if text is not None:
        event["text"] = text
    if html is not None:
        event["html"] = html
    if msg.get("message_id"):
        event["in_reply_to"] = msg["message_id"]
    if references:
        event["references"] = references
    event.update(fields)
    return event


def mail_event(**fields: Any) -> dict[str, Any]:
    """A new ``email.send``; ``from`` may be given as ``from_`` (a Python keyword otherwise)."""
    if "from_" in fields:
        fields["from"] = fields.pop("from_")
    return {"type": "email.send", **fields}


def publish_event(topic: str, payload: bytes | str | None = None, *, json: Any = None, qos: int = 0,
                  retain: bool = False, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "mqtt.publish", "topic": topic, "qos": qos, "retain": retain}
    if json is not None:
        if payload is not None:
            raise ValueError("pass either payload or json, not both")
        event["json"] = json
    else:
        event["payload"] = b"" if payload is None else payload
    if properties:
        event["properties"] = properties
    return event


def sms_event(to: str, body: str | None = None, *, from_: str | None = None, media: list[str] | None = None,
              account: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "sms.send", "to": to}
    for key, value in (("body", body), ("from", from_), ("media", media), ("account", account), ("idempotency_key", idempotency_key)):
        if value is not None:
            event[key] = value
    return event


def _sms_info(message: Message) -> dict[str, Any]:
    keys = ("from", "to", "message_id", "provider", "media", "segments", "encoding")
    return {k: message[k] for k in keys if k in message}


def _sms_status_info(message: Message) -> dict[str, Any]:
    keys = ("message_id", "provider_status", "from", "to", "error_code", "error", "provider")
    return {k: message[k] for k in keys if k in message}


def _sender(scope: Scope, sms: Message | None) -> str:
    return str((sms or {}).get("from") or scope["from"])


def _mqtt_info(message: Message) -> dict[str, Any]:
    return {k: message[k] for k in ("qos", "retain", "dup", "properties") if k in message}


# -- sync forms ---------------------------------------------------------------------------------
class SyncConsumer(AsyncConsumer):
    """Channels' ``SyncConsumer``: handler methods are plain functions, run in the gateway's
    bounded thread pool (``instances.sync_threads``) with Django's stale database connections
    closed before and after, so they may use the ORM directly. ``send`` blocks until the event is
    taken; the layer is used with ``async_to_sync(self.channel_layer.group_send)(...)``.
    Returning from the handler is still the acknowledgement of a message scope."""

    async def dispatch(self, message: Message) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await run_sync(handler, message)

    def send(self, message: Message) -> None:  # type: ignore[override]
        async_to_sync(self.base_send)(message)


class SyncMqttConsumer(SyncConsumer):
    """The sync form of ``AsyncMqttConsumer``: override ``message(topic, payload, **info)``."""

    def mqtt_message(self, message: Message) -> None:
        self.kwargs: dict[str, Any] = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        self.message(message["topic"], message["payload"], **_mqtt_info(message))

    def message(self, topic: str, payload: bytes, **info: Any) -> None:
        """Called with the message, in a worker thread; override it."""

    def mqtt_disconnect(self, message: Message) -> None:
        raise StopConsumer()

    def publish(self, topic: str, payload: bytes | str | None = None, *, json: Any = None, qos: int = 0,
                retain: bool = False, properties: dict[str, Any] | None = None) -> None:
        self.send(publish_event(topic, payload, json=json, qos=qos, retain=retain, properties=properties))


class SyncEmailConsumer(SyncConsumer):
    """The sync form of ``AsyncEmailConsumer``: override ``message(msg)``."""

    def email_message(self, message: Message) -> None:
        self.raw: bytes = message.get("raw", b"")
        self.email: dict[str, Any] = message.get("message") or {}
        self.message(self.email)

    def message(self, msg: dict[str, Any]) -> None:
        """Called with the parsed message, in a worker thread; override it."""

    def email_disconnect(self, message: Message) -> None:
        raise StopConsumer()

    def reply(self, text: str | None = None, *, html: str | None = None, subject: str | None = None,
              reply_all: bool = False, **fields: Any) -> None:
        self.send(reply_event(self.scope, getattr(self, "email", None) or {}, text, html=html, subject=subject,
                              reply_all=reply_all, **fields))

    def send_mail(self, **fields: Any) -> None:
        self.send(mail_event(**fields))

    def reject(self, code: int = 550, reason: str = "5.7.1 Message rejected") -> None:
        self.send({"type": "email.reject", "code": code, "reason": reason})


class SyncSmsConsumer(SyncConsumer):
    """The sync form of ``AsyncSmsConsumer``: override ``message(body, **info)`` and ``status(status, **info)``."""

    def sms_message(self, message: Message) -> None:
        self.kwargs: dict[str, Any] = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        self.sms: Message = message
        self.message(message.get("body", ""), **_sms_info(message))

    def message(self, body: str, **info: Any) -> None:
        """Called with the text, in a worker thread; override it."""

    def sms_status(self, message: Message) -> None:
        self.kwargs = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        self.status(message["status"], **_sms_status_info(message))

    def status(self, status: str, **info: Any) -> None:
        """Called with a delivery report, in a worker thread; override it."""

    def sms_disconnect(self, message: Message) -> None:
        raise StopConsumer()

    def reply(self, body: str, *, media: list[str] | None = None) -> None:
        self.send_sms(_sender(self.scope, getattr(self, "sms", None)), body, media=media)

    def send_sms(self, to: str, body: str | None = None, *, from_: str | None = None, media: list[str] | None = None,
                 account: str | None = None, idempotency_key: str | None = None) -> None:
        self.send(sms_event(to, body, from_=from_, media=media, account=account, idempotency_key=idempotency_key))
