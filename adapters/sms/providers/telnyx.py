"""Telnyx messaging (API v2): JSON webhooks signed with Ed25519, the ``/v2/messages`` REST API.

Telnyx signs ``<telnyx-timestamp>|<body>`` with its Ed25519 key; the account's ``public_key`` is
the base64 public key from the Telnyx portal. The signature is checked with the ``cryptography``
package. A timestamp outside ``replay_window`` is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..config import AccountConfig
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
    check_timestamp,
)

_STATUS = {
    "queued": "queued", "sending": "sent", "sent": "sent", "delivered": "delivered",
    "sending_failed": "failed", "delivery_failed": "undelivered", "delivery_unconfirmed": "unknown",
}


def _number(party: Any) -> str | None:
    if isinstance(party, dict) and isinstance(party.get("phone_number"), str):
        return party["phone_number"]
    return None


class TelnyxProvider(Provider):
    name = "telnyx"
    default_api_url = "https://api.telnyx.com"
    required = ("public_key",)

    def __init__(self, account: AccountConfig) -> None:
        super().__init__(account)
        self.key = self.load_key(account.public_key or "")

    @classmethod
    def check(cls, account: AccountConfig) -> None:
        super().check(account)
        cls.load_key(account.public_key or "")

    @staticmethod
    def load_key(text: str) -> Ed25519PublicKey:
        try:
            raw = base64.b64decode(text, validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise ValueError("'public_key' must be the base64 Ed25519 public key (32 bytes)") from None

    def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get("telnyx-signature-ed25519")
        if not signature:
            raise SignatureError("missing telnyx-signature-ed25519 header")
        timestamp = request.headers.get("telnyx-timestamp")
        check_timestamp(timestamp, self.account.replay_window, "telnyx-timestamp")
        try:
            raw = base64.b64decode(signature, validate=True)
        except binascii.Error:
            raise SignatureError("telnyx-signature-ed25519 is not base64") from None
        try:
            self.key.verify(raw, f"{timestamp}|".encode() + request.body)
        except InvalidSignature:
            raise SignatureError("telnyx-signature-ed25519 does not match") from None

    def parse(self, request: WebhookRequest) -> Inbound | StatusReport:
        data = request.json_object()
        event = data.get("data")
        if not isinstance(event, dict) or not isinstance(event.get("payload"), dict):
            raise MalformedWebhook("missing 'data.payload'")
        kind = event.get("event_type")
        payload = event["payload"]
        message_id = payload.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise MalformedWebhook("missing 'data.payload.id'")
        to = payload.get("to")
        first_to = to[0] if isinstance(to, list) and to else to
        if kind in ("message.sent", "message.finalized"):
            status = first_to.get("status", "unknown") if isinstance(first_to, dict) else "unknown"
            errors = payload.get("errors") or []
            error = errors[0] if errors and isinstance(errors[0], dict) else {}
            return StatusReport(
                message_id=message_id, status=_STATUS.get(status, "unknown"), provider_status=status,
                sender=_number(payload.get("from")), recipient=_number(first_to), raw=data,
                error_code=str(error["code"]) if "code" in error else None, error=error.get("title") or error.get("detail"),
            )
        if kind != "message.received":
            raise MalformedWebhook(f"unsupported event_type {kind!r}")
        sender, recipient = _number(payload.get("from")), _number(first_to)
        if not sender:
            raise MalformedWebhook("missing 'from.phone_number'")
        if not recipient:
            raise MalformedWebhook("missing 'to[0].phone_number'")
        media = [
            {"url": m["url"], "content_type": m.get("content_type")}
            for m in payload.get("media") or [] if isinstance(m, dict) and isinstance(m.get("url"), str)
        ]
        parts = payload.get("parts")
        return Inbound(
            sender=sender, recipient=recipient, body=str(payload.get("text") or ""), message_id=message_id, raw=data,
            media=media, segments=parts if isinstance(parts, int) else None, encoding=payload.get("encoding"),
        )

    def send_request(self, sms: OutboundSms) -> RestRequest:
        payload: dict[str, Any] = {"from": sms.sender, "to": sms.to, "text": sms.body}
        if sms.media:
            payload["media_urls"] = sms.media
        if sms.status_url:
            payload["webhook_url"] = sms.status_url
        return RestRequest(
            "POST", f"{self.api_url}/v2/messages",
            {"authorization": f"Bearer {self.secret('auth_token')}", "content-type": "application/json"},
            json.dumps(payload, ensure_ascii=False).encode(),
        )

    def sent(self, status: int, headers: Mapping[str, str], body: bytes) -> str:
        if not 200 <= status < 300:
            raise self.http_failure(status, headers, body)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        found = data.get("data") if isinstance(data, dict) else None
        if not isinstance(found, dict) or not found.get("id"):
            raise SendFailed(f"Telnyx's answer has no message id: {body[:200]!r}", permanent=True, status=status)
        return str(found["id"])
