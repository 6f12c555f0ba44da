"""SMTP out: ``email.send`` from an instance and from the layer channel, into an aiosmtpd sink."""

from __future__ import annotations

import asyncio

import aiosmtplib
import email_helpers as h
import pytest
from tls_helpers import self_signed

from gateway.layers import get_channel_layer
from gateway_adapters.email import DeliveryError, build_message
from gateway_adapters.email.config import RelayConfig
from gateway_adapters.email.smtp_out import Relay

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_email_state")]


def config(sink_port: int, relay_extra: str = "", routes: str = "") -> str:
    return f"""\
adapters:
  email:
    smtp: {{listen: "127.0.0.1:0", hostname: gw.test}}
    relay: {{host: 127.0.0.1, port: {sink_port}, backoff: 0.05, retries: 2{relay_extra}}}
routes:
  email:
{routes or '    - {to: "support@example.com", app: "email_helpers:reply"}'}
"""


async def test_reply_from_an_instance_is_threaded_mime():
    async with h.Sink() as sink, h.email_gateway(config(sink.port)) as gw:
        host, port = h.smtp_address(gw)
        inbound = (b"From: Customer <cust@example.org>\r\nTo: support@example.com\r\n"
                   b"Subject: Hilfe bitte\r\nMessage-ID: <q1@example.org>\r\nReferences: <q0@example.org>\r\n\r\nhelp\r\n")
        errors, reply = await aiosmtplib.send(inbound, sender="cust@example.org", recipients=["support@example.com"],
                                              hostname=host, port=port)
        assert reply.startswith("2.0.0")
        # the 250 came after the reply was relayed: the sink has it already
        (mail_from, rcpts, raw), = sink.messages
    assert mail_from == "support@example.com" and rcpts == ["cust@example.org"]
    msg = sink.parsed()
    assert msg["Subject"] == "Re: Hilfe bitte"
    assert msg["In-Reply-To"] == "<q1@example.org>"
    assert msg["References"] == "<q0@example.org> <q1@example.org>"
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg.get_content().strip() == "Thanks, we got it."


async def test_layer_channel_send_with_alternative_attachments_and_non_ascii_headers():
    async with h.Sink() as sink, h.email_gateway(config(sink.port, ', default_from: "Gateway <gw@example.com>"')):
        layer = get_channel_layer()
        await layer.send("email.send", {
            "type": "email.send",
            "to": ["Zoë <zoe@example.org>"], "cc": "carl@example.org", "bcc": ["hidden@example.org"],
            "subject": "Grüße aus Köln ✓",
            "text": "Hallo Zoë", "html": "<p>Hallo <b>Zoë</b></p>",
            "attachments": [
                {"filename": "bericht.pdf", "content_type": "application/pdf", "content": b"%PDF-1.4 x"},
                {"filename": "notes.txt", "content": "plain notes"},
            ],
            "headers": {"X-Ticket": "42"},
        })
        await h.eventually(lambda: sink.messages)
    mail_from, rcpts, raw = sink.messages[0]
    assert mail_from == "gw@example.com"
    assert sorted(rcpts) == ["carl@example.org", "hidden@example.org", "zoe@example.org"]
    assert b"hidden@example.org" not in raw  # Bcc never appears in the message
    assert raw.isascii()  # non-ASCII headers are RFC 2047 encoded, bodies transfer-encoded
    msg = sink.parsed()
    assert msg["Subject"] == "Grüße aus Köln ✓"
    assert msg["To"] == "Zoë <zoe@example.org>"
    assert msg["X-Ticket"] == "42"
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(("plain",))
    assert body.get_content().strip() == "Hallo Zoë"
    assert "<b>Zoë</b>" in msg.get_body(("html",)).get_content()
    atts = {a.get_filename(): a for a in msg.iter_attachments()}
    assert atts["bericht.pdf"].get_content_type() == "application/pdf"
    assert atts["bericht.pdf"].get_content() == b"%PDF-1.4 x"
    assert atts["notes.txt"].get_content().strip() == "plain notes"


