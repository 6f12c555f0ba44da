"""Crafted messages against the e-mail adapter: bounded parse cost (``adapters.email.mime``), no
exception text to clients, parsing off the event loop, and an IMAP mailbox that a poison message
cannot wedge."""

from __future__ import annotations

import asyncio
import smtplib
import threading

import email_helpers as h
import pytest
from structlog.testing import capture_logs
from test_email_imap import message, state
from test_email_smtp import ROUTES, Raw, config

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("clean_email_state")]


async def send_raw(gw, data: bytes, rcpt: str = "alice@example.com") -> str:
    raw, _ = await Raw.connect(gw)
    try:
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        assert (await raw.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
        assert (await raw.cmd("DATA")).startswith("354")
        return await raw.cmd(data + b".\r\n")
    finally:
        await raw.close()


async def test_a_thousand_levels_deep_gets_a_5_6_0_refusal_without_exception_text():
    async with h.email_gateway(config(ROUTES)) as gw:
        reply = await send_raw(gw, h.nested(1000))
        ok = await send_raw(gw, h.nested(2, subject="fine"))
    assert reply.startswith("550 5.6.0") and "nesting" in reply
    assert "Error" not in reply and "Recursion" not in reply
    assert ok.startswith("250")
    assert [e["message"]["subject"] for _, e in h.RECEIVED] == ["fine"]


async def test_the_depth_limit_is_configurable_and_exact():
    async with h.email_gateway(config(ROUTES).replace("adapters:\n  email:\n", "adapters:\n  email:\n    mime: {max_depth: 4}\n")) as gw:
        assert (await send_raw(gw, h.nested(4, subject="four"))).startswith("250")
        assert (await send_raw(gw, h.nested(5, subject="five"))).startswith("550 5.6.0")
    assert [e["message"]["subject"] for _, e in h.RECEIVED] == ["four"]


async def test_an_unexpected_error_is_logged_and_answered_451_without_its_text(monkeypatch):
    from gateway_adapters.email import parse

    def broken(raw):
        raise ValueError("secret internal detail")

    monkeypatch.setattr(parse, "_parse", broken)
    async with h.email_gateway(config(ROUTES)) as gw:
        with capture_logs() as logs:
            reply = await send_raw(gw, b"Subject: x\r\n\r\nhi\r\n")
        raw, _ = await Raw.connect(gw)  # the listener goes on
        assert (await raw.cmd("NOOP")).startswith("250")
        await raw.close()
    assert reply.startswith("451 4.3.0") and "secret" not in reply and "ValueError" not in reply
    (logged,) = [e for e in logs if e["event"] == "smtp.error"]
    assert "secret internal detail" in logged["error"]


async def test_another_session_is_answered_while_a_crafted_message_is_parsed(monkeypatch):
    """The parse of a many-line, deeply nested message (within the limits) is held open; a NOOP
    on another session must be answered meanwhile, so the parse cannot be running on the loop."""
    from gateway_adapters.email import parse

    started, release = threading.Event(), threading.Event()
    real = parse._parse

    def held(raw):
        if b"crafted" in raw[:200]:
            started.set()
            release.wait(20)
        return real(raw)

    monkeypatch.setattr(parse, "_parse", held)
    crafted = h.nested(30, filler_lines=200, subject="crafted")
    async with h.email_gateway(config(ROUTES)) as gw:
        host, port = h.smtp_address(gw)

        def open_other() -> smtplib.SMTP:
            client = smtplib.SMTP(host, port, timeout=5)
            client.ehlo("other.test")
            return client

        other = await asyncio.to_thread(open_other)
        seen: dict[str, object] = {}

        def probe() -> None:
            try:
                started.wait(20)
                seen["parsing"] = not release.is_set()
                seen["noop"] = other.noop()[0]
                seen["still_parsing"] = not release.is_set()
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
                seen["noop"] = repr(exc)
            finally:
                release.set()

        prober = threading.Thread(target=probe)
        prober.start()
        reply = await send_raw(gw, crafted)
        await asyncio.to_thread(prober.join, 30)
        await asyncio.to_thread(other.close)
    assert seen == {"parsing": True, "noop": 250, "still_parsing": True}
    assert reply.startswith("250")


# -- IMAP: a poison message is that message's failure, never the connection's ------------------------
@pytest.fixture
def dovecot():
    server = h.Dovecot()
    server.start()
    yield server
    server.stop()


def imap_config(d: h.Dovecot, extra: str = "") -> str:
    return f"""\
adapters:
  email:
    imap:
      - {{name: support, host: 127.0.0.1, port: {d.port}, tls: none, user: {d.user}, password: {d.password},
         address: "support@example.com", reconnect_backoff: 0.1, timeout: 5, idle: false, poll_interval: 0.2{extra}}}
routes:
  email:
    - {{to: "<team>@example.com", app: "email_helpers:ok"}}
"""


async def test_a_deeply_nested_message_goes_to_the_error_folder_and_the_rest_are_handled(dovecot):
    dovecot.deliver(message("before", 1))
    dovecot.deliver(h.nested(1000, subject="poison"))
    for n in range(2, 5):
        dovecot.deliver(message(f"after {n}", n))
    with capture_logs() as logs:
        async with h.email_gateway(imap_config(dovecot)) as gw:
            poller = gw.adapters["email"].pollers[0]
            await h.eventually(lambda: len(h.RECEIVED) == 4 and poller.rounds >= 2, 20)
            inbox, errors = await state(dovecot, "INBOX"), await state(dovecot, "Errors")
            metrics = gw.metrics.render().decode()
    assert sorted(e["message"]["subject"] for _, e in h.RECEIVED) == ["after 2", "after 3", "after 4", "before"]
    assert len(errors) == 1 and b"poison" in errors[0][1]
    assert all(b"\\Seen" in flags for flags, _ in inbox) and len(inbox) == 4
    assert not [e for e in logs if e["event"] == "imap.disconnected"]
    assert [e["event"] for e in logs].count("imap.connected") == 1
    assert 'gateway_email_imap_messages_total{mailbox="support",outcome="too_complex"} 1.0' in metrics


async def test_a_message_the_parser_fails_on_counts_as_a_failed_attempt(dovecot, monkeypatch):
    from gateway_adapters.email import parse

    real = parse._parse

    def picky(raw):
        if b"unreadable" in raw:
            raise ValueError("parser bug")
        return real(raw)

    monkeypatch.setattr(parse, "_parse", picky)
    dovecot.deliver(message("unreadable", 1))
    dovecot.deliver(message("fine", 2))
    with capture_logs() as logs:
        async with h.email_gateway(imap_config(dovecot, ", max_attempts: 2")) as gw:
            poller = gw.adapters["email"].pollers[0]
            await h.eventually(lambda: poller.rounds >= 3 and len(h.RECEIVED) == 1, 20)
            errors = await state(dovecot, "Errors")
    assert [e["message"]["subject"] for _, e in h.RECEIVED] == ["fine"]
    assert len(errors) == 1 and b"unreadable" in errors[0][1]
    assert [e["event"] for e in logs if e["event"].startswith("imap.")].count("imap.parse_failed") == 2
    assert not [e for e in logs if e["event"] == "imap.disconnected"]
