"""Vonage: the SMS API (signed parameters) and the Messages API (JWT), inbound and delivery reports;
outbound through the SMS API.

SMS API webhooks carry ``sig``: with ``signature_method: md5hash`` the MD5 of the parameters
(``&name=value``, names sorted, ``&`` and ``=`` in values replaced by ``_``) followed by the
signature secret; with ``md5``, ``sha1``, ``sha256`` or ``sha512`` the HMAC of the same text keyed
with the secret. Their ``timestamp`` parameter must lie within ``replay_window``.

Messages API webhooks carry ``Authorization: Bearer <JWT>``, HS256 with the signature secret, whose
``payload_hash`` claim is the SHA-256 of the body and whose ``iat`` must lie within the window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

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

_DIGESTS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_STATUS = {
    "accepted": "queued", "buffered": "queued", "submitted": "sent", "delivered": "delivered", "read": "read",
    "expired": "undelivered", "undeliverable": "undelivered", "failed": "failed", "rejected": "failed",
}
# SMS API answer codes that are worth another try: throttled, internal error, too many binds
_TRANSIENT = {"1", "5", "9"}


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class VonageProvider(Provider):
    name = "vonage"
    methods = ("POST", "GET")
    default_api_url = "https://rest.nexmo.com"
    required = ("signing_secret",)

    # -- verification ------------------------------------------------------------------------
    def verify(self, request: WebhookRequest) -> None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            self._verify_jwt(auth[7:].strip(), request.body)
            return
        params = self._params(request)
        sig = params.pop("sig", None)
        if not sig:
            raise SignatureError("missing 'sig' parameter (or a Messages API bearer token)")
        check_timestamp(params.get("timestamp"), self.account.replay_window, "'timestamp' parameter")
        text = "".join(f"&{k}={v.replace('&', '_').replace('=', '_')}" for k, v in sorted(params.items()))
        secret = self.secret("signing_secret")
        method = self.account.signature_method
        if method == "md5hash":
            expected = hashlib.md5((text + secret).encode()).hexdigest()
        else:
            expected = hmac.new(secret.encode(), text.encode(), _DIGESTS[method]).hexdigest()
        if not hmac.compare_digest(sig.lower(), expected):
            raise SignatureError(f"'sig' does not match ({method})")

    def _verify_jwt(self, token: str, body: bytes) -> None:
        try:
            head_b64, claims_b64, sig_b64 = token.split(".")
            header = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(claims_b64))
            given = _b64url(sig_b64)
        except (ValueError, binascii.Error):
            raise SignatureError("the bearer token is not a JWT") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise SignatureError("the bearer token is not signed with HS256")
        mac = hmac.new(self.secret("signing_secret").encode(), f"{head_b64}.{claims_b64}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, given):
            raise SignatureError("the bearer token's signature does not match")
        if not isinstance(claims, dict):
            raise SignatureError("the bearer token has no claims")
        check_timestamp(None if claims.get("iat") is None else str(claims["iat"]), self.account.replay_window, "token 'iat'")
        if not hmac.compare_digest(str(claims.get("payload_hash", "")), hashlib.sha256(body).hexdigest()):
            raise SignatureError("the token's payload_hash does not match the body")

    # -- parsing -----------------------------------------------------------------------------
    def _params(self, request: WebhookRequest) -> dict[str, str]:
        """Query, form or JSON parameters, one value each."""
        merged = {k: v[-1] for k, v in request.query.items()}
        if request.method == "POST":
            if request.content_type == "application/json":
                merged.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in request.json_object().items()})
            elif request.body:
                merged.update({k: v[-1] for k, v in request.form.items()})
        return merged

    def parse(self, request: WebhookRequest) -> Inbound | StatusReport:
        if request.headers.get("authorization", "").lower().startswith("bearer "):
            return self._parse_messages_api(request.json_object())
        params = self._params(request)
        if "status" in params and "messageId" in params:
            status = params["status"]
            return StatusReport(
                message_id=params["messageId"], status=_STATUS.get(status, "unknown"), provider_status=status,
                sender=_plus(params.get("to")), recipient=_plus(params.get("msisdn")), raw=params,
                error_code=params.get("err-code") if params.get("err-code") not in (None, "0") else None,
            )
        for key in ("msisdn", "to", "messageId"):
            if not params.get(key):
                raise MalformedWebhook(f"missing {key!r}")
        total = params.get("concat-total")
        return Inbound(
            sender=_plus(params["msisdn"]) or "", recipient=_plus(params["to"]) or "", body=params.get("text", ""),
            message_id=params["messageId"], raw=params,
            segments=int(total) if total and total.isdigit() else None,
            encoding="UCS-2" if params.get("type") == "unicode" else ("GSM-7" if params.get("type") == "text" else None),
        )

    def _parse_messages_api(self, data: dict[str, Any]) -> Inbound | StatusReport:
        uuid = data.get("message_uuid")
        if not isinstance(uuid, str) or not uuid:
            raise MalformedWebhook("missing 'message_uuid'")
        if "status" in data:
            status = str(data["status"])
            found = data.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            return StatusReport(
                message_id=uuid, status=_STATUS.get(status, "unknown"), provider_status=status,
                sender=_plus(data.get("from")), recipient=_plus(data.get("to")), raw=data,
                error_code=str(error["type"]) if "type" in error else None, error=error.get("title") or error.get("detail"),
            )
        for key in ("from", "to"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise MalformedWebhook(f"missing {key!r}")
        found = data.get("sms")
        sms: dict[str, Any] = found if isinstance(found, dict) else {}
        parts = sms.get("num_messages")
        return Inbound(
            sender=_plus(data["from"]) or "", recipient=_plus(data["to"]) or "", body=str(data.get("text") or ""),
            message_id=uuid, raw=data, segments=int(parts) if parts and str(parts).isdigit() else None,
        )

    # -- sending -----------------------------------------------------------------------------
    def send_request(self, sms: OutboundSms) -> RestRequest:
        if sms.media:
            raise SendFailed("Vonage's SMS API cannot send media", permanent=True)
        form = {
            "api_key": self.account.account_id or "", "api_secret": self.secret("auth_token"),
            "from": sms.sender.lstrip("+"), "to": sms.to.lstrip("+"), "text": sms.body,
            "client-ref": sms.idempotency_key[:40],
        }
        if sms.encoding == "UCS-2":
            form["type"] = "unicode"
        if sms.status_url:
            form["callback"] = sms.status_url
            form["status-report-req"] = "1"
        return RestRequest("POST", f"{self.api_url}/sms/json", {"content-type": "application/x-www-form-urlencoded"},
                           urlencode(form).encode())

    def sent(self, status: int, headers: Mapping[str, str], body: bytes) -> str:
        if not 200 <= status < 300:
            raise self.http_failure(status, headers, body)
        try:
            data = json.loads(body)
            result = data["messages"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise SendFailed(f"Vonage's answer has no messages: {body[:200]!r}", permanent=True, status=status) from None
        code = str(result.get("status"))
        if code == "0":
            return str(result.get("message-id"))
        raise SendFailed(f"Vonage status {code}: {result.get('error-text', '')}", permanent=code not in _TRANSIENT, status=status)


def _plus(number: Any) -> str | None:
    """Vonage writes international numbers without the ``+``."""
    if not isinstance(number, str) or not number:
        return None
    return number if number.startswith("+") or not number.isdigit() else f"+{number}"



