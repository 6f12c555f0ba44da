"""Helpers for the SMS adapter tests: a gateway on a free port, test applications, request signers
built on the providers' own SDKs, and a local aiohttp server that speaks each provider's REST wire
format (the one peer that cannot run here is the provider's cloud)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from aiohttp import web
from gateway_helpers import eventually  # noqa: F401 - re-exported for the sms tests
from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator
from vonage_http_client.auth import Auth as VonageAuth

from gateway.server import Gateway

TWILIO_SID = "AC0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
SHARED_KEY = "twilio-shared-key-secret"
GENERIC_SECRET = "generic-shared-secret"
VONAGE_SECRET = "vonage-signature-secret-of-32-bytes!"
TELNYX_KEY = SigningKey(bytes(range(32)))
TELNYX_PUBLIC = base64.b64encode(bytes(TELNYX_KEY.verify_key)).decode()
OUR_NUMBER = "+15005550006"
UK_SENDER = "+447700900123"
US_SENDER = "+14155550100"

# -- what the test applications saw ------------------------------------------------------------
RECEIVED: list[tuple[dict[str, Any], dict[str, Any]]] = []
CONTROL: dict[str, Any] = {}


def reset() -> None:
    RECEIVED.clear()
    CONTROL.clear()


def sms_only(app):
    @functools.wraps(app)
    async def wrapper(scope, receive, send):
        if scope["type"] != "sms":
            raise ValueError("this test app only serves sms scopes")
        await app(scope, receive, send)

    return wrapper


@sms_only
async def ok(scope, receive, send):
    event = await receive()
    RECEIVED.append((scope, event))
    assert (await receive())["type"] == "sms.disconnect"


@sms_only
async def echo(scope, receive, send):
    """Answers the sender (an inline reply where the provider has one)."""
    event = await receive()
    RECEIVED.append((scope, event))
    await send({"type": "sms.send", "to": event["from"], "body": f"you said: {event['body']}"})


@sms_only
async def forward(scope, receive, send):
    """Texts someone else (always a REST send); CONTROL['to'] says who."""
    event = await receive()
    RECEIVED.append((scope, event))
    await send({"type": "sms.send", "to": CONTROL.get("to", US_SENDER), "body": f"fwd: {event['body']}"})


@sms_only
async def bad_send(scope, receive, send):
    """Sends an sms.send without a body; records what send() raised."""
    event = await receive()
    try:
        await send({"type": "sms.send", "to": event["from"]})
    except Exception as exc:
        RECEIVED.append((scope, {"type": "raised", "error": str(exc)}))
        raise


@sms_only
async def fail(scope, receive, send):
    event = await receive()
    RECEIVED.append((scope, event))
    raise RuntimeError("the handler raised")


@sms_only
async def slow_then_done(scope, receive, send):
    """Takes CONTROL['sleep'] seconds, then records that it finished."""
    event = await receive()
    RECEIVED.append((scope, event))
    await asyncio.sleep(CONTROL.get("sleep", 30))
    RECEIVED.append((scope, {"type": "done"}))


@sms_only
async def slow_forward(scope, receive, send):
    """Takes CONTROL['sleep'] seconds, then texts CONTROL['to'] over REST."""
    event = await receive()
    RECEIVED.append((scope, event))
    await asyncio.sleep(CONTROL.get("sleep", 30))
    await send({"type": "sms.send", "to": CONTROL["to"], "body": "after a while"})


@sms_only
async def slow(scope, receive, send):
    event = await receive()
    RECEIVED.append((scope, event))
    await asyncio.sleep(CONTROL.get("sleep", 30))


# -- the gateway ---------------------------------------------------------------------------------
def config(sms: str, routes: str, extra: str = "") -> str:
    return f"""\
adapters:
  http: {{listen: "127.0.0.1:0"}}
  sms: {sms}
