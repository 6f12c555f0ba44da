"""IMAP ingestion against a real Dovecot started for the test on a free loopback port."""

from __future__ import annotations

import asyncio
import imaplib

import email_helpers as h
import pytest
from tls_helpers import self_signed

pytestmark = [
    pytest.mark.usefixtures("clean_email_state"),
    pytest.mark.timeout(45),
]


@pytest.fixture
def dovecot():
    server = h.Dovecot()
    server.start()
    yield server
    server.stop()


def config(d: h.Dovecot, mailbox: str = "", app: str = "email_helpers:ok") -> str:
    if "poll_interval" not in mailbox:
        mailbox += ", poll_interval: 0.2"
    return f"""\
adapters:
  email:
    imap:
      - {{name: support, host: 127.0.0.1, port: {d.port}, tls: none, user: {d.user}, password: {d.password},
         address: "support@example.com", reconnect_backoff: 0.1, timeout: 5{mailbox}}}
routes:
  email:
    - {{to: "<team>@example.com", app: "{app}", name: team}}
"""


def message(subject: str, n: int = 1) -> bytes:
    return (f"From: Customer <c{n}@example.org>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n\r\nbody {n}\r\n").encode()


def folder_state(d: h.Dovecot, folder: str) -> list[tuple[bytes, bytes]]:
    """(flags, subject) of every message in ``folder``, read with imaplib."""
    m = imaplib.IMAP4("127.0.0.1", d.port)
    try:
        m.login(d.user, d.password)
        typ, count = m.select(f'"{folder}"')
        if typ != "OK" or count[0] == b"0":
            return []
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = []
        for item in data:
            if isinstance(item, tuple):
                out.append((item[0], item[1].strip()))
        return out
    finally:
        m.logout()


async def state(d, folder):
    return await asyncio.to_thread(folder_state, d, folder)


async def test_waiting_messages_are_routed_and_flagged_seen(dovecot):
    dovecot.deliver(message("first", 1))
    dovecot.deliver(message("second", 2))
    async with h.email_gateway(config(dovecot)) as gw:
        await h.eventually(lambda: len(h.RECEIVED) == 2, 10)
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: not poller.handled and poller.last_uid == 2, 5)
        flags = await state(dovecot, "INBOX")
    assert all(b"\\Seen" in f for f, _ in flags) and len(flags) == 2
    scope, event = h.RECEIVED[0]
    assert scope["source"] == "imap" and scope["mailbox"] == "support" and scope["folder"] == "INBOX"
    assert scope["rcpt_to"] == "support@example.com" and scope["mail_from"] in ("sender@example.org", "c1@example.org")
    assert scope["url_route"]["kwargs"] == {"team": "support"} and scope["route_name"] == "team"
    assert scope["uid"] == 1 and isinstance(scope["uidvalidity"], int)
    assert event["message"]["subject"] == "first" and event["raw"].endswith(b"body 1\r\n")


async def test_idle_picks_up_new_mail_without_polling(dovecot):
    # poll_interval is long: only IDLE can bring the new message in quickly
    async with h.email_gateway(config(dovecot, ", idle: true, poll_interval: 20")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: poller.rounds >= 1, 10)
        await asyncio.to_thread(dovecot.deliver, message("pushed"))
        await h.eventually(lambda: len(h.RECEIVED) == 1, 5)
    assert h.RECEIVED[0][1]["message"]["subject"] == "pushed"


async def test_polling_when_idle_is_off(dovecot):
    async with h.email_gateway(config(dovecot, ", idle: false")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: poller.rounds >= 1, 10)
        await asyncio.to_thread(dovecot.deliver, message("polled"))
        await h.eventually(lambda: len(h.RECEIVED) == 1, 5)


async def test_failure_leaves_the_message_unseen_and_it_is_retried(dovecot):
    h.CONTROL["fail_times"] = 1
    dovecot.deliver(message("retry me"))
    async with h.email_gateway(config(dovecot, ", idle: false", app="email_helpers:flaky")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: len(h.RECEIVED) == 1, 10)
        # after the failure, it is still unseen in INBOX
        flags = await state(dovecot, "INBOX")
        assert flags and b"\\Seen" not in flags[0][0]
        await h.eventually(lambda: len(h.RECEIVED) == 2 and not poller.handled and poller.last_uid == 1, 10)
        await h.eventually(lambda: poller.rounds >= 3, 5)
        flags = await state(dovecot, "INBOX")
    assert b"\\Seen" in flags[0][0]
    assert h.CONTROL["calls"] == 2