async def test_temporary_failures_are_retried_with_backoff():
    async with h.Sink(temp_failures=2) as sink:
        relay = Relay(RelayConfig(host="127.0.0.1", port=sink.port, backoff=0.05, retries=3))
        await relay.send({"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        assert sink.attempts == 3 and len(sink.messages) == 1


async def test_retries_exhausted_and_permanent_refusal_raise_delivery_error():
    async with h.Sink(temp_failures=10) as sink:
        relay = Relay(RelayConfig(host="127.0.0.1", port=sink.port, backoff=0.01, retries=1))
        with pytest.raises(DeliveryError) as info:
            await relay.send({"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        assert not info.value.permanent and info.value.code == 451 and sink.attempts == 2
    async with h.Sink(permanent=True) as sink:
        relay = Relay(RelayConfig(host="127.0.0.1", port=sink.port, backoff=0.01, retries=3))
        with pytest.raises(DeliveryError) as info:
            await relay.send({"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        assert info.value.permanent and info.value.code == 554 and "Go away" in str(info.value)
        assert sink.attempts == 1  # never retried


async def test_unreachable_relay_is_retried_then_fails():
    relay = Relay(RelayConfig(host="127.0.0.1", port=h.free_port(), backoff=0.01, retries=2, timeout=2))
    with pytest.raises(DeliveryError) as info:
        await relay.send({"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
    assert not info.value.permanent and "unreachable" in str(info.value)


async def test_relay_down_makes_the_inbound_message_fail_with_451():
    routes = '    - {to: "support@example.com", app: "email_helpers:reply"}'
    async with h.email_gateway(config(h.free_port(), ", timeout: 2", routes)) as gw:
        host, port = h.smtp_address(gw)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nhi\r\n", sender="c@example.org",
                                  recipients=["support@example.com"], hostname=host, port=port)
        assert info.value.code == 451


async def test_invalid_send_events_fail_the_instance():
    async def bad(scope, receive, send):
        await receive()
        await send({"type": "email.send", "subject": "no recipient"})

    h.CONTROL["app"] = bad
    with pytest.raises(ValueError):
        build_message({"to": "a@example.org"})  # no From and no default_from
    async with h.Sink() as sink, h.email_gateway(config(sink.port, routes='    - {to: "*@example.com", app: "email_helpers:dynamic"}')) as gw:
        host, port = h.smtp_address(gw)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(b"Subject: x\r\n\r\nhi\r\n", sender="c@example.org", recipients=["s@example.com"],
                                  hostname=host, port=port)
        assert info.value.code == 451
        assert sink.messages == []
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("relaytls"), "localhost")


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_relay_over_tls_with_auth(cert, mode):
    async with h.Sink(tls=cert, implicit_tls=mode == "implicit", users={"gw": "s3cret"}) as sink:
        relay = Relay(RelayConfig(host="127.0.0.1", port=sink.port, tls=mode, verify_tls=False,
                                  username="gw", password="s3cret", retries=0))
        await relay.send({"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "secret"})
        assert sink.logins == ["gw"] and sink.tls_seen == [True] and len(sink.messages) == 1
        bad = Relay(RelayConfig(host="127.0.0.1", port=sink.port, tls=mode, verify_tls=False,
                                username="gw", password="wrong", retries=0))
        with pytest.raises(DeliveryError) as info:
            await bad.send({"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        assert info.value.permanent


async def test_invalid_layer_message_is_logged_and_the_channel_goes_on():
    from structlog.testing import capture_logs

    async with h.Sink() as sink, h.email_gateway(config(sink.port)):
        layer = get_channel_layer()
        with capture_logs() as logs:
            await layer.send("email.send", {"type": "email.send", "subject": "nobody to send to"})
            await layer.send("email.send", {"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "ok"})
            await h.eventually(lambda: sink.messages)
    assert len(sink.messages) == 1
    assert any(e["event"] == "email.send.invalid" for e in logs)


async def test_non_ascii_addresses_go_out_with_smtputf8():
    async with h.Sink() as sink:
        relay = Relay(RelayConfig(host="127.0.0.1", port=sink.port, retries=0))
        await relay.send({"type": "email.send", "to": "Jürgen <jürgen@example.org>", "from": "b@example.com", "text": "hallo"})
        (_, rcpts, raw), = sink.messages
    assert rcpts == ["jürgen@example.org"]
    assert "jürgen@example.org".encode() in raw


async def test_permanent_refusal_of_a_reply_is_logged_and_the_inbound_message_is_accepted():
    from structlog.testing import capture_logs

    async with h.Sink(permanent=True) as sink, h.email_gateway(config(sink.port)) as gw:
        host, port = h.smtp_address(gw)
        with capture_logs() as logs:
            _, reply = await aiosmtplib.send(b"Subject: x\r\nMessage-ID: <p@x>\r\n\r\nhi\r\n", sender="c@example.org",
                                             recipients=["support@example.com"], hostname=host, port=port)
        assert reply.startswith("2.0.0") and sink.attempts == 1
    rejected = [e for e in logs if e["event"] == "email.send.rejected"]
    assert rejected and "554" in rejected[0]["relay_reply"]


class HeldSink(h.Sink):
    """A relay that holds its reply to DATA until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.in_data = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_DATA(self, server, session, envelope):
        self.in_data.set()
        await self.release.wait()
        return await super().handle_DATA(server, session, envelope)


async def test_a_layer_send_in_flight_at_shutdown_finishes_within_the_drain():
    """SIGTERM while an email.send taken from the layer is being relayed: the drain lets it finish
    (it used to be cancelled at once, and the message was lost without a count or a log line)."""
    from structlog.testing import capture_logs

    async with HeldSink() as sink:
        gw = h.make_gateway(config(sink.port))
        await gw.start()
        await get_channel_layer().send("email.send", {"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        await asyncio.wait_for(sink.in_data.wait(), 10)
        with capture_logs() as logs:
            stopping = asyncio.ensure_future(gw.stop(10))
            await h.eventually(lambda: gw.health.phase == "stopping")
            await asyncio.sleep(0.1)  # the stop is under way while the relay waits for 250
            sink.release.set()
            await stopping
        metrics = gw.metrics.render().decode()
    assert len(sink.messages) == 1
    assert [e["event"] for e in logs if e["event"].startswith("email.")] == ["email.sent"], logs
    assert 'gateway_outbound_messages_total{channel="email.send",outcome="handled"} 1.0' in metrics


async def test_a_layer_send_still_running_when_the_drain_ends_is_counted_and_logged_as_abandoned():
    from structlog.testing import capture_logs

    async with HeldSink() as sink:
        gw = h.make_gateway(config(sink.port))
        await gw.start()
        await get_channel_layer().send("email.send", {"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        await asyncio.wait_for(sink.in_data.wait(), 10)
        with capture_logs() as logs:
            await gw.stop(0.2)
        metrics = gw.metrics.render().decode()
        sink.release.set()
    abandoned = [e for e in logs if e["event"] == "outbound.abandoned"]
    assert len(abandoned) == 1 and abandoned[0]["channel"] == "email.send", logs
    assert 'gateway_outbound_messages_total{channel="email.send",outcome="abandoned"} 1.0' in metrics


async def test_a_layer_send_that_fails_for_good_is_counted():
    async with h.email_gateway(config(h.free_port(), ", timeout: 2")) as gw:
        await get_channel_layer().send("email.send", {"type": "email.send", "to": "a@example.org", "from": "b@example.com", "text": "x"})
        await h.eventually(lambda: 'outcome="failed"} 1.0' in gw.metrics.render().decode(), timeout=20)
        assert 'gateway_outbound_messages_total{channel="email.send",outcome="failed"} 1.0' in gw.metrics.render().decode()