routes:
  sms:
{routes}
{extra}"""


@contextlib.asynccontextmanager
async def running(text: str) -> AsyncIterator[tuple[Gateway, str]]:
    """A started gateway and the base URL of its http listener."""
    gw = Gateway.from_text(text)
    await gw.start()
    try:
        yield gw, f"http://{gw.addresses['http'][0]}"
    finally:
        await gw.stop(drain=1)


def metric(gw: Gateway, name: str, **labels: str) -> float:
    value = gw.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- signers: the providers' own SDKs where they have one ---------------------------------------
def twilio_form(url: str, params: dict[str, str], *, token: str = TWILIO_TOKEN, algorithm: str | None = None) -> dict[str, str]:
    """Headers of a Twilio form webhook, signed by the twilio package's RequestValidator."""
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": RequestValidator(token).compute_signature(url, params, algorithm),
    }
    if algorithm:
        headers["x-twilio-webhooks-signature-settings"] = f"key=webhooks_sharedkey_test,algorithm={algorithm}"
    return headers


def twilio_message(sender: str = UK_SENDER, body: str = "hello", sid: str = "SM0001", **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": OUR_NUMBER,
            "Body": body, "NumMedia": "0", "NumSegments": "1", **extra}


def generic_headers(body: bytes, *, secret: str = GENERIC_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The generic provider has no SDK: signed here as its documentation says."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-timestamp": stamp, "x-signature": signature}


def telnyx_headers(body: bytes, *, timestamp: int | None = None, key: SigningKey = TELNYX_KEY) -> dict[str, str]:
    """Signed with PyNaCl, as Telnyx signs: ``<timestamp>|<body>``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(f"{stamp}|".encode() + body).signature
    return {"content-type": "application/json", "telnyx-timestamp": stamp,
            "telnyx-signature-ed25519": base64.b64encode(signature).decode()}


def telnyx_received(text: str = "hello", sender: str = UK_SENDER, message_id: str = "tx-1") -> bytes:
    return json.dumps({"data": {"event_type": "message.received", "id": "ev-1", "payload": {
        "id": message_id, "text": text, "from": {"phone_number": sender}, "to": [{"phone_number": OUR_NUMBER}],
        "media": [], "parts": 1, "encoding": "GSM-7",
    }}}).encode()


def vonage_signed(params: dict[str, str], method: str = "sha256") -> dict[str, str]:
    """Vonage SMS API parameters with ``sig``, made by vonage's own ``Auth.sign_params``."""
    auth = VonageAuth(api_key="key", signature_secret=VONAGE_SECRET, signature_method=method)
    signed = dict(params)
    signed.setdefault("timestamp", str(int(time.time())))
    signed["sig"] = auth.sign_params(dict(signed))
    return signed


def vonage_jwt(body: bytes, *, iat: int | None = None, secret: str = VONAGE_SECRET) -> str:
    """A Messages API bearer token: HS256 (PyJWT, which vonage-jwt uses) with ``payload_hash``."""
    claims = {"iat": int(time.time()) if iat is None else iat, "jti": "test", "iss": "Vonage",
              "payload_hash": hashlib.sha256(body).hexdigest(), "api_key": "key", "application_id": "app"}
    return jwt.encode(claims, secret, algorithm="HS256")


