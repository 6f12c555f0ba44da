"""Communicators for the message scopes: one MQTT message, one e-mail, one text, one delivery report.

Each delivers its message the way the adapter would and returns what the other side would get
back: the MQTT acknowledgement, the SMTP reply, the webhook's status and inline reply. The
answer is made by the built-in adapter's own code (``SmtpHandler`` for RCPT and DATA,
``SmsAdapter.on_message`` / ``on_status``, ``MqttAdapter.scope``), so a test sees the 451 that a
raising application causes in production, not a re-implementation of it. Only the outbound side
is replaced: ``email.send``, ``sms.send`` and ``mqtt.publish`` are recorded instead of relayed.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from gateway.runner import Outcome, Result
from gateway.types import Message
from gateway_adapters.email.adapter import EmailAdapter
from gateway_adapters.email.config import SmtpConfig
from gateway_adapters.email.smtp_in import GatewaySMTP, SmtpHandler
from gateway_adapters.mqtt.adapter import MqttAdapter
from gateway_adapters.mqtt.dispatch import message_event
from gateway_adapters.mqtt.events import outgoing
from gateway_adapters.sms.adapter import SmsAdapter
from gateway_adapters.sms.numbers import to_e164
from gateway_adapters.sms.providers import Inbound, OutboundSms, StatusReport
from gateway_adapters.sms.sender import Account, Sender

from .harness import Harness, harness_for


@dataclass
class Delivery:
    """What every message communicator reports besides its protocol's answer."""

    outcome: Outcome | None
    """How the application ended (``None``: no route took the message, no app ran)."""
    error: BaseException | None
    """The app's exception, or the ``TimeoutError`` of its route's timeout."""

    @property
    def handled(self) -> bool:
        return self.outcome is Outcome.OK


def _delivery(result: Result | None) -> tuple[Outcome | None, BaseException | None]:
    return (result.outcome, result.error) if result is not None else (None, None)


# -- MQTT ------------------------------------------------------------------------------------
@dataclass
class MqttResult(Delivery):
    acknowledged: bool = False
    """QoS 1/2: the PUBACK/PUBREC would be sent (QoS 0: the message counts as handled)."""
    matched: bool = False
    published: list[dict[str, Any]] = field(default_factory=list)
    """Every ``mqtt.publish`` the app sent: ``topic``, ``payload`` (bytes), ``qos``, ``retain``, ``properties``."""


class MqttCommunicator:
    """Deliver one MQTT message as if a device had published it."""

    def __init__(self, application: Any, topic: str, payload: bytes | str = b"", *, qos: int = 0, retain: bool = False,
                 client_id: str | None = "test-client", username: str | None = None, dup: bool = False) -> None:
        self.harness: Harness = harness_for(application)
        self.topic = topic
        self.payload = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.qos, self.retain, self.client_id, self.username, self.dup = qos, retain, client_id, username, dup
        self.adapter: MqttAdapter = self.harness.adapter("mqtt", MqttAdapter)

    async def deliver(self) -> MqttResult:
        """Run the routed app once. An unmatched message is acknowledged (nothing would ever
        handle it), as the adapter does; the gateway's own retries of a failed QoS 1/2 message
        (``retry:``) are not run here: ``acknowledged`` is the first attempt's."""
        scope = self.adapter.scope(self.topic, self.qos, self.retain, client_id=self.client_id, username=self.username)
        published: list[dict[str, Any]] = []
        match = self.harness.resolve(scope)
        if match is None:
            return MqttResult(None, None, acknowledged=True, matched=False)

        async def send(event: Message) -> None:
            out = outgoing(event)
            published.append({"topic": out.topic, "payload": out.payload, "qos": out.qos, "retain": out.retain,
                              "properties": out.properties})

        event = message_event(self.topic, self.payload, self.qos, self.retain, self.dup)
        self.harness.take_result()
        result = await self.harness.runner.run_message(match, scope, event, send, adapter="mqtt")
        self.harness.take_result()
        return MqttResult(result.outcome, result.error, acknowledged=result.ok, matched=True, published=published)


