"""gateway.testing: the communicators give the answers production gives, through the real router,
runner, event checks and adapter code; Channels tests switch to them by changing one import."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from email.message import EmailMessage

import channels.testing
import django
import pytest
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

import gateway.testing
from gateway.errors import InvalidEvent
from gateway.runner import Outcome
from gateway.testing import (
    EmailCommunicator,
    Harness,
    MqttCommunicator,
    SmsCommunicator,
    SmsStatusCommunicator,
    WebsocketCommunicator,
)
from gateway.testing.fixtures import free_ports


def ensure_django() -> None:
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
        django.setup()


# -- Channels: one test body, two imports --------------------------------------------------------
class Shout(AsyncJsonWebsocketConsumer):
    async def connect(self):
        if self.scope["query_string"] == b"deny=1":
            await self.close(code=4003)
            return
        await self.accept(subprotocol=(self.scope["subprotocols"] or [None])[0])

    async def receive_json(self, content, **kwargs):
        if content == "crash":
            raise ZeroDivisionError("the consumer crashed")
        if content != "quiet":
            await self.send_json({"shout": str(content).upper()})


class Hello(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(201, b"hello " + body, headers=[(b"content-type", b"text/plain")])


async def silent(scope, receive, send):
    await receive()
    await asyncio.sleep(30)


TESTING_MODULES = pytest.mark.parametrize("testing", [channels.testing, gateway.testing], ids=["channels", "gateway"])


@TESTING_MODULES
async def test_the_same_channels_test_passes_with_either_import(testing):
    ensure_django()
    communicator = testing.WebsocketCommunicator(Shout.as_asgi(), "/ws/?x=1", subprotocols=["v2"])
    assert await communicator.connect() == (True, "v2")
    await communicator.send_json_to("hi")
    assert await communicator.receive_json_from() == {"shout": "HI"}
    await communicator.send_to(text_data=json.dumps("quiet"))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()

    refused = testing.WebsocketCommunicator(Shout.as_asgi(), "/ws/?deny=1")
    assert await refused.connect() == (False, 4003)

    response = await testing.HttpCommunicator(Hello.as_asgi(), "POST", "/hello/", body=b"ada").get_response()
    assert response["status"] == 201
    assert response["body"] == b"hello ada"
    assert (b"content-type", b"text/plain") in response["headers"]


@TESTING_MODULES
async def test_app_exceptions_and_timeouts_surface_as_with_channels(testing):
    ensure_django()
    communicator = testing.WebsocketCommunicator(Shout.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_json_to("crash")
    with pytest.raises(ZeroDivisionError, match="the consumer crashed"):
        await communicator.receive_from()

    quiet = testing.HttpCommunicator(silent, "GET", "/")
    with pytest.raises(TimeoutError):
        await quiet.get_response(timeout=0.2)
    assert quiet.future.done()  # the app was cancelled, not left running


# -- the gateway's own checks apply ------------------------------------------------------------
async def test_an_invalid_event_fails_the_instance_as_in_production():
    async def wrong(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept", "subprotocol": b"not text"})

    communicator = WebsocketCommunicator(wrong, "/")
    with pytest.raises(InvalidEvent, match="subprotocol"):
        await communicator.connect()


ROUTED = """
adapters:
  http: {listen: "127.0.0.1:0"}
  mqtt: {mode: broker, listen: "127.0.0.1:0"}
  email: {smtp: {listen: "127.0.0.1:0", domains: [example.com]}}
  sms: {provider: generic, webhook: /sms, signing_secret: s3cret, numbers: ["+15005550006"]}
routes:
  websocket:
    - {path: "/rooms/<room>/", app: "testapps.testing_apps:room", name: room}
  mqtt:
    - {topic: "plant/+line/#rest", app: "testapps.testing_apps:plant", name: plant}
    - {topic: "slow/#", app: "testapps.testing_apps:slow", timeout: 0.2}
  email:
    - {to: "ticket+<id>@example.com", app: "testapps.testing_apps:ticket"}
    - {to: "slow@example.com", app: "testapps.testing_apps:slow", timeout: 0.2}
  sms:
    - {events: status, app: "testapps.testing_apps:report"}
    - {keyword: SLOW, app: "testapps.testing_apps:slow", timeout: 0.2}
    - {keyword: BOOM, app: "testapps.testing_apps:boom"}
    - {app: "testapps.testing_apps:text"}
