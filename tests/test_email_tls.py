"""STARTTLS and AUTH on the e-mail adapter's SMTP listener."""

from __future__ import annotations

import aiosmtplib
import email_helpers as h
import pytest
from tls_helpers import self_signed

pytestmark = [
    pytest.mark.usefixtures("clean_email_state"),
    pytest.mark.timeout(30),
]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"), "gw.test")


def config(cert, extra: str) -> str:
    c, k = cert
    return f"""\
adapters:
  email:
    smtp:
      listen: "127.0.0.1:0"
      hostname: gw.test
      tls_cert: "{c}"
      tls_key: "{k}"
{extra}
routes:
  email:
    - {{to: "*@example.com", app: "email_helpers:ok"}}
"""


AUTH = """\
      require_starttls: true
      auth_required: true
      auth_users: [{username: alice, password: wonderland}]
      auth_hook: "email_helpers:auth_hook"
"""


async def test_starttls_required_before_mail(cert):
    async with h.email_gateway(config(cert, "      require_starttls: true")) as gw:
        host, port = h.smtp_address(gw)
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=5)
        await client.connect()
        await client.ehlo()
        assert "starttls" in client.esmtp_extensions and "auth" not in client.esmtp_extensions
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await client.mail("a@example.org")
        assert info.value.code == 530
        await client.starttls(validate_certs=False)
        await client.ehlo()
        assert (await client.mail("a@example.org")).code == 250
        assert (await client.rcpt("x@example.com")).code == 250
        assert (await client.data(b"Subject: tls\r\n\r\nhi\r\n")).code == 250
        await client.quit()
    (scope, _), = h.RECEIVED
    assert scope["tls"] is True and scope["auth_user"] is None


async def test_auth_over_tls_only_and_required(cert):
    async with h.email_gateway(config(cert, AUTH)) as gw:
        host, port = h.smtp_address(gw)
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, validate_certs=False, timeout=5)
        await client.connect()
        await client.ehlo()
        assert "auth" in client.esmtp_extensions
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await client.mail("a@example.org")
        assert info.value.code == 530
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login("alice", "wrong")
        await client.login("alice", "wonderland")
        errors, _ = await client.sendmail("a@example.org", ["x@example.com"], b"Subject: auth\r\n\r\nhi\r\n")
        assert errors == {}
        await client.quit()
    (scope, _), = h.RECEIVED
    assert scope["tls"] is True and scope["auth_user"] == "alice"


async def test_auth_is_not_offered_without_tls(cert):
    async with h.email_gateway(config(cert, "      auth_users: [{username: a, password: b}]")) as gw:
        host, port = h.smtp_address(gw)
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=5)
        await client.connect()
        await client.ehlo()
        assert "auth" not in client.esmtp_extensions
        response = await client.execute_command(b"AUTH", b"PLAIN", b"AGEAYg==")
        assert response.code == 538 or response.code >= 500
        await client.quit()


async def test_async_auth_hook_for_users_not_in_the_list(cert):
    async with h.email_gateway(config(cert, AUTH)) as gw:
        host, port = h.smtp_address(gw)
        for user, password, ok in (("hook", "pw", True), ("hook", "nope", False), ("alice", "pw", False)):
            client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, validate_certs=False, timeout=5)
            await client.connect()
            if ok:
                await client.login(user, password)
                await client.sendmail("a@example.org", ["x@example.com"], b"Subject: hook\r\n\r\nhi\r\n")
            else:
                with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                    await client.login(user, password)
            await client.quit()
    (scope, _), = h.RECEIVED
    assert scope["auth_user"] == "hook"
