"""``gateway.consumers.AsyncEmailConsumer`` behind the SMTP listener, replying through a sink relay."""

from __future__ import annotations

import aiosmtplib
import email_helpers as h
import pytest

from gateway.testing import EmailCommunicator, Harness

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_email_state")]


def config(port: int) -> str:
    return f"""\
adapters:
  email:
    smtp: {{listen: "127.0.0.1:0", hostname: gw.test}}
    relay: {{host: 127.0.0.1, port: {port}, backoff: 0.05}}
routes:
  email:
    - {{to: "support@example.com", app: "email_helpers:support_consumer"}}
"""


def inbound(subject: str) -> bytes:
    return (f"From: Ann <ann@example.org>\r\nTo: support@example.com, Ben <ben@example.org>\r\n"
            f"Subject: {subject}\r\nMessage-ID: <q9@example.org>\r\nReferences: <q8@example.org>\r\n\r\nhelp\r\n").encode()


async def test_consumer_reply_is_threaded_and_reply_all():
    async with h.Sink() as sink, h.email_gateway(config(sink.port)) as gw:
        host, port = h.smtp_address(gw)
        _, reply = await aiosmtplib.send(inbound("Printer"), sender="ann@example.org",
                                         recipients=["support@example.com"], hostname=host, port=port)
        assert reply.startswith("2.0.0")
    (mail_from, rcpts, _), = sink.messages
    assert mail_from == "support@example.com" and sorted(rcpts) == ["ann@example.org", "ben@example.org"]
    msg = sink.parsed()
    assert msg["Subject"] == "Re: Printer" and msg["To"] == "ann@example.org" and msg["Cc"] == "ben@example.org"
    assert msg["In-Reply-To"] == "<q9@example.org>"
    assert msg["References"] == "<q8@example.org> <q9@example.org>"
    assert msg.get_body(("html",)).get_content().strip() == "<p>We are on it.</p>"


@pytest.mark.parametrize("subject, code, text", [("buy spam", 554, "5.7.1 Looks like spam"), ("crash", 451, "4.3.0")])
async def test_consumer_reject_and_crash(subject, code, text):
    async with h.Sink() as sink, h.email_gateway(config(sink.port)) as gw:
        host, port = h.smtp_address(gw)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(inbound(subject), sender="ann@example.org", recipients=["support@example.com"],
                                  hostname=host, port=port)
        assert info.value.code == code and text in info.value.message
        assert sink.messages == []


async def test_consumer_in_process_with_the_email_communicator():
    """The same consumer and routes through ``gateway.testing``: the SMTP replies, and the reply
    mail as the ``email.send`` event the relay would get (no listener, no relay)."""
    harness = Harness.from_text(config(9))
    ok = await EmailCommunicator(harness, inbound("Printer"), mail_from="ann@example.org", rcpt_to="support@example.com").deliver()
    assert ok.code == 250
    (reply,) = ok.sent
    assert (reply["to"], reply["cc"], reply["subject"]) == (["ann@example.org"], ["ben@example.org"], "Re: Printer")
    assert reply["in_reply_to"] == "<q9@example.org>"
    for subject, code, text in [("buy spam", 554, "5.7.1 Looks like spam"), ("crash", 451, "4.3.0")]:
        refused = await EmailCommunicator(harness, inbound(subject), mail_from="ann@example.org",
                                          rcpt_to="support@example.com").deliver()
        assert refused.code == code and text in refused.reply and refused.sent == []
