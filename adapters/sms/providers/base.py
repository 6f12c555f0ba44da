"""The provider contract: what the adapter needs from one SMS provider, and nothing more.

A provider turns its webhooks into the normalised ``Inbound`` or ``StatusReport``, checks their
signatures, answers inline, and describes a REST send as a plain ``RestRequest`` (the adapter
owns the HTTP client, the retries, the backoff and the rate limit, so every provider gets them
the same). A new provider is one module with one subclass of ``Provider``; see docs/sms.md.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from ..config import AccountConfig


class SignatureError(Exception):
    """The webhook's signature is missing, wrong, or outside the replay window (answered 403)."""


class MalformedWebhook(Exception):
    """The webhook cannot be read (answered 400)."""


class SendFailed(Exception):
    """The provider did not take an outbound message.

    ``permanent``: retrying cannot help (a 4xx, an invalid number); otherwise the adapter retries,
    after ``retry_after`` seconds when the provider said so."""

    def __init__(self, reason: str, *, permanent: bool, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.permanent = permanent
        self.retry_after = retry_after
        self.status = status


@dataclass
class WebhookRequest:
    """One webhook as received: ``url`` is the public URL the provider called (with its query)."""

    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @cached_property
    def query(self) -> dict[str, list[str]]:
        return _parse_pairs(urlsplit(self.url).query, "query string")

    @cached_property
    def form(self) -> dict[str, list[str]]:
        """The form-encoded body (every value of a repeated name, in order)."""
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedWebhook("the form body is not valid UTF-8") from None
        return _parse_pairs(text, "form body")

    @cached_property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedWebhook(f"the body is not valid JSON: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json
        if not isinstance(data, dict):
            raise MalformedWebhook(f"the JSON body must be an object, not {type(data).__name__}")
        return data


def _parse_pairs(text: str, what: str) -> dict[str, list[str]]:
    """``name=value&...`` as ``parse_qs(..., strict_parsing=True)`` reads it, with the unquoting
    skipped for the parts that need none: this runs for every webhook, and most parts are plain."""
    out: dict[str, list[str]] = {}
    if not text:
        return out
    try:
        for pair in text.split("&"):
            name, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"bad field {pair!r}")
            if "+" in name:
                name = name.replace("+", " ")
            if "%" in name:
                name = unquote(name, errors="strict")
            if "+" in value:
                value = value.replace("+", " ")
            if "%" in value:
                value = unquote(value, errors="strict")
            found = out.get(name)
            if found is None:
                out[name] = [value]
            else:
                found.append(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedWebhook(f"broken {what} encoding: {exc}") from None
    return out


def first(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def flat(params: Mapping[str, list[str]]) -> dict[str, Any]:
    """Form parameters for ``raw``: one value as a string, a repeated one as a list."""
    return {k: v[0] if len(v) == 1 else list(v) for k, v in params.items()}


def check_timestamp(value: str | None, window: float, what: str) -> None:
    """Refuse a missing timestamp, or one further than ``window`` seconds from now (replay)."""
    if value is None:
        raise SignatureError(f"missing {what}")
    try:
        stamp = float(value)
    except ValueError:
        raise SignatureError(f"{what} {value!r} is not a number of seconds") from None
    if abs(time.time() - stamp) > window:
        raise SignatureError(f"{what} is outside the replay window of {window:g} s")


@dataclass
class Inbound:
    """A text received, in the provider's words turned into the spec's (docs/specs/sms.md)."""

    sender: str
    recipient: str
    body: str
    message_id: str
    raw: dict[str, Any]
    media: list[dict[str, str | None]] = field(default_factory=list)
    segments: int | None = None
    encoding: str | None = None


STATUSES = ("queued", "sent", "delivered", "undelivered", "failed", "read", "unknown")


@dataclass
class StatusReport:
    """A delivery report; ``status`` is one of ``STATUSES``."""

    message_id: str | None
    status: str
    provider_status: str
    sender: str | None
    recipient: str | None
    raw: dict[str, Any]
    error_code: str | None = None
    error: str | None = None


@dataclass
class OutboundSms:
    """One text to send, numbers already in E.164."""

    to: str
    sender: str
    body: str
    media: list[str]
    idempotency_key: str
    encoding: str = "GSM-7"
    status_url: str | None = None


@dataclass
class RestRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class Provider(abc.ABC):
    """One SMS provider. One object per configured account, made at start."""

    name: ClassVar[str]
    #: the webhook's answer can carry replies (TwiML); otherwise replies go out over REST
    inline_replies: ClassVar[bool] = False
    #: methods the webhook accepts (Vonage's SMS API may call with GET)
    methods: ClassVar[tuple[str, ...]] = ("POST",)
    #: the REST API's base URL when the account sets no ``api_url``
    default_api_url: ClassVar[str | None] = None
    #: account keys that must be set for this provider (checked when the config is loaded)
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, account: AccountConfig) -> None:
        self.account = account
        self.api_url = (account.api_url or self.default_api_url or "").rstrip("/")

    @classmethod
    def check(cls, account: AccountConfig) -> None:
        """Raise ``ValueError`` naming what this provider needs and the account lacks."""
        missing = [key for key in cls.required if getattr(account, key) in (None, "")]
        if missing:
            raise ValueError(f"provider {cls.name!r} needs {', '.join(repr(k) for k in missing)}")

    def secret(self, key: str) -> str:
        value = getattr(self.account, key)
        return value.get_secret_value() if value is not None else ""

    @abc.abstractmethod
    def verify(self, request: WebhookRequest) -> None:
        """Raise ``SignatureError`` unless the request is signed by the provider."""

    @abc.abstractmethod
    def parse(self, request: WebhookRequest) -> Inbound | StatusReport:
        """The message or status report in a verified request; ``MalformedWebhook`` otherwise."""

    def answer(self, replies: list[OutboundSms]) -> tuple[str, bytes]:
        """``(content type, body)`` of the webhook's 2xx answer, carrying ``replies`` when
        ``inline_replies`` (the adapter passes none otherwise)."""
        return "text/plain; charset=utf-8", b""

    @abc.abstractmethod
    def send_request(self, sms: OutboundSms) -> RestRequest:
        """The REST call that sends ``sms``."""

    @abc.abstractmethod
    def sent(self, status: int, headers: Mapping[str, str], body: bytes) -> str:
        """The provider's message id from its answer to ``send_request``; raise ``SendFailed``
        when the answer says the message was not taken."""

    # -- helpers for subclasses --------------------------------------------------------------
    @staticmethod
    def http_failure(status: int, headers: Mapping[str, str], body: bytes) -> SendFailed:
        """The usual reading of a non-2xx answer: 429 and 5xx are worth a retry, other codes not."""
        text = body[:300].decode("utf-8", "replace").strip()
        retry_after = _retry_after(headers.get("retry-after"))
        transient = status == 429 or status >= 500
        return SendFailed(f"HTTP {status}: {text}" if text else f"HTTP {status}", permanent=not transient,
                          retry_after=retry_after, status=status)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the usual backoff applies
