"""The phone simulator of the local showcase: texts typed on the dashboard travel the real SMS path.

config/gateway.yaml routes ``/phone/<action>`` here, ahead of Django, and points the SMS
adapter's ``api_url`` back at it, so no provider account is needed:

* ``POST /phone/send`` ``{"from", "body"}`` (the dashboard's phone): signed as the generic
  provider signs and posted to the gateway's own webhook, so verification, routing, dedup and
  acknowledgement run exactly as for a real provider;
* ``POST /phone/outbound`` (the SMS adapter's REST send, as to a provider): the signature is
  checked, the text shown on the dashboard (the page puts it on the phone it is addressed to: the
  customer's, or the on-call phone of the alerts bridge), and a message id returned as a provider does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Any

import aiohttp
from dashboard.live import abroadcast
from django.conf import settings

WEBHOOK = "/sms/in"

Scope = dict[str, Any]


def _secret() -> bytes:
    # the same variable and default as the SMS adapter's signing_secret in config/gateway.yaml
    return os.environ.get("GATEWAY_SMS_SECRET", "demo-only-secret").encode()


def _signature(timestamp: str, body: bytes) -> str:
    return hmac.new(_secret(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def app(scope: Scope, receive: Any, send: Any) -> None:
    body = await _body(receive)
    if scope["method"] != "POST":
        await _answer(send, 405, {"error": "POST only"})
    elif scope["path"].endswith("/send"):
        await _text_from_the_phone(scope, body, send)
    elif scope["path"].endswith("/outbound"):
        await _text_to_the_phone(scope, body, send)
    else:
        await _answer(send, 404, {"error": "POST /phone/send or /phone/outbound"})


async def _text_from_the_phone(scope: Scope, body: bytes, send: Any) -> None:
    try:
        data = json.loads(body)
        sender, text = str(data["from"]).strip(), str(data["body"])
    except (ValueError, KeyError, TypeError):
        await _answer(send, 400, {"error": 'send {"from": "+447700900123", "body": "..."}'})
        return
    payload = json.dumps({"id": f"sim-{secrets.token_hex(6)}", "from": sender, "to": settings.SMS_NUMBER,
                          "body": text}).encode()
    stamp = str(int(time.time()))
    host, port = scope["server"][:2]
    async with aiohttp.ClientSession() as session, session.post(f"http://{host}:{port}{WEBHOOK}", data=payload, headers={
        "content-type": "application/json", "x-timestamp": stamp, "x-signature": _signature(stamp, payload),
    }) as reply:
        await _answer(send, 200 if reply.status < 300 else 502, {"webhook_status": reply.status})


async def _text_to_the_phone(scope: Scope, body: bytes, send: Any) -> None:
    headers = dict(scope["headers"])
    stamp = headers.get(b"x-timestamp", b"").decode()
    given = headers.get(b"x-signature", b"").decode()
    if not stamp or not hmac.compare_digest(given, _signature(stamp, body)):
        await _answer(send, 403, {"error": "bad signature"})
        return
    data: dict[str, Any] = json.loads(body)
    await abroadcast("phone", {"to": data.get("to"), "from": data.get("from"), "body": data.get("body")})
    await _answer(send, 200, {"id": f"out-{secrets.token_hex(6)}"})


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Any, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
