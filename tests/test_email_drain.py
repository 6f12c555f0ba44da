"""The SMTP listener at its edges: shutdown (SIGTERM) drains in-flight mail and takes no new mail,
``max_sessions`` under uvloop, and address syntax the library lets through."""

from __future__ import annotations

import asyncio

import email_helpers as h
import pytest
import uvloop
from test_email_smtp import ROUTES, Raw, config

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_email_state")]

DYNAMIC = '    - {to: "*@example.com", app: "email_helpers:dynamic", timeout: 60}\n'


async def by_subject(scope, receive, send):
    """Sleeps for the number of seconds the subject names; records the message when it is done."""
    event = await receive()
    await asyncio.sleep(float(event["message"]["subject"]))
    h.RECEIVED.append((scope, event))


async def in_data(gw, seconds: float) -> Raw:
    """A session whose message (subject: seconds to sleep) is in the application."""
    raw, _ = await Raw.connect(gw)
    await raw.cmd("EHLO c.test")
    await raw.cmd("MAIL FROM:<a@example.org>")
    await raw.cmd("RCPT TO:<a@example.com>")
    assert (await raw.cmd("DATA")).startswith("354")
    raw.writer.write(f"Subject: {seconds}\r\n\r\nx\r\n.\r\n".encode())
    await raw.writer.drain()
    return raw


async def test_after_the_stop_signal_no_new_mail_is_taken_and_in_flight_mail_finishes():
    h.CONTROL["app"] = by_subject
    gw = h.make_gateway(config(DYNAMIC))
    serving = asyncio.ensure_future(gw.serve(signals=()))
    await h.eventually(lambda: gw.addresses.get("email"))
    first = await in_data(gw, 0.3)
    second = await in_data(gw, 1.5)
    idle, _ = await Raw.connect(gw)
    await idle.cmd("EHLO c.test")
    smtp = gw.adapters["email"].smtp
    await h.eventually(lambda: sum(s.busy for s in smtp.sessions) == 2)
    gw.request_stop()  # what SIGTERM does
    # an idle session is told at once, whatever it sends next
    assert (await idle.reply()).startswith("421 4.3.2")
    # the in-flight messages are handled and acknowledged ...
    assert (await first.reply()).startswith("250")
    # ... and then only QUIT is still answered: no new transaction starts
    assert (await first.cmd("QUIT")).startswith("221")
    assert (await second.reply()).startswith("250")
    assert (await second.cmd("MAIL FROM:<a@example.org>")).startswith("421 4.3.2")
    assert await second.reader.read() == b""
    await asyncio.wait_for(serving, 15)
    for raw in (first, second, idle):
        await raw.close()
    assert sorted(e["message"]["subject"] for _, e in h.RECEIVED) == ["0.3", "1.5"]


async def test_mail_still_in_the_application_at_the_drain_deadline_gets_421_not_eof():
    h.CONTROL["app"] = by_subject
    gw = h.make_gateway(config(DYNAMIC))
    await gw.start()
    stuck = await in_data(gw, 30)
    smtp = gw.adapters["email"].smtp
    await h.eventually(lambda: any(s.busy for s in smtp.sessions))
    stopping = asyncio.ensure_future(gw.stop(0.5))
    assert (await stuck.reply()).startswith("421 4.3.2")
    assert await stuck.reader.read() == b""
    await asyncio.wait_for(stopping, 15)
    await stuck.close()
    assert h.RECEIVED == []  # cancelled, not acknowledged: the client retries


def test_sessions_over_the_limit_get_421_under_uvloop():
    problems: list[dict] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context))
        async with h.email_gateway(config(ROUTES, ", max_sessions: 1")) as gw:
            first, greeting = await Raw.connect(gw)
            assert greeting.startswith("220")
            for _ in range(3):
                refused, reply = await Raw.connect(gw)
                assert reply.startswith("421 4.3.2")
                assert await refused.reader.read() == b""
                await refused.close()
            await first.cmd("QUIT")
            await first.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    assert problems == []


@pytest.mark.parametrize("line, reply", [
    (b"MAIL FROM:<a\x00b@example.org>\r\n", "553 5.1.3"),
    (b"MAIL FROM:<a\x01b@example.org>\r\n", "553 5.1.3"),
    ("MAIL FROM:<jürgen@example.org>\r\n".encode(), "553 5.6.7"),
])
async def test_mail_from_with_control_characters_or_utf8_without_smtputf8_is_refused(line, reply):
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        assert (await raw.cmd(line)).startswith(reply)
        assert (await raw.cmd("MAIL FROM:<a@example.org>")).startswith("250")  # nothing was taken
        await raw.close()


async def test_rcpt_to_with_a_nul_or_utf8_without_smtputf8_is_refused():
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        assert (await raw.cmd(b"RCPT TO:<ali\x00ce@example.com>\r\n")).startswith("553 5.1.3")
        assert (await raw.cmd("RCPT TO:<jürgen@example.com>\r\n".encode())).startswith("553 5.6.7")
        assert (await raw.cmd("RCPT TO:<alice@example.com>")).startswith("250")
        await raw.cmd("DATA")
        assert (await raw.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")).startswith("250")
        await raw.close()
    (scope, _), = h.RECEIVED
    assert scope["recipients"] == ["alice@example.com"]