# -- e-mail ----------------------------------------------------------------------------------
class _RecordingEmailAdapter(EmailAdapter):
    """The e-mail adapter, with ``email.send`` recorded instead of relayed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[dict[str, Any]] = []

    async def send_mail(self, event: Any) -> None:
        self.sent.append(dict(event))


@dataclass
class EmailResult(Delivery):
    code: int = 0
    reply: str = ""
    """The full SMTP reply line the sending server would read after its final dot (or after
    RCPT, when every recipient was refused there)."""
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every ``email.send`` the app made."""


def _addresses(values: Iterable[str | None]) -> list[str]:
    return [addr for _, addr in email.utils.getaddresses([v for v in values if v]) if addr]


class EmailCommunicator:
    """Deliver one message by SMTP as a sending server would: MAIL, RCPT per recipient, DATA.

    ``message`` is an ``EmailMessage`` (sent with CRLF line endings) or raw bytes. The envelope
    defaults to the message's ``From`` and its ``To``/``Cc`` addresses.
    """

    def __init__(self, application: Any, message: EmailMessage | bytes, *, mail_from: str | None = None,
                 rcpt_to: str | Sequence[str] | None = None, client: tuple[str, int] = ("127.0.0.1", 40000),
                 helo: str = "client.example", smtputf8: bool = False) -> None:
        self.harness: Harness = harness_for(application)
        if isinstance(message, EmailMessage):
            self.raw = message.as_bytes(policy=email.policy.SMTP)
            headers = message
        elif isinstance(message, (bytes, bytearray)):
            self.raw = bytes(message)
            headers = email.message_from_bytes(self.raw, policy=email.policy.default)
        else:
            raise TypeError(f"message must be an EmailMessage or bytes, not {type(message).__name__}")
        self.mail_from = mail_from if mail_from is not None else next(iter(_addresses([headers.get("From")])), "")
        if rcpt_to is None:
            rcpt_to = _addresses([headers.get("To"), headers.get("Cc")])
        self.rcpt_to = [rcpt_to] if isinstance(rcpt_to, str) else list(rcpt_to)
        if not self.rcpt_to:
            raise ValueError("no recipient: give rcpt_to, or a message with To/Cc addresses")
        self.client, self.helo, self.smtputf8 = client, helo, smtputf8
        self.adapter: _RecordingEmailAdapter = self.harness.adapter("email", _RecordingEmailAdapter)

    async def deliver(self) -> EmailResult:
        adapter = self.adapter
        handler = SmtpHandler(adapter, adapter.config.smtp or SmtpConfig())
        server = GatewaySMTP(handler, data_timeout=60.0, on_close=lambda _: None, draining=lambda: False, auth=None,
                             hostname="gateway.testing", loop=asyncio.get_running_loop())
        session = Session(asyncio.get_running_loop())
        session.peer = self.client  # type: ignore[assignment]  # aiosmtpd annotates a str; it holds the peername tuple
        session.host_name = self.helo
        envelope = Envelope()
        envelope.smtp_utf8 = self.smtputf8
        sent_before = len(adapter.sent)
        reply = await handler.handle_MAIL(server, session, envelope, self.mail_from, [])
        if not reply.startswith("250"):
            return self._result(reply, {}, None, adapter, sent_before)
        rcpt: dict[str, str] = {}
        for address in self.rcpt_to:
            rcpt[address] = await handler.handle_RCPT(server, session, envelope, address, [])
        if not envelope.rcpt_tos:  # the sender never gets to DATA
            return self._result(next(iter(rcpt.values())), rcpt, None, adapter, sent_before)
        envelope.original_content = self.raw
        envelope.content = self.raw
        self.harness.take_result()
        reply = await handler.handle_DATA(server, session, envelope)
        return self._result(reply, rcpt, self.harness.take_result(), adapter, sent_before)

    @staticmethod
    def _result(reply: str, rcpt: dict[str, str], result: Result | None, adapter: _RecordingEmailAdapter,
                sent_before: int) -> EmailResult:
        outcome, error = _delivery(result)
        return EmailResult(outcome, error, code=int(reply[:3]), reply=reply, rcpt_replies=rcpt,
                           sent=adapter.sent[sent_before:])


# -- SMS -------------------------------------------------------------------------------------
class _RecordingSender(Sender):
    """The SMS sender with the provider's REST call replaced by a record. Opt-outs and the
    checks of ``prepare`` (numbers, segments) still apply."""

    def __init__(self, adapter: SmsAdapter) -> None:
        super().__init__(adapter)
        self.sent: list[OutboundSms] = []
        self._ids = itertools.count(1)

    async def send(self, account: Account, sms: OutboundSms, *, force: bool = False) -> str:
        if not force and await self.adapter.store.opted_out(sms.to):
            raise self.opted_out(account, sms.to)
        self.sent.append(sms)
        return f"test-sent-{next(self._ids)}"


