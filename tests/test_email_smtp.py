"""The e-mail adapter's SMTP listener against real clients (smtplib, aiosmtplib, raw sockets)."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
from email.message import EmailMessage

import aiosmtplib
import email_helpers as h
import pytest

from gateway.errors import ConfigError

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_email_state")]


def config(routes: str, smtp: str = "") -> str:
    return f"""\
adapters:
  email:
    smtp: {{listen: "127.0.0.1:0", hostname: gw.test, domains: [example.com, support.example.com]{smtp}}}
routes:
  email:
{routes}
"""


ROUTES = """\
    - {to: "ticket+<id>@support.example.com", app: "email_helpers:ok", name: tickets}
    - {to: "bad@example.com", app: "email_helpers:fail"}
    - {to: "slow@example.com", app: "email_helpers:slow", timeout: 0.3}
    - {to: "no@example.com", app: "email_helpers:reject"}
    - {to: {regex: "(?P<user>[a-z]+)@example\\\\.com"}, app: "email_helpers:ok", name: people}
"""


class Raw:
    """A line-level SMTP client for the cases real clients refuse to produce."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, gw) -> tuple[Raw, str]:
        host, port = h.smtp_address(gw)
        reader, writer = await asyncio.open_connection(host, port)
        raw = cls(reader, writer)
        return raw, await raw.reply()

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 5)).decode()
            if not line:
                break
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                break
        return "\n".join(lines)

    async def cmd(self, line: str | bytes) -> str:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def sample_message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Jörg Müller <joerg@example.org>"
    msg["To"] = "ticket+42@support.example.com"
    msg["Cc"] = "Bob <bob@example.com>"
    msg["Reply-To"] = "replies@example.org"
    msg["Subject"] = "Drucker kaputt – bitte helfen"
    msg["Message-ID"] = "<m2@example.org>"
    msg["In-Reply-To"] = "<m1@example.org>"
    msg["References"] = "<m0@example.org> <m1@example.org>"
    msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    msg.set_content("Hallo, der Drucker druckt nicht.")
    msg.add_alternative("<p>Hallo, der <b>Drucker</b> druckt nicht.</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="fehler.pdf")
    return msg


async def test_routes_each_recipient_and_builds_the_scope_and_message():
    async with h.email_gateway(config(ROUTES)) as gw:
        host, port = h.smtp_address(gw)
        errors, reply = await aiosmtplib.send(
            sample_message(), sender="joerg@example.org",
            recipients=["ticket+42@support.example.com", "bob@example.com"], hostname=host, port=port,
        )
        assert errors == {} and reply.startswith("2.0.0")
    by_rcpt = {scope["rcpt_to"]: (scope, event) for scope, event in h.RECEIVED}
    assert set(by_rcpt) == {"ticket+42@support.example.com", "bob@example.com"}
    scope, event = by_rcpt["ticket+42@support.example.com"]
    assert scope["type"] == "email" and scope["source"] == "smtp"
    assert scope["url_route"]["kwargs"] == {"id": "42"} and scope["route_name"] == "tickets"
    assert by_rcpt["bob@example.com"][0]["url_route"]["kwargs"] == {"user": "bob"}
    assert scope["mail_from"] == "joerg@example.org"
    assert scope["recipients"] == ["ticket+42@support.example.com", "bob@example.com"]
    assert scope["client"][0] == "127.0.0.1" and scope["server"][1] == port
    assert scope["helo"] and scope["tls"] is False and scope["auth_user"] is None
    assert (b"subject", "Drucker kaputt – bitte helfen".encode()) in scope["headers"]
    assert event["type"] == "email.message" and b"Message-ID: <m2@example.org>" in event["raw"]
    msg = event["message"]
    assert msg["message_id"] == "<m2@example.org>"
    assert msg["from"] == {"name": "Jörg Müller", "address": "joerg@example.org"}
    assert msg["to"] == [{"name": "", "address": "ticket+42@support.example.com"}]
    assert msg["cc"] == [{"name": "Bob", "address": "bob@example.com"}]
    assert msg["reply_to"] == [{"name": "", "address": "replies@example.org"}]
    assert msg["subject"] == "Drucker kaputt – bitte helfen"
    assert msg["date"] == "2024-01-01T10:00:00+00:00"
    assert msg["in_reply_to"] == "<m1@example.org>"
    assert msg["references"] == ["<m0@example.org>", "<m1@example.org>"]
    assert msg["text"].strip() == "Hallo, der Drucker druckt nicht."
    assert "<b>Drucker</b>" in msg["html"]
    assert msg["attachments"] == [{
        "filename": "fehler.pdf", "content_type": "application/pdf", "disposition": "attachment",
        "content_id": None, "content": b"%PDF-1.4 fake",
    }]
    assert ["Subject", "Drucker kaputt – bitte helfen"] in msg["headers"]


async def test_unroutable_and_foreign_recipients_are_refused_at_rcpt():
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, greeting = await Raw.connect(gw)
        assert greeting.startswith("220 gw.test")
        assert (await raw.cmd("EHLO client.test")).startswith("250")
        assert (await raw.cmd("MAIL FROM:<a@example.org>")).startswith("250")
        assert (await raw.cmd("RCPT TO:<Nobody-99@example.com>")).startswith("550 5.1.1")
        assert (await raw.cmd("RCPT TO:<someone@elsewhere.org>")).startswith("550 5.7.1")
        assert (await raw.cmd("DATA")).startswith("503")  # no accepted recipient: nothing to take
        assert (await raw.cmd("QUIT")).startswith("221")
        await raw.close()
    assert h.RECEIVED == []


async def test_smtplib_sendmail_to_an_unroutable_recipient_raises():
    async with h.email_gateway(config(ROUTES)) as gw:
        host, port = h.smtp_address(gw)

        def client():
            with smtplib.SMTP(host, port) as s:
                s.sendmail("a@example.org", ["ticket+x@elsewhere.example.com"], b"Subject: x\r\n\r\nx\r\n")

        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            await asyncio.to_thread(client)
        code, text = info.value.recipients["ticket+x@elsewhere.example.com"]
        assert code == 550
    assert h.RECEIVED == []


@pytest.mark.parametrize("rcpt, code, text", [
    ("bad@example.com", 451, b"4.3.0"),
    ("slow@example.com", 451, b"4.3.0"),
    ("no@example.com", 550, b"5.7.1 No thanks"),
])
async def test_data_reply_tells_how_the_application_ended(rcpt, code, text):
    async with h.email_gateway(config(ROUTES)) as gw:
        host, port = h.smtp_address(gw)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(b"Subject: x\r\n\r\nhello\r\n", sender="a@example.org", recipients=[rcpt], hostname=host, port=port)
        assert info.value.code == code and text.decode() in info.value.message
    assert [s["rcpt_to"] for s, _ in h.RECEIVED] == [rcpt]


async def test_app_chosen_reject_code_and_reason_go_back():
    h.CONTROL.update(code=421, reason="4.7.0 Greylisted, come back later")
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("HELO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        assert (await raw.cmd("RCPT TO:<no@example.com>")).startswith("250")
        assert (await raw.cmd("DATA")).startswith("354")
        assert await raw.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n") == "421 4.7.0 Greylisted, come back later"
        await raw.close()


async def test_250_only_when_every_recipient_was_handled():
    async with h.email_gateway(config(ROUTES)) as gw:
        host, port = h.smtp_address(gw)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(b"Subject: x\r\n\r\nhello\r\n", sender="a@example.org",
                                  recipients=["alice@example.com", "bad@example.com"], hostname=host, port=port)
        assert info.value.code == 451
    assert sorted(s["rcpt_to"] for s, _ in h.RECEIVED) == ["alice@example.com", "bad@example.com"]


async def test_lmtp_style_replies_one_per_recipient():
    async with h.email_gateway(config(ROUTES, ", lmtp_replies: true")) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<alice@example.com>")
        await raw.cmd("RCPT TO:<bad@example.com>")
        await raw.cmd("DATA")
        first = await raw.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        second = await raw.reply()
        assert first.startswith("250 2.1.5 <alice@example.com>")
        assert second.startswith("451 4.3.0 <bad@example.com>")
        await raw.close()


async def test_from_and_header_matchers_first_match_wins():
    routes = """\
    - {from: "*@vip.example.org", to: "help@example.com", app: "email_helpers:ok", name: vip}
    - {to: "help@example.com", header: {subject: "\\\\[(?P<prio>urgent|high)\\\\]"}, app: "email_helpers:ok", name: urgent}
    - {to: "help@example.com", app: "email_helpers:ok", name: normal}
    - {to: "alerts@example.com", header: {x-alert: "^yes$"}, app: "email_helpers:ok", name: alerts}
"""
    async with h.email_gateway(config(routes)) as gw:
        host, port = h.smtp_address(gw)

        async def send(sender, rcpt, subject, extra=b""):
            return await aiosmtplib.send(b"Subject: " + subject + b"\r\n" + extra + b"\r\nbody\r\n",
                                         sender=sender, recipients=[rcpt], hostname=host, port=port)

        await send("boss@vip.example.org", "help@example.com", b"[urgent] x")
        await send("joe@example.org", "help@example.com", b"[URGENT] printer")
        await send("joe@example.org", "help@example.com", b"question")
        await send("mon@example.org", "alerts@example.com", b"disk", b"X-Alert: yes\r\n")
        # A header-only route accepts the recipient at RCPT (headers unknown yet); when the headers
        # do not match and no later route does, the message is refused after DATA.
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await send("mon@example.org", "alerts@example.com", b"disk", b"X-Alert: no\r\n")
        assert info.value.code == 550
    names = [(s["route_name"], s["url_route"]["kwargs"]) for s, _ in h.RECEIVED]
    assert names == [("vip", {}), ("urgent", {"prio": "URGENT"}), ("normal", {}), ("alerts", {})]


async def test_ehlo_announces_extensions_and_size_limit_is_enforced():
    async with h.email_gateway(config(ROUTES, ", max_message_size: 2000")) as gw:
        raw, _ = await Raw.connect(gw)
        ehlo = await raw.cmd("EHLO c.test")
        for ext in ("SIZE 2000", "8BITMIME", "SMTPUTF8", "PIPELINING"):
            assert ext in ehlo
        assert "AUTH" not in ehlo and "STARTTLS" not in ehlo
        assert (await raw.cmd("MAIL FROM:<a@example.org> SIZE=5000")).startswith("552")
        assert (await raw.cmd("MAIL FROM:<a@example.org> SIZE=100")).startswith("250")
        assert (await raw.cmd("RCPT TO:<alice@example.com>")).startswith("250")
        assert (await raw.cmd("DATA")).startswith("354")
        body = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
        assert (await raw.cmd(body * 40 + b".\r\n")).startswith("552")
        # the session goes on: a small message still gets through
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<alice@example.com>")
        await raw.cmd("DATA")
        assert (await raw.cmd(b"Subject: small\r\n\r\nok\r\n.\r\n")).startswith("250")
        await raw.close()
    assert [e["message"]["subject"] for _, e in h.RECEIVED] == ["small"]


async def test_too_many_recipients():
    async with h.email_gateway(config(ROUTES, ", max_recipients: 2")) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        assert (await raw.cmd("RCPT TO:<a@example.com>")).startswith("250")
        assert (await raw.cmd("RCPT TO:<b@example.com>")).startswith("250")
        assert (await raw.cmd("RCPT TO:<c@example.com>")).startswith("452 4.5.3")
        await raw.cmd("DATA")
        assert (await raw.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")).startswith("250")
        await raw.close()
    assert sorted(s["rcpt_to"] for s, _ in h.RECEIVED) == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize("data, reply", [
    (b"Subject: nul\r\n\r\nbad \x00 byte\r\n.\r\n", "550 5.6.0"),
    (b"Subject: lf\r\n\r\nline one\nline two\r\n.\r\n", "550 5.6.0"),
])
async def test_nul_bytes_and_bare_lf_are_refused(data, reply):
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<alice@example.com>")
        await raw.cmd("DATA")
        assert (await raw.cmd(data)).startswith(reply)
        await raw.close()
    assert h.RECEIVED == []


async def test_eight_bit_headers_and_malformed_mime_are_accepted_with_defects():
    data = (b"From: \xc3\x9cml\xc3\xa4ut <u@example.org>\r\nSubject: caf\xe9 \xff\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=ZZ\r\n\r\n"
            b"--ZZ\r\nContent-Type: text/plain; charset=nonsense\r\n\r\nhello\r\n")  # no closing boundary
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME")
        await raw.cmd("RCPT TO:<alice@example.com>")
        await raw.cmd("DATA")
        assert (await raw.cmd(data + b".\r\n")).startswith("250")
        await raw.close()
    (_, event), = h.RECEIVED
    msg = event["message"]
    assert msg["from"]["name"] == "Ümläut"
    assert msg["subject"].startswith("caf")
    assert msg["text"].strip() == "hello"
    assert msg["defects"]
    assert event["raw"] == data


async def test_smtputf8_addresses_and_null_sender():
    routes = '    - {to: "*@example.com", app: "email_helpers:ok"}\n'
    async with h.email_gateway(config(routes)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        assert (await raw.cmd("MAIL FROM:<> SMTPUTF8")).startswith("250")
        assert (await raw.cmd("RCPT TO:<jürgen@example.com>")).startswith("250")
        await raw.cmd("DATA")
        assert (await raw.cmd("Subject: bounce\r\n\r\nx\r\n.")).startswith("250")
        await raw.close()
    (scope, _), = h.RECEIVED
    assert scope["mail_from"] == "" and scope["rcpt_to"] == "jürgen@example.com" and scope["smtputf8"] is True


async def test_mail_and_rcpt_address_syntax():
    routes = '    - {to: "*@example.com", app: "email_helpers:ok"}\n'
    async with h.email_gateway(config(routes)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        replies = [await raw.cmd(line) for line in (
            "MAIL FROM:<a b@@example.org>", "MAIL FROM:<>x", "MAIL FROM:plain@example.org SIZE=10",
            "RCPT TO:<@relay.example,:bad>", "RCPT TO:<ok@example.com> NOTIFY=NEVER", "RCPT TO:<ok@example.com>",
        )]
        await raw.close()
    # the same replies as aiosmtpd's own address parsing gives (the listener replaces it for speed)
    assert [r.split(" ", 1)[0] for r in replies] == ["553", "555", "250", "550", "555", "250"]
    assert replies[0] == "553 5.1.3 Error: malformed address"
    assert replies[3] == "550 5.7.1 <bad>: relay access denied"  # a source route is dropped (RFC 5321 4.1.2)

async def test_commands_out_of_order_get_503():
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        assert (await raw.cmd("MAIL FROM:<a@example.org>")).startswith("503")  # before HELO/EHLO
        await raw.cmd("EHLO c.test")
        assert (await raw.cmd("RCPT TO:<alice@example.com>")).startswith("503")  # before MAIL
        assert (await raw.cmd("DATA")).startswith("503")
        await raw.cmd("MAIL FROM:<a@example.org>")
        assert (await raw.cmd("MAIL FROM:<a@example.org>")).startswith("503")  # nested MAIL
        assert (await raw.cmd("DATA")).startswith("503")  # before RCPT
        assert (await raw.cmd("BOGUS")).startswith("500")
        assert (await raw.cmd("RSET")).startswith("250")
        await raw.close()
    assert h.RECEIVED == []


async def test_client_stalling_mid_data_gets_421_and_nothing_is_accepted():
    async with h.email_gateway(config(ROUTES, ", data_timeout: 0.3, command_timeout: 5")) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<alice@example.com>")
        assert (await raw.cmd("DATA")).startswith("354")
        raw.writer.write(b"Subject: stall\r\n\r\nhalf a mess")
        await raw.writer.drain()
        assert (await raw.reply()).startswith("421 4.4.2")
        assert await raw.reader.read() == b""  # closed
        await raw.close()
    assert h.RECEIVED == []


async def test_idle_client_gets_421_after_command_timeout():
    async with h.email_gateway(config(ROUTES, ", command_timeout: 0.3")) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        assert (await raw.reply()).startswith("421 4.4.2")
        await raw.close()


async def test_slow_application_is_not_cut_off_by_the_command_timeout():
    h.CONTROL["sleep"] = 0.6
    routes = '    - {to: "*@example.com", app: "email_helpers:slow", timeout: 5}\n'
    async with h.email_gateway(config(routes, ", command_timeout: 0.3, data_timeout: 0.3")) as gw:
        host, port = h.smtp_address(gw)
        errors, reply = await aiosmtplib.send(b"Subject: x\r\n\r\nhi\r\n", sender="a@example.org",
                                              recipients=["a@example.com"], hostname=host, port=port)
        assert reply.startswith("2.0.0")


async def test_sessions_over_the_limit_get_421():
    async with h.email_gateway(config(ROUTES, ", max_sessions: 1")) as gw:
        first, greeting = await Raw.connect(gw)
        assert greeting.startswith("220")
        second, refused = await Raw.connect(gw)
        assert refused.startswith("421 4.3.2")
        await second.close()
        await first.cmd("QUIT")
        await first.close()
        await h.eventually(lambda: not gw.adapters["email"].smtp.sessions)
        third, greeting = await Raw.connect(gw)
        assert greeting.startswith("220")
        await third.close()


async def test_swaks_delivers_a_message():
    async with h.email_gateway(config(ROUTES)) as gw:
        host, port = h.smtp_address(gw)
        proc = await asyncio.create_subprocess_exec(
            h.require("swaks"), "--server", host, "--port", str(port), "--from", "a@example.org",
            "--to", "ticket+7@support.example.com", "--header", "Subject: from swaks",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, out.decode()
    (scope, event), = h.RECEIVED
    assert scope["url_route"]["kwargs"] == {"id": "7"} and event["message"]["subject"] == "from swaks"


@pytest.mark.parametrize("route, problem", [
    ('{to: {regex: "(unclosed"}, app: "email_helpers:ok"}', "invalid regular expression"),
    ('{to: "a<1bad>@x", app: "email_helpers:ok"}', "capture"),
    ('{to: "a@x", app: "email_helpers:ok", subject: x}', "unknown key 'subject'"),
    ('{to: "a@x"}', "app"),
])
def test_bad_routes_are_config_errors(route, problem):
    with pytest.raises(ConfigError) as info:
        h.make_gateway(config(f"    - {route}\n"))
    assert problem in str(info.value)
    assert "routes.email" in str(info.value) or "line" in str(info.value) or ":" in str(info.value)


def test_bad_smtp_config_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        h.make_gateway(config('    - {to: "*@example.com", app: "email_helpers:ok"}\n', ", require_starttls: true"))
    assert "tls_cert" in str(info.value)


async def test_line_over_1000_octets_is_refused():
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<alice@example.com>")
        await raw.cmd("DATA")
        assert (await raw.cmd(b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")).startswith("500")
        await raw.close()
    assert h.RECEIVED == []


async def test_shutdown_lets_a_message_in_flight_finish_and_tells_idle_clients():
    h.CONTROL["sleep"] = 0.4
    routes = '    - {to: "*@example.com", app: "email_helpers:slow", timeout: 5}\n'
    gw = h.make_gateway(config(routes))
    await gw.start()
    busy, _ = await Raw.connect(gw)
    idle, _ = await Raw.connect(gw)
    await busy.cmd("EHLO c.test")
    await busy.cmd("MAIL FROM:<a@example.org>")
    await busy.cmd("RCPT TO:<a@example.com>")
    await busy.cmd("DATA")
    busy.writer.write(b"Subject: in flight\r\n\r\nx\r\n.\r\n")
    await busy.writer.drain()
    await h.eventually(lambda: len(h.RECEIVED) == 1)
    stopping = asyncio.ensure_future(gw.stop(5))
    assert (await busy.reply()).startswith("250")
    assert (await idle.reply()).startswith("421 4.3.2")
    await stopping
    await busy.close()
    await idle.close()


async def test_replies_are_counted_in_metrics():
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<nobody-1@example.com>")
        await raw.cmd("RCPT TO:<alice@example.com>")
        await raw.cmd("DATA")
        await raw.cmd(b"Subject: m\r\n\r\nx\r\n.\r\n")
        await raw.close()
        text = gw.metrics.render().decode()
    assert 'gateway_email_smtp_replies_total{code="550",stage="rcpt"} 1.0' in text
    assert 'gateway_email_smtp_replies_total{code="250",stage="data"} 1.0' in text


def test_two_imap_mailboxes_with_one_name_are_a_config_error():
    text = """\
adapters:
  email:
    imap:
      - {host: h, user: u, password: p}
      - {host: h, user: u, password: p}
routes:
  email:
    - {app: "email_helpers:ok"}
"""
    with pytest.raises(ConfigError) as info:
        h.make_gateway(text)
    assert "distinct 'name'" in str(info.value)


async def test_lmtp_style_replies_for_header_routes_and_bad_data():
    routes = """\
    - {to: "alerts@example.com", header: {x-alert: "^yes$"}, app: "email_helpers:ok"}
    - {to: "b*@example.com", app: "email_helpers:ok"}
"""
    async with h.email_gateway(config(routes, ", lmtp_replies: true")) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<alerts@example.com>")
        await raw.cmd("RCPT TO:<bob@example.com>")
        await raw.cmd("DATA")
        first = await raw.cmd(b"Subject: x\r\nX-Alert: no\r\n\r\nhi\r\n.\r\n")
        second = await raw.reply()
        assert first.startswith("550 5.7.1 <alerts@example.com>") and second.startswith("250 2.1.5 <bob@example.com>")
        await raw.cmd("MAIL FROM:<a@example.org>")
        await raw.cmd("RCPT TO:<bob@example.com>")
        await raw.cmd("RCPT TO:<bert@example.com>")
        await raw.cmd("DATA")
        assert (await raw.cmd(b"Subject: nul\r\n\r\n\x00\r\n.\r\n")).startswith("550 5.6.0")
        assert (await raw.reply()).startswith("550 5.6.0")
        assert (await raw.cmd("NOOP")).startswith("250")
        await raw.close()
    assert [s["rcpt_to"] for s, _ in h.RECEIVED] == ["bob@example.com"]


async def test_one_info_line_per_mail_and_the_library_detail_only_at_debug(caplog, monkeypatch):
    import logging

    from structlog.testing import capture_logs

    from gateway import logs as gateway_logs

    caplog.set_level(logging.INFO)

    async def send_three(gw):
        host, port = h.smtp_address(gw)
        for n in range(3):
            await aiosmtplib.send(f"Subject: {n}\r\n\r\nhi\r\n".encode(), sender="secret.sender@example.org",
                                  recipients=["alice@example.com"], hostname=host, port=port)

    async with h.email_gateway(config(ROUTES)) as gw:
        with capture_logs() as logs:
            await send_three(gw)
        library = [r for r in caplog.records if r.name == "mail.log" and r.levelno >= logging.INFO]
        assert library == []
        assert [e["event"] for e in logs] == ["smtp.message"] * 3
        assert all(e["reply"] == "250 2.0.0" and e["recipients"] == 1 for e in logs)
        assert "secret.sender" not in repr(logs)
        # at the gateway's debug level the library's lines are there, as DEBUG
        caplog.clear()
        caplog.handler.setLevel(logging.DEBUG)
        monkeypatch.setattr(gateway_logs, "debug", True)
        await send_three(gw)
        library = [r for r in caplog.records if r.name == "mail.log"]
        assert library and {r.levelname for r in library} == {"DEBUG"}


async def test_help_knows_every_command_the_listener_wraps():
    async with h.email_gateway(config(ROUTES)) as gw:
        raw, _ = await Raw.connect(gw)
        await raw.cmd("EHLO c.test")
        listing = await raw.cmd("HELP")
        data, mail = await raw.cmd("HELP DATA"), await raw.cmd("HELP MAIL")
        await raw.close()
    assert listing.startswith("250") and {"DATA", "MAIL", "RCPT", "QUIT"} <= set(listing.split())
    assert data == "250 Syntax: DATA" and mail.startswith("250 Syntax: MAIL FROM:")