"""


@pytest.fixture
def routed(tmp_path) -> Harness:
    path = tmp_path / "gateway.yaml"
    path.write_text(ROUTED)
    return Harness.from_file(path)


async def test_yaml_routes_give_captures_and_names(routed):
    communicator = WebsocketCommunicator(routed, "/rooms/lobby/")
    assert await communicator.connect() == (True, None)
    assert await communicator.receive_json_from() == {"room": "lobby", "route": "room"}
    await communicator.disconnect()
    nowhere = WebsocketCommunicator(routed, "/elsewhere/")
    assert await nowhere.connect() == (False, 1000)  # the http adapter's refusal of an unrouted path


async def test_mqtt_acknowledgement_and_publishes(routed):
    result = await MqttCommunicator(routed, "plant/3/oven/temp", b"250", qos=1, retain=True).deliver()
    assert result.acknowledged and result.matched and result.outcome is Outcome.OK
    assert result.published == [
        {"topic": "alerts/3", "payload": b'{"rest":"oven/temp","retain":true,"value":250}', "qos": 1, "retain": False, "properties": None},
    ]
    bad = await MqttCommunicator(routed, "plant/3/oven/temp", b"invalid", qos=1).deliver()
    assert not bad.acknowledged
    assert isinstance(bad.error, InvalidEvent)  # the app published to a topic with a wildcard
    slow = await MqttCommunicator(routed, "slow/x", b"", qos=1).deliver()
    assert (slow.acknowledged, slow.outcome) == (False, Outcome.TIMEOUT)
    unmatched = await MqttCommunicator(routed, "nobody/listens", b"x", qos=1).deliver()
    assert (unmatched.acknowledged, unmatched.matched, unmatched.outcome) == (True, False, None)


def mail(to: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Ada <ada@client.example>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("hello")
    return message


async def test_email_replies_250_451_550(routed):
    ok = await EmailCommunicator(routed, mail("ticket+42@example.com", "thanks")).deliver()
    assert ok.code == 250 and ok.outcome is Outcome.OK
    assert ok.sent == [{"type": "email.send", "to": ["ada@client.example"], "subject": "Re: ticket 42", "text": "noted"}]

    rejected = await EmailCommunicator(routed, mail("ticket+42@example.com", "spam")).deliver()
    assert rejected.reply == "550 5.7.1 no spam" and rejected.sent == []

    failed = await EmailCommunicator(routed, mail("ticket+0@example.com", "x")).deliver()
    assert failed.code == 451 and isinstance(failed.error, ZeroDivisionError)

    slow = await EmailCommunicator(routed, mail("slow@example.com", "x")).deliver()
    assert slow.code == 451 and slow.outcome is Outcome.TIMEOUT and "timed out" in slow.reply

    unrouted = await EmailCommunicator(routed, mail("nobody@example.com", "x")).deliver()
    assert unrouted.code == 550 and unrouted.outcome is None
    assert "5.1.1" in unrouted.rcpt_replies["nobody@example.com"]
    relay = await EmailCommunicator(routed, mail("ticket+1@elsewhere.example", "x")).deliver()
    assert relay.reply.startswith("550 5.7.1") and "relay access denied" in relay.reply


async def test_email_from_raw_bytes_with_an_envelope(routed):
    raw = b"From: a@b.example\r\nSubject: thanks\r\n\r\nbody\r\n"
    result = await EmailCommunicator(routed, raw, mail_from="bounce@b.example",
                                     rcpt_to=["ticket+7@example.com", "nobody@example.com"]).deliver()
    assert result.code == 250  # one recipient accepted at RCPT, the message delivered to it
    assert result.sent[0]["to"] == ["bounce@b.example"]
    assert result.rcpt_replies["nobody@example.com"].startswith("550 5.1.1")
    one_fails = await EmailCommunicator(routed, raw, mail_from="a@b.example",
                                        rcpt_to=["ticket+0@example.com", "ticket+7@example.com"]).deliver()
    assert one_fails.code == 451 and isinstance(one_fails.error, ZeroDivisionError)  # the failed one is reported
    bare_lf = await EmailCommunicator(routed, b"Subject: thanks\n\nbody\n", mail_from="a@b.example",
                                      rcpt_to="ticket+7@example.com").deliver()
    assert bare_lf.reply.startswith("550 5.6.0")  # smtp.bare_lf: reject, the default


async def test_sms_webhook_status_and_sends(routed):
    ok = await SmsCommunicator(routed, "hello", sender="+447700900123").deliver()
    assert ok.status == 200 and ok.replies == []  # the generic provider has no inline replies
    assert [(t.to, t.sender, t.body) for t in ok.sent] == [("+447700900123", "+15005550006", "echo: hello")]

    boom = await SmsCommunicator(routed, "BOOM now").deliver()
    assert boom.status == 500 and isinstance(boom.error, ZeroDivisionError)
    slow = await SmsCommunicator(routed, "SLOW").deliver()
    assert slow.status == 503 and slow.outcome is Outcome.TIMEOUT

    first = await SmsCommunicator(routed, "again", message_id="m-1").deliver()
    again = await SmsCommunicator(routed, "again", message_id="m-1").deliver()
    assert (first.outcome, len(first.sent)) == (Outcome.OK, 1)
    assert (again.status, again.outcome, again.sent) == (200, None, [])  # a provider's retry: deduplicated

    await SmsCommunicator(routed, "STOP", sender="+447700900999").deliver()
    opted_out = await SmsCommunicator(routed, "hello?", sender="+447700900999").deliver()
    assert opted_out.status == 500 and "opted out" in str(opted_out.error)


async def test_sms_status_reaches_its_route(routed):
    result = await SmsStatusCommunicator(routed, "SM9", "undelivered", error_code="30003").deliver()
    assert result.status == 200 and result.outcome is Outcome.OK
    assert [(t.to, t.body) for t in result.sent] == [("+447700900123", "SM9 undelivered (30003)")]


def test_free_ports_moves_every_tcp_listener_and_keeps_the_rest():
    data = {
        "adapters": {
            "http": {"listen": ["0.0.0.0:80", "unix:/run/gw.sock", "fd://3"]},
            "mqtt": {"mode": "broker", "listen": "1883", "ws_listen": ["[::1]:9001"], "url": "mqtt://x:1"},
            "email": {"smtp": {"listen": "127.0.0.1:25"}},
        },
        "admin": {"listen": "127.0.0.1:9100"},
        "routes": {"http": [{"path": "/listen/", "app": "a:b"}]},
    }
    moved = free_ports(data)
    assert moved["adapters"]["http"]["listen"] == ["127.0.0.1:0", "unix:/run/gw.sock", "fd://3"]
    assert moved["adapters"]["mqtt"] == {"mode": "broker", "listen": "127.0.0.1:0", "ws_listen": ["127.0.0.1:0"], "url": "mqtt://x:1"}
    assert moved["adapters"]["email"]["smtp"]["listen"] == "127.0.0.1:0"
    assert moved["admin"]["listen"] == "127.0.0.1:0"
    assert moved["routes"] == data["routes"]


def test_a_communicator_for_an_adapter_the_yaml_lacks_says_so():
    harness = Harness.from_text('adapters: {http: {listen: "127.0.0.1:0"}}')
    with pytest.raises(LookupError, match=r"no 'adapters: \{mqtt: \.\.\.\}' block"):
        MqttCommunicator(harness, "a/b", b"1")


PLUGIN_PROJECT = {
    "pytest.ini": "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n",
    "conf/gw.yaml": 'adapters: {http: {listen: "127.0.0.1:8000"}}\nroutes:\n  http:\n    - {path: /, app: "hello:app"}\n',
    "conf/hello.py": (
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({'type': 'http.response.start', 'status': 200})\n"
        "    await send({'type': 'http.response.body', 'body': b'hi'})\n"
    ),
    "test_marked.py": (
        "import pytest\n"
        "@pytest.mark.gateway_config('conf/gw.yaml')\n"
        "async def test_marked(communicators, gateway):\n"
        "    assert (await communicators.http('GET', '/').get_response())['body'] == b'hi'\n"
        "    assert gateway.addresses['http'][0] != '127.0.0.1:8000'\n"
        "async def test_unconfigured(communicators):\n"
        "    pass\n"
    ),
}


def test_the_plugin_reads_the_marker_and_names_the_missing_config(tmp_path):
    for name, text in PLUGIN_PROJECT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "1 passed, 1 error" in done.stdout, done.stdout[-3000:]
    assert "which gateway YAML? mark the test with @pytest.mark.gateway_config" in done.stdout
