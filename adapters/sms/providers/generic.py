"""Generic JSON: for aggregators and in-house gateways that post JSON and take JSON.

Both directions are signed the same way: ``X-Timestamp`` (Unix seconds) and ``X-Signature``, the
hex HMAC-SHA256 of ``<timestamp>.<body>`` with the shared ``signing_secret``. A timestamp outside
``replay_window`` is refused, so a captured request cannot be played again later.

Inbound message: ``{"id", "from", "to", "body", "media": [{"url", "content_type"}]}``; status
report: ``{"id", "status", "from", "to", "error_code", "error"}`` (``status`` in the spec's
words). Outbound: ``POST api_url`` with ``{"from", "to", "body", "media", "status_url"}`` and an
``Idempotency-Key`` header; the answer is ``{"id": ...}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from .base import (
    STATUSES,
    Inbound,
    MalformedWebhook,
    OutboundSms,
    Provider,
    RestRequest,
    SendFailed,
    SignatureError,
    StatusReport,
    WebhookRequest,
    check_timestamp,
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Signature`` of ``body`` sent at ``timestamp``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _text(data: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise MalformedWebhook(f"missing {key!r}")
        return None
    if not isinstance(value, (str, int)):
        raise MalformedWebhook(f"{key!r} must be a string, not {type(value).__name__}")
    return str(value)


class GenericProvider(Provider):
    name = "generic"
    required = ("signing_secret",)

    def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get("x-signature")
        if not signature:
            raise SignatureError("missing X-Signature header")
        timestamp = request.headers.get("x-timestamp")
        check_timestamp(timestamp, self.account.replay_window, "X-Timestamp")
        assert timestamp is not None
        expected = sign(self.secret("signing_secret"), timestamp, request.body)
        given = signature.strip().removeprefix("sha256=").lower()
        if not hmac.compare_digest(given, expected):
            raise SignatureError("X-Signature does not match")

    def parse(self, request: WebhookRequest) -> Inbound | StatusReport:
        data = request.json_object()
        if "status" in data:
            status = _text(data, "status") or "unknown"
            return StatusReport(
                message_id=_text(data, "id", required=False), status=status if status in STATUSES else "unknown",
                provider_status=status, sender=_text(data, "from", required=False), recipient=_text(data, "to", required=False),
                raw=data, error_code=_text(data, "error_code", required=False), error=_text(data, "error", required=False),
            )
        media = data.get("media") or []
        if not isinstance(media, list) or not all(isinstance(m, dict) and isinstance(m.get("url"), str) for m in media):
            raise MalformedWebhook("'media' must be a list of {url, content_type} objects")
        body = data.get("body", "")
        if not isinstance(body, str):
            raise MalformedWebhook(f"'body' must be a string, not {type(body).__name__}")
        return Inbound(
            sender=_text(data, "from") or "", recipient=_text(data, "to") or "", body=body,
            message_id=_text(data, "id") or "", raw=data,
            media=[{"url": m["url"], "content_type": m.get("content_type")} for m in media],
        )

    def send_request(self, sms: OutboundSms) -> RestRequest:
        if not self.api_url:
            raise SendFailed(f"account {self.account.label!r} has no 'api_url' to send to", permanent=True)
        payload: dict[str, Any] = {"from": sms.sender, "to": sms.to, "body": sms.body, "media": sms.media}
        if sms.status_url:
            payload["status_url"] = sms.status_url
        body = json.dumps(payload, ensure_ascii=False).encode()
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "idempotency-key": sms.idempotency_key,
            "x-timestamp": timestamp,
            "x-signature": sign(self.secret("signing_secret"), timestamp, body),
        }
        if self.account.auth_token is not None:
            headers["authorization"] = f"Bearer {self.secret('auth_token')}"
        return RestRequest("POST", self.api_url, headers, body)

    def sent(self, status: int, headers: Mapping[str, str], body: bytes) -> str:
        if not 200 <= status < 300:
            raise self.http_failure(status, headers, body)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data.get("id"):
            raise SendFailed(f"the answer has no message id: {body[:200]!r}", permanent=True, status=status)
        return str(data["id"])
