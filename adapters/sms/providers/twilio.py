"""Twilio Programmable Messaging: form webhooks signed with ``X-Twilio-Signature``, TwiML replies,
the Messages REST API.

The signature is HMAC over the URL Twilio called followed by every POST parameter (names sorted,
each name then its value). The key is the account's auth token (HMAC-SHA1); when the request
carries ``X-Twilio-Webhooks-Signature-Settings`` it names the algorithm (HMAC-SHA256) and the key
is the shared webhook key (``signing_secret``). A JSON body is not in the signature: the URL holds
its SHA-256 in the ``bodySHA256`` query parameter instead. Twilio is not consistent about a
default port in the signed URL, so both forms are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from .base import (
    Inbound,
    MalformedWebhook,
    OutboundSms,
    Provider,
    RestRequest,
    SendFailed,
    SignatureError,
    StatusReport,
    WebhookRequest,
    first,
    flat,
)

_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_STATUS = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued", "sending": "sent", "sent": "sent",
    "delivered": "delivered", "undelivered": "undelivered", "failed": "failed", "canceled": "failed", "read": "read",
}


def _algorithm(settings: str) -> str:
    for part in settings.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == "algorithm":
            return value.strip().upper()
    return "HMAC_SHA1"


def _other_port_form(url: str) -> str:
    """The same URL with its default port added, or its port removed."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    if parts.port is None:
        return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0]))


class TwilioProvider(Provider):
    name = "twilio"
    inline_replies = True
    default_api_url = "https://api.twilio.com"
    required = ("account_id", "auth_token")

    def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get("x-twilio-signature")
        if not signature:
            raise SignatureError("missing X-Twilio-Signature header")
        settings = request.headers.get("x-twilio-webhooks-signature-settings")
        if settings:
            algorithm = _algorithm(settings)
            if algorithm not in _ALGORITHMS:
                raise SignatureError(f"unsupported signature algorithm {algorithm!r}")
            key = self.secret("signing_secret")
            if not key:
                raise SignatureError("the request is signed with a shared key but the account has no 'signing_secret'")
        else:
            algorithm, key = "HMAC_SHA1", self.secret("auth_token")
        if request.content_type == "application/json":
            body_hash = first(request.query, "bodySHA256")
            if body_hash is None:
                raise SignatureError("a JSON webhook without the bodySHA256 query parameter")
            if not hmac.compare_digest(body_hash.lower(), hashlib.sha256(request.body).hexdigest()):
                raise SignatureError("bodySHA256 does not match the body")
            params: Mapping[str, list[str]] = {}
        else:
            params = request.form
        tail = "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))
        digest, given = _ALGORITHMS[algorithm], signature.strip().encode()
        # the URL as called first; the other port form (computed only then) for Twilio's inconsistency
        for url in (request.url, None):
            mac = hmac.new(key.encode(), ((url or _other_port_form(request.url)) + tail).encode(), digest).digest()
            if hmac.compare_digest(base64.b64encode(mac), given):
                return
        raise SignatureError(f"X-Twilio-Signature does not match ({algorithm} over the URL and parameters)")

    def parse(self, request: WebhookRequest) -> Inbound | StatusReport:
        if request.content_type == "application/json":
            data = request.json_object()
            params = {k: [v if isinstance(v, str) else json.dumps(v)] for k, v in data.items()}
        else:
            params = request.form
        sid = first(params, "MessageSid") or first(params, "SmsSid")
        if not sid:
            raise MalformedWebhook("missing MessageSid")
        status = first(params, "MessageStatus")
        if status is not None:
            return StatusReport(
                message_id=sid, status=_STATUS.get(status.lower(), "unknown"), provider_status=status,
                sender=first(params, "From"), recipient=first(params, "To"), raw=flat(params),
                error_code=first(params, "ErrorCode") or None, error=first(params, "ErrorMessage") or None,
            )
        sender, recipient = first(params, "From"), first(params, "To")
        if not sender:
            raise MalformedWebhook("missing From")
        if not recipient:
            raise MalformedWebhook("missing To")
        media = []
        try:
            count = int(first(params, "NumMedia") or 0)
        except ValueError:
            raise MalformedWebhook("NumMedia is not a number") from None
        for i in range(count):
            url = first(params, f"MediaUrl{i}")
            if url:
                media.append({"url": url, "content_type": first(params, f"MediaContentType{i}")})
        segments = first(params, "NumSegments")
        return Inbound(
            sender=sender, recipient=recipient, body=first(params, "Body") or "", message_id=sid, raw=flat(params),
            media=media, segments=int(segments) if segments and segments.isdigit() else None,
        )

    def answer(self, replies: list[OutboundSms]) -> tuple[str, bytes]:
        parts = ['<?xml version="1.0" encoding="UTF-8"?><Response>']
        for sms in replies:
            parts.append("<Message>")
            if sms.body:
                parts.append(f"<Body>{escape(sms.body)}</Body>")
            parts.extend(f"<Media>{escape(url)}</Media>" for url in sms.media)
            parts.append("</Message>")
        parts.append("</Response>")
        return "application/xml; charset=utf-8", "".join(parts).encode()

    def send_request(self, sms: OutboundSms) -> RestRequest:
        form: list[tuple[str, str]] = [("To", sms.to), ("From", sms.sender)]
        if sms.body:
            form.append(("Body", sms.body))
        form.extend(("MediaUrl", url) for url in sms.media)
        if sms.status_url:
            form.append(("StatusCallback", sms.status_url))
        sid = self.account.account_id or ""
        auth = base64.b64encode(f"{sid}:{self.secret('auth_token')}".encode()).decode()
        return RestRequest(
            "POST", f"{self.api_url}/2010-04-01/Accounts/{sid}/Messages.json",
            {
                "authorization": f"Basic {auth}",
                "content-type": "application/x-www-form-urlencoded",
                "i-twilio-idempotency-token": sms.idempotency_key,
            },
            urlencode(form).encode(),
        )

    def sent(self, status: int, headers: Mapping[str, str], body: bytes) -> str:
        if not 200 <= status < 300:
            raise self.http_failure(status, headers, body)
        data: Any = _json(body)
        sid = data.get("sid") if isinstance(data, dict) else None
        if not sid:
            raise SendFailed(f"Twilio's answer has no message sid: {body[:200]!r}", permanent=True, status=status)
        return str(sid)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
