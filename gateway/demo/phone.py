"""The demo's phone simulator: texts typed on the page travel the real SMS path.

The page posts ``{from, body}`` to ``/demo/phone/send``; this app signs it as the generic SMS
provider would and posts it to the gateway's own webhook (``/sms/in``), so verification,
routing and acknowledgement run exactly as for a real provider. Replies leave through the SMS
adapter's REST path, whose ``api_url`` points back here (``/demo/phone/outbound``): this app
checks their signature, answers with a message id as a provider does, and shows them on the page.
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

from gateway.layers import get_channel_layer
from gateway.types import Receive, Scope, Send

from .chat import FEED_GROUP

GATEWAY_NUMBER = "+15005550006"
WEBHOOK = "/sms/in"


def _secret() -> bytes:
    return os.environ.get("GATEWAY_SMS_SECRET", "demo-only-secret").encode()


def _signature(timestamp: str, body: bytes) -> str:
    return hmac.new(_secret(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await _body(receive)
    if scope["method"] != "POST":
        await _answer(send, 405, {"error": "POST only"})
    elif scope["path"].endswith("/send"):
        await _text_from_the_page(scope, body, send)
    else:
        await _text_from_the_gateway(scope, body, send)


async def _text_from_the_page(scope: Scope, body: bytes, send: Send) -> None:
    try:
        data = json.loads(body)
        sender, text = str(data["from"]), str(data["body"])
    except (ValueError, KeyError, TypeError):
        await _answer(send, 400, {"error": "send {\"from\": \"+447700900123\", \"body\": \"...\"}"})
        return
    payload = json.dumps({"id": f"sim-{secrets.token_hex(6)}", "from": sender, "to": GATEWAY_NUMBER, "body": text}).encode()
    stamp = str(int(time.time()))
    host, port = scope["server"][:2]
    url = f"http://{host}:{port}{WEBHOOK}"
    async with aiohttp.ClientSession() as session, session.post(url, data=payload, headers={
        "content-type": "application/json", "x-timestamp": stamp, "x-signature": _signature(stamp, payload),
    }) as reply:
        await _answer(send, 200 if reply.status < 300 else 502, {"webhook_status": reply.status})


async def _text_from_the_gateway(scope: Scope, body: bytes, send: Send) -> None:
    headers = dict(scope["headers"])
    stamp = headers.get(b"x-timestamp", b"").decode()
    given = headers.get(b"x-signature", b"").decode()
    if not stamp or not hmac.compare_digest(given, _signature(stamp, body)):
        await _answer(send, 403, {"error": "bad signature"})
        return
    data: dict[str, Any] = json.loads(body)
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(FEED_GROUP, {"type": "demo.event", "source": "sms", "text": f"to {data.get('to')}: {data.get('body')}"})
    await _answer(send, 200, {"id": f"out-{secrets.token_hex(6)}"})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