async def post(url: str, *, content: bytes | str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.post(url, content=content, headers=headers)


async def post_twilio(base: str, params: dict[str, str], path: str = "/sms/twilio", **sign: Any) -> httpx.Response:
    url = base + path
    return await post(url, content=urlencode(params), headers=twilio_form(url, params, **sign))


# -- the provider cloud: a local server speaking each REST API --------------------------------
@dataclass
class Planned:
    status: int = 0  # 0: the provider's usual success answer
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hold: asyncio.Event | None = None  # answer only once the test sets it


class FakeCloud:
    """Answers Twilio's Messages API, Telnyx's v2 messages, Vonage's SMS API and a generic JSON
    endpoint; records every request; ``plan`` queues special answers (429, 5xx, 400, slow)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.planned: list[Planned] = []
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._ids = 0

    def plan(self, *answers: Planned) -> None:
        self.planned.extend(answers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._twilio)
        app.router.add_post("/v2/messages", self._telnyx)
        app.router.add_post("/sms/json", self._vonage)
        app.router.add_post("/generic/send", self._generic)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _record(self, request: web.Request, kind: str) -> tuple[Planned | None, str]:
        body = await request.read()
        entry = {"kind": kind, "path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        if request.content_type == "application/json":
            entry["json"] = json.loads(body)
        else:
            entry["form"] = dict((await request.post()).items())
        self.requests.append(entry)
        self._ids += 1
        planned = self.planned.pop(0) if self.planned else None
        if planned is not None and planned.delay:
            await asyncio.sleep(planned.delay)
        if planned is not None and planned.hold is not None:
            await planned.hold.wait()
        return planned, f"{kind}-{self._ids}"

    @staticmethod
    def _special(planned: Planned | None) -> web.Response | None:
        if planned is None or not planned.status:
            return None
        return web.Response(status=planned.status, body=planned.body or b'{"message": "planned failure"}',
                            headers=planned.headers, content_type="application/json")

    async def _twilio(self, request: web.Request) -> web.Response:
        planned, sid = await self._record(request, "twilio")
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode():
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        special = self._special(planned)  # not `or`: an aiohttp 3.8 Response with no state is falsy
        return special if special is not None else web.json_response({"sid": f"SM{sid}", "status": "queued"}, status=201)

    async def _telnyx(self, request: web.Request) -> web.Response:
        planned, mid = await self._record(request, "telnyx")
        special = self._special(planned)
        return special if special is not None else web.json_response({"data": {"id": mid, "record_type": "message"}})

    async def _vonage(self, request: web.Request) -> web.Response:
        planned, mid = await self._record(request, "vonage")
        special = self._special(planned)
        if special is not None:
            return special
        return web.json_response({"message-count": "1", "messages": [{"status": "0", "message-id": mid, "to": "x"}]})

    async def _generic(self, request: web.Request) -> web.Response:
        planned, mid = await self._record(request, "generic")
        return self._special(planned) or web.json_response({"id": mid})


@contextlib.asynccontextmanager
async def cloud() -> AsyncIterator[FakeCloud]:
    fake = FakeCloud()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def twilio_account(api_url: str = "http://127.0.0.1:9", extra: str = "") -> str:
    return (f'{{provider: twilio, webhook: /sms/twilio, account_id: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}", '
            f'numbers: ["{OUR_NUMBER}"], api_url: "{api_url}", rate_limit: 0, backoff: 0.01{extra}}}')


# -- a consumer ------------------------------------------------------------------------------------
from gateway.consumers import AsyncSmsConsumer  # after the plain apps it sits beside


class TextConsumer(AsyncSmsConsumer):
    """Replies to texts, forwards ``fwd ...`` to CONTROL['to'], raises on ``raise``, records reports."""

    async def message(self, body, **info):
        RECEIVED.append((dict(self.scope), {"body": body, **info, "kwargs": self.kwargs}))
        if body == "raise":
            raise RuntimeError("the consumer raised")
        if body.startswith("fwd "):
            await self.send_sms(CONTROL["to"], body[4:])
        else:
            await self.reply(f"thanks for: {body}")

    async def status(self, status, **info):
        RECEIVED.append((dict(self.scope), {"status": status, **info}))


# -- a provider plugin, written as docs/sms.md shows ----------------------------------------------
from gateway_adapters.sms import Inbound, Provider, RestRequest, SignatureError, StatusReport


class AcmeProvider(Provider):
    name = "acme"
    required = ("signing_secret",)

    def verify(self, request):
        if request.headers.get("x-acme-token") != self.secret("signing_secret"):
            raise SignatureError("bad X-Acme-Token")

    def parse(self, request):
        data = request.json_object()
        if "state" in data:
            return StatusReport(message_id=data["ref"], status="delivered" if data["state"] == "OK" else "failed",
                                provider_status=data["state"], sender=None, recipient=data.get("msisdn"), raw=data)
        return Inbound(sender=data["msisdn"], recipient=data["shortcode"], body=data["text"], message_id=data["ref"], raw=data)

    def send_request(self, sms):
        return RestRequest("POST", f"{self.api_url}/generic/send", {"content-type": "application/json"},
                           json.dumps({"to": sms.to, "text": sms.body, "mode": self.account.options.get("mode")}).encode())

    def sent(self, status, headers, body):
        if status != 200:
            raise self.http_failure(status, headers, body)
        return json.loads(body)["id"]


class NotAProvider:
    pass