class _Replies:
    """Wraps an account's provider to keep the inline replies the webhook answer carries."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self.last: list[OutboundSms] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    def answer(self, replies: list[OutboundSms]) -> tuple[str, bytes]:
        self.last = list(replies)
        return self._provider.answer(replies)


class _RecordingSmsAdapter(SmsAdapter):
    """The SMS adapter with a recording sender, and every provider's inline replies kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = _RecordingSender(self)
        self.sender = self.recorder
        self.replies: dict[str, _Replies] = {}
        for label, account in self.accounts.items():
            account.provider = self.replies[label] = _Replies(account.provider)  # type: ignore[assignment]


@dataclass
class SmsResult(Delivery):
    status: int = 0
    """The HTTP status of the webhook's answer (2xx: the provider will not retry)."""
    body: bytes = b""
    content_type: str = ""
    replies: list[OutboundSms] = field(default_factory=list)
    """Texts answered inline in the webhook's response (providers with ``inline_replies``)."""
    sent: list[OutboundSms] = field(default_factory=list)
    """Texts sent through the provider's REST API (every other ``sms.send``)."""


class _SmsBase:
    def __init__(self, application: Any, account: str | None) -> None:
        self.harness: Harness = harness_for(application)
        self.adapter: _RecordingSmsAdapter = self.harness.adapter("sms", _RecordingSmsAdapter)
        accounts = self.adapter.accounts
        if account is not None and account not in accounts:
            raise LookupError(f"no SMS account {account!r} (configured: {', '.join(accounts)})")
        self.account = accounts[account] if account is not None else next(iter(accounts.values()))

    async def _deliver(self, handle: Any, item: Any) -> SmsResult:
        """Run ``handle`` (the adapter's ``on_message`` or ``on_status``) as the webhook does once
        it has checked and parsed ``item``, and collect what came of it."""
        replies = self.adapter.replies[self.account.label]
        replies.last = []
        sent_before = len(self.adapter.recorder.sent)
        self.harness.take_result()
        answer = await handle(self.account, item, ("127.0.0.1", 50000), "http://testserver" + self.account.config.webhook)
        outcome, error = _delivery(self.harness.take_result())
        return SmsResult(outcome, error, status=answer.status, body=answer.body, content_type=answer.content_type,
                         replies=replies.last if answer.status < 300 else [], sent=self.adapter.recorder.sent[sent_before:])


class SmsCommunicator(_SmsBase):
    """Deliver one text as the provider's webhook would (after its signature was checked)."""

    _ids = itertools.count(1)

    def __init__(self, application: Any, body: str, *, sender: str = "+447700900123", to: str | None = None,
                 account: str | None = None, message_id: str | None = None, media: list[dict[str, Any]] | None = None) -> None:
        super().__init__(application, account)
        region = self.adapter.config.default_region
        to = to or self.account.config.sender
        if to is None:
            raise ValueError(f"give 'to': SMS account {self.account.label!r} has no numbers")
        self.inbound = Inbound(
            sender=to_e164(sender, region), recipient=to_e164(to, region), body=body,
            message_id=message_id or f"test-{next(self._ids)}", raw={}, media=list(media or []),
        )

    async def deliver(self) -> SmsResult:
        return await self._deliver(self.adapter.on_message, self.inbound)


class SmsStatusCommunicator(_SmsBase):
    """Deliver one delivery report (``sms.status``) as the provider's webhook would."""

    def __init__(self, application: Any, message_id: str, status: str = "delivered", *, provider_status: str | None = None,
                 sender: str | None = None, to: str | None = "+447700900123", account: str | None = None,
                 error_code: str | None = None, error: str | None = None) -> None:
        super().__init__(application, account)
        self.report = StatusReport(
            message_id=message_id, status=status, provider_status=provider_status or status,
            sender=sender or self.account.config.sender, recipient=to, raw={}, error_code=error_code, error=error,
        )

    async def deliver(self) -> SmsResult:
        return await self._deliver(self.adapter.on_status, self.report)