async def test_after_max_attempts_it_goes_to_the_error_folder(dovecot):
    dovecot.deliver(message("hopeless"))
    async with h.email_gateway(config(dovecot, ", idle: false, max_attempts: 2, error_folder: Broken",
                                      app="email_helpers:fail")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: len(h.RECEIVED) == 2, 10)
        await h.eventually(lambda: poller.rounds >= 3, 5)
        inbox, broken = await state(dovecot, "INBOX"), await state(dovecot, "Broken")
        metrics = gw.metrics.render().decode()
    assert inbox == [] and len(broken) == 1 and b"hopeless" in broken[0][1]
    assert 'gateway_email_imap_messages_total{mailbox="support",outcome="retry"} 1.0' in metrics
    assert 'gateway_email_imap_messages_total{mailbox="support",outcome="error_folder"} 1.0' in metrics
    assert len(h.RECEIVED) == 2  # not tried again


async def test_move_after_success_and_reject_goes_to_error_folder(dovecot):
    dovecot.deliver(message("keep"))
    async with h.email_gateway(config(dovecot, ", after: move, move_to: Done")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: len(h.RECEIVED) == 1 and poller.rounds >= 1, 10)
        await h.eventually(lambda: not poller.handled, 5)
        inbox, done = await state(dovecot, "INBOX"), await state(dovecot, "Done")
    assert inbox == [] and len(done) == 1
    h.reset()
    dovecot.deliver(message("refused"))
    async with h.email_gateway(config(dovecot, ", idle: false", app="email_helpers:reject")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: len(h.RECEIVED) == 1 and poller.rounds >= 2, 10)
        errors = await state(dovecot, "Errors")
    assert len(errors) == 1 and b"refused" in errors[0][1]


async def test_reconnects_after_the_server_restarts(dovecot):
    async with h.email_gateway(config(dovecot, ", idle: true, poll_interval: 20")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: poller.rounds >= 1, 10)
        await asyncio.to_thread(dovecot.restart)
        await asyncio.to_thread(dovecot.deliver, message("after restart"))
        await h.eventually(lambda: len(h.RECEIVED) == 1, 15)
    assert h.RECEIVED[0][1]["message"]["subject"] == "after restart"


async def test_wrong_password_keeps_retrying_with_backoff(dovecot):
    text = config(dovecot).replace(f"password: {dovecot.password}", "password: wrong")
    async with h.email_gateway(text) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: "email.imap.support" in gw.health.components, 10)
        assert not poller.connected.is_set()
        assert gw.health.components["email.imap.support"].status == "degraded"
        assert "LOGIN" in gw.health.components["email.imap.support"].detail


async def test_one_poller_per_mailbox_across_processes_with_redis(dovecot):
    redis = h.Redis().start()
    try:
        text = config(dovecot, ", idle: false, lock_ttl: 0.6").replace(
            "adapters:", f'layer: {{backend: redis, url: "{redis.url}", prefix: imaplock}}\nadapters:', 1)
        dovecot.deliver(message("one", 1))
        first = h.make_gateway(text)
        second = h.make_gateway(text)
        await first.start()
        try:
            await second.start()
            try:
                p1, p2 = first.adapters["email"].pollers[0], second.adapters["email"].pollers[0]
                await h.eventually(lambda: len(h.RECEIVED) == 1, 10)
                await asyncio.sleep(0.5)
                assert [p1.holding, p2.holding].count(True) == 1
                holder, standby = (first, second) if p1.holding else (second, first)
                # the holder "dies": its poller stops without releasing; the lock expires (ttl 0.6 s)
                dead = holder.adapters["email"].pollers[0]
                dead.task.cancel()
                await asyncio.gather(dead.task, return_exceptions=True)
                await asyncio.to_thread(dovecot.deliver, message("two", 2))
                await h.eventually(lambda: len(h.RECEIVED) == 2, 10)
                assert (p2 if holder is first else p1).holding
            finally:
                await second.stop(1)
        finally:
            await first.stop(1)
    finally:
        redis.stop()
    assert [e["message"]["subject"] for _, e in h.RECEIVED] == ["one", "two"]


async def test_unroutable_message_goes_to_the_error_folder(dovecot):
    dovecot.deliver(message("lost"))
    text = config(dovecot, ", idle: false").replace('address: "support@example.com"', 'address: "x@elsewhere.org"')
    async with h.email_gateway(text) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: poller.rounds >= 2, 10)
        inbox, errors = await state(dovecot, "INBOX"), await state(dovecot, "Errors")
    assert inbox == [] and len(errors) == 1 and h.RECEIVED == []


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("imaptls"), "localhost")


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_tls_connections(cert, mode):
    server = h.Dovecot(cert)
    server.start()
    try:
        server.deliver(message(f"over {mode}"))
        port = server.tls_port if mode == "implicit" else server.port
        text = config(server, ", idle: false, verify_tls: false").replace(
            f"port: {server.port}, tls: none", f"port: {port}, tls: {mode}")
        async with h.email_gateway(text):
            await h.eventually(lambda: len(h.RECEIVED) == 1, 10)
        scope, event = h.RECEIVED[0]
        assert scope["tls"] is True and event["message"]["subject"] == f"over {mode}"
        logins = [line for line in (server.dir / "dovecot.log").read_text().splitlines() if "Login: user=<test>" in line]
        assert logins and all("TLS" in line for line in logins), logins
    finally:
        server.stop()


