"""SMTP AUTH against a hook the adapter knows only by signature (Django's authenticate in real
life): sync hooks off the event loop, the user object in the scope, failed logins logged,
counted and throttled per client address."""

from __future__ import annotations

import base64
import threading

import aiosmtplib
import email_helpers as h
import pytest
from structlog.testing import capture_logs
from tls_helpers import self_signed

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_email_state")]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("authtls"), "gw.test")


def config(cert, extra: str = "") -> str:
    c, k = cert
    return f"""\
adapters:
  email:
    smtp:
      listen: "127.0.0.1:0"
      hostname: gw.test
      tls_cert: "{c}"
      tls_key: "{k}"
      auth_users: [{{username: alice, password: wonderland}}]
      auth_hook: "email_helpers:sync_auth_hook"
{extra}
routes:
  email:
    - {{to: "*@example.com", app: "email_helpers:ok"}}
"""


async def client(gw) -> aiosmtplib.SMTP:
    host, port = h.smtp_address(gw)
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, validate_certs=False, timeout=5)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


async def test_the_session_user_is_what_the_hook_returned_and_a_sync_hook_runs_off_the_loop(cert):
    loop_thread = threading.get_ident()
    async with h.email_gateway(config(cert)) as gw:
        for user, password in (("carol", "pw"), ("dave", "pw"), ("alice", "wonderland"), (None, None)):
            smtp = await client(gw)
            if user:
                await smtp.login(user, password)
            await smtp.sendmail("a@example.org", ["x@example.com"], f"Subject: {user}\r\n\r\nhi\r\n".encode())
            await smtp.quit()
    by_subject = {e["message"]["subject"]: s for s, e in h.RECEIVED}
    carol = by_subject["carol"]["user"]
    assert isinstance(carol, h.AuthUser) and carol.name == "carol" and carol.thread != loop_thread
    assert by_subject["carol"]["auth_user"] == "carol"
    assert by_subject["dave"]["user"] == "dave"  # a bare True: the login name
    assert by_subject["alice"]["user"] == "alice"  # auth_users: the login name
    assert by_subject["None"]["user"] is None and by_subject["None"]["auth_user"] is None


async def test_thirty_wrong_passwords_from_one_address_are_logged_and_throttled(cert):
    async with h.email_gateway(config(cert)) as gw:
        smtp = await client(gw)
        with capture_logs() as logs:
            codes = []
            for n in range(30):
                reply = await smtp.execute_command(b"AUTH", b"PLAIN", plain("mallory", f"guess-{n}"))
                codes.append(reply.code)
            other = await client(gw)  # a new connection from the same address is throttled too
            codes.append((await other.execute_command(b"AUTH", b"PLAIN", plain("alice", "wonderland"))).code)
        await smtp.quit()
        await other.quit()
        metrics = gw.metrics.render().decode()
    assert codes == [535] * 5 + [454] * 26
    assert h.CONTROL["hook_calls"] == 5  # nobody was asked once the address was throttled
    failed = [e for e in logs if e["event"] == "smtp.auth_failed"]
    assert len(failed) == 5 and all(e["username"] == "mallory" and e["client"] == "127.0.0.1" for e in failed)
    assert [e["event"] for e in logs].count("smtp.auth_throttled") == 1
    assert "guess-" not in repr(logs)  # never the password
    assert 'gateway_auth_failures_total{adapter="email",reason="invalid"} 5.0' in metrics
    assert 'gateway_auth_failures_total{adapter="email",reason="throttled"} 26.0' in metrics


async def test_a_hook_that_raises_refuses_the_login_and_says_why_in_the_log(cert):
    async with h.email_gateway(config(cert, "      login_throttle: {max_failures: 0}")) as gw:
        smtp = await client(gw)
        with capture_logs() as logs:
            reply = await smtp.execute_command(b"AUTH", b"PLAIN", plain("boom", "pw"))
        await smtp.quit()
        assert reply.code == 535
        metrics = gw.metrics.render().decode()
    assert [e["event"] for e in logs] == ["smtp.auth_hook_failed", "smtp.auth_failed"]
    assert "directory unreachable" in logs[0]["error"] and logs[1]["reason"] == "hook_error"
    assert 'gateway_auth_failures_total{adapter="email",reason="hook_error"} 1.0' in metrics


def test_throttling_is_configurable_and_zero_turns_it_off(cert):
    from gateway.throttle import LoginThrottle

    gw = h.make_gateway(config(cert, "      login_throttle: {max_failures: 2, window: 5}"))
    (email,) = gw.plan.adapters
    assert email.config.smtp.login_throttle.max_failures == 2
    off = LoginThrottle(max_failures=0, window=60)
    assert not any(off.failed("a") for _ in range(100)) and not off.blocked("a")