async def test_delete_after_success(dovecot):
    dovecot.deliver(message("gone"))
    async with h.email_gateway(config(dovecot, ", idle: false, after: delete")) as gw:
        poller = gw.adapters["email"].pollers[0]
        await h.eventually(lambda: len(h.RECEIVED) == 1 and poller.rounds >= 2, 10)
        inbox = await state(dovecot, "INBOX")
    assert inbox == []


# -- a dropped connection: reconnect, nothing stuck, one clean log line -------------------------------
async def test_a_restart_under_the_app_does_not_wedge_the_mailbox(dovecot):
    """The server restarts (every connection dropped) while the application handles a message: the
    flag that could not be set is set after the reconnect, and the app is not run a second time."""
    from structlog.testing import capture_logs

    h.CONTROL["app"] = hold_until_released
    dovecot.deliver(message("held"))
    with capture_logs() as logs:
        async with h.email_gateway(config(dovecot, ", idle: false", app="email_helpers:dynamic")) as gw:
            poller = gw.adapters["email"].pollers[0]
            await h.eventually(lambda: len(h.RECEIVED) == 1, 10)
            await asyncio.to_thread(dovecot.restart)
            h.CONTROL["release"].set()
            await h.eventually(lambda: poller.rounds >= 2 and not poller.handled, 15)
            flags = await state(dovecot, "INBOX")
    assert len(h.RECEIVED) == 1 and b"\\Seen" in flags[0][0]
    # the restart really dropped the connection (Dovecot's imap worker went with it)
    assert [e["event"] for e in logs].count("imap.connected") == 2


async def hold_until_released(scope, receive, send):
    event = await receive()
    h.CONTROL.setdefault("release", asyncio.Event())
    h.RECEIVED.append((scope, event))
    await h.CONTROL["release"].wait()


def test_a_dropped_connection_under_uvloop_logs_one_clean_line(dovecot):
    """uvloop (the `speed` extra) raises RuntimeError when writing to a closed transport, and
    aioimaplib leaves tasks behind on a dead connection: neither may reach the log."""
    import gc
    import logging

    import uvloop
    from structlog.testing import capture_logs

    problems: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                problems.append(record.getMessage())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: problems.append(str(context.get("message"))))
        for n in range(40):
            await asyncio.to_thread(dovecot.deliver, message(f"m{n}", n))
        async with h.email_gateway(config(dovecot, ", idle: true, poll_interval: 20", app="email_helpers:slow")):
            for handled in (5, 20):  # restarts in the middle of the stream
                await h.eventually(lambda: len(h.RECEIVED) >= handled, 15)  # noqa: B023 - awaited in its iteration
                await asyncio.to_thread(dovecot.restart)
            await h.eventually(lambda: len({e["message"]["subject"] for _, e in h.RECEIVED}) == 40, 20)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(dovecot.restart)  # and once while idle
            await asyncio.to_thread(dovecot.deliver, message("after restarts", 99))
            await h.eventually(lambda: any(e["message"]["subject"] == "after restarts" for _, e in h.RECEIVED), 15)
        gc.collect()
        await asyncio.sleep(0)

    h.CONTROL["sleep"] = 0.01
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    try:
        with capture_logs() as logs, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
            gc.collect()
    finally:
        logging.getLogger().removeHandler(recorder)
    drops = [e for e in logs if e["event"] == "imap.disconnected"]
    assert len(drops) >= 2
    assert all("RuntimeError" not in e["error"] for e in drops), drops
    assert problems == []


async def test_a_bug_in_the_session_is_logged_with_its_traceback_and_a_dropped_connection_is_not(dovecot, monkeypatch):
    """A failure nobody expected (here, a bug planted in the session) keeps its traceback in the
    reconnect line; a connection the server dropped stays one line."""
    from structlog.testing import capture_logs

    from gateway_adapters.email.imap import MailboxPoller

    session = MailboxPoller._session
    planted = []

    async def buggy(self):
        if not planted:
            planted.append(True)
            raise KeyError("a bug in the session")
        await session(self)

    monkeypatch.setattr(MailboxPoller, "_session", buggy)
    with capture_logs() as logs:
        async with h.email_gateway(config(dovecot, ", idle: false")) as gw:
            poller = gw.adapters["email"].pollers[0]
            await h.eventually(lambda: poller.connected.is_set(), 10)
            await asyncio.to_thread(dovecot.restart)
            await h.eventually(lambda: [e["event"] for e in logs].count("imap.connected") == 2, 15)
    bug, *dropped = [e for e in logs if e["event"] == "imap.disconnected"]  # a retry may meet the restart too
    assert bug["error"] == "KeyError: 'a bug in the session'" and isinstance(bug.get("exc_info"), KeyError)
    assert dropped and all("exc_info" not in e for e in dropped), dropped
