"""Helpers for the e-mail adapter tests: a gateway on free ports, test applications, an SMTP sink
(aiosmtpd) standing in for the outbound relay, and a throwaway Dovecot IMAP server."""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from unittest import mock

from aiosmtpd.smtp import SMTP as AioSMTP
from gateway_helpers import eventually, free_port, require  # noqa: F401 - re-exported for the e-mail tests

import gateway.config as gateway_config
from gateway.server import Gateway
from gateway_adapters.email import EmailAdapter

# -- what the test applications saw ------------------------------------------------------------
RECEIVED: list[tuple[dict[str, Any], dict[str, Any]]] = []
CONTROL: dict[str, Any] = {}


def email_only(app):
    """Test apps serve e-mail only: any other scope (lifespan) raises, so lifespan skips them."""
    import functools

    @functools.wraps(app)
    async def wrapper(scope, receive, send):
        if scope["type"] != "email":
            raise ValueError("this test app only serves email scopes")
        await app(scope, receive, send)

    return wrapper


def reset() -> None:
    RECEIVED.clear()
    CONTROL.clear()


@email_only
async def ok(scope, receive, send):
    """Records the scope and the message, then returns normally (the acknowledgement)."""
    event = await receive()
    RECEIVED.append((scope, event))
    assert (await receive())["type"] == "email.disconnect"


@email_only
async def fail(scope, receive, send):
    event = await receive()
    RECEIVED.append((scope, event))
    raise RuntimeError("the consumer raised")


@email_only
async def slow(scope, receive, send):
    event = await receive()
    RECEIVED.append((scope, event))
    await asyncio.sleep(CONTROL.get("sleep", 30))


@email_only
async def reject(scope, receive, send):
    event = await receive()
    RECEIVED.append((scope, event))
    await send({"type": "email.reject", "code": CONTROL.get("code", 550), "reason": CONTROL.get("reason", "5.7.1 No thanks")})


@email_only
async def reply(scope, receive, send):
    """Answers every message through ``email.send`` (threaded)."""
    event = await receive()
    RECEIVED.append((scope, event))
    msg = event["message"]
    await send({
        "type": "email.send",
        "to": scope["mail_from"],
        "from": scope["rcpt_to"],
        "subject": "Re: " + (msg["subject"] or ""),
        "text": "Thanks, we got it.",
        "in_reply_to": msg["message_id"],
        "references": msg["references"],
    })


@email_only
async def flaky(scope, receive, send):
    """Fails the first ``CONTROL['fail_times']`` deliveries, then succeeds."""
    event = await receive()
    RECEIVED.append((scope, event))
    CONTROL["calls"] = CONTROL.get("calls", 0) + 1
    if CONTROL["calls"] <= CONTROL.get("fail_times", 1):
        raise RuntimeError("not this time")


# -- a gateway with only the e-mail adapter ----------------------------------------------------
def _only_email(dirs: Any, required_dirs: Any = ()) -> dict[str, Any]:
    return {"email": (EmailAdapter, "entry point 'email'")}


def make_gateway(yaml_text: str) -> Gateway:
    """``Gateway.from_text`` with adapter discovery reduced to this adapter, so these tests do not
    depend on the state of other adapters' entry points."""
    with mock.patch.object(gateway_config, "discover", _only_email):
        return Gateway.from_text(yaml_text)


@contextlib.asynccontextmanager
async def email_gateway(yaml_text: str) -> AsyncIterator[Gateway]:
    gw = make_gateway(yaml_text)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(2)


def smtp_address(gw: Gateway) -> tuple[str, int]:
    host, port = gw.addresses["email"][0].rsplit(":", 1)
    return host, int(port)


# -- the outbound relay: an aiosmtpd sink -------------------------------------------------------
class Sink:
    """Collects what it receives; answers ``temp_failures`` DATA commands with 451 first."""

    def __init__(self, temp_failures: int = 0, permanent: bool = False, tls: tuple[Path, Path] | None = None,
                 implicit_tls: bool = False, users: dict[str, str] | None = None) -> None:
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.users = users
        self.logins: list[str] = []
        self.tls_seen: list[bool] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.temp_failures = temp_failures
        self.permanent = permanent
        self.attempts = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def handle_DATA(self, server, session, envelope):
        self.attempts += 1
        if self.permanent:
            return "554 5.7.1 Go away"
        if self.temp_failures > 0:
            self.temp_failures -= 1
            return "451 4.3.0 Try later"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        self.tls_seen.append(session.ssl is not None or self.implicit_tls)
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, data):
        from aiosmtpd.smtp import AuthResult

        user, password = data.login.decode(), data.password.decode()
        ok = self.users is not None and self.users.get(user) == password
        if ok:
            self.logins.append(user)
        return AuthResult(success=ok, handled=False)

    def parsed(self, i: int = -1):
        return BytesParser(policy=email.policy.default).parsebytes(self.messages[i][2])

    async def __aenter__(self) -> Sink:
        import ssl

        loop = asyncio.get_running_loop()
        context = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.tls))
        options: dict[str, Any] = {}
        if self.users is not None:
            # implicit TLS is invisible to aiosmtpd: let it offer AUTH anyway (the socket is TLS)
            options.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=not self.implicit_tls)
        def protocol() -> AioSMTP:
            import warnings

            with warnings.catch_warnings():  # "AUTH without TLS": the socket is TLS, aiosmtpd cannot see it
                warnings.simplefilter("ignore")
                return AioSMTP(self, enable_SMTPUTF8=True, hostname="sink.test", loop=loop,
                               tls_context=None if self.implicit_tls else context, **options)

        self.server = await loop.create_server(
            protocol,
            "127.0.0.1", 0, ssl=context if self.implicit_tls else None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 1)


# -- Dovecot -------------------------------------------------------------------------------------


class Dovecot:
    """A throwaway Dovecot on a free loopback port: one user ``test``/``secret``, Maildir storage
    in a temporary folder owned by the ``mail`` user (Dovecot will not store mail as root)."""

    user = "test"
    password = "secret"

    def __init__(self, cert: tuple[Path, Path] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
        self.port = free_port()
        self.cert = cert
        self.tls_port = free_port() if cert else 0
        self.proc: subprocess.Popen[bytes] | None = None
        import pwd

        mail = pwd.getpwnam("mail")
        self.uid, self.gid = mail.pw_uid, mail.pw_gid
        self.conf = self.dir / "dovecot.conf"

    def config_text(self) -> str:
        d = self.dir
        return f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = gw-dovecot-{self.port}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
{self._ssl()}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = {self.uid}
first_valid_gid = {self.gid}
default_login_user = {_unprivileged()}
default_internal_user = {_unprivileged()}
default_internal_group = {_unprivileged_group()}
mail_location = maildir:{d}/mail/%u
mail_uid = {self.uid}
mail_gid = {self.gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={d}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 50
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
"""

    def _ssl(self) -> str:
        if not self.cert:
            return "ssl = no"
        cert, key = self.cert
        return f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"

    def start(self) -> None:
        d = self.dir
        for sub in ("run", "state", "mail", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chown(d / "mail", self.uid, self.gid)
        os.chown(d / "home", self.uid, self.gid)
        os.chmod(d, 0o755)
        (d / "users").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        self.conf.write_text(self.config_text())
        # A session (process group) of its own: the master forks login, auth and imap workers into
        # it, and stopping the group stops them all (the master alone leaves imap workers serving).
        self.proc = subprocess.Popen([require("dovecot", "/usr/sbin/dovecot"), "-F", "-c", str(self.conf)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                log = (d / "dovecot.log").read_text() if (d / "dovecot.log").exists() else ""
                raise RuntimeError(f"dovecot exited: {out}\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("dovecot did not start listening")

    def deliver(self, raw: bytes, folder: str | None = None) -> None:
        """Deliver one message with dovecot-lda (it switches to the mail user for the storage)."""
        cmd = [require("dovecot-lda", "/usr/lib/dovecot/dovecot-lda"), "-c", str(self.conf), "-d", self.user, "-f", "sender@example.org"]
        if folder:
            cmd += ["-m", folder]
        done = subprocess.run(cmd, input=raw, timeout=10, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"dovecot-lda failed ({done.returncode}): {done.stderr.decode(errors='replace')}")

    def restart(self) -> None:
        """Stop the server and every worker (dropping every connection), then start it again on the
        same port."""
        self._terminate()
        self.start()

    def _terminate(self) -> None:
        """Stop the master and its workers: the process group this helper started it in."""
        if self.proc is None:
            return
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # workers outlive the master for a moment
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unprivileged() -> str:
    import pwd

    for name in ("dovenull", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


def _unprivileged_group() -> str:
    import grp

    for name in ("dovecot", "nogroup"):
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            continue
    return "nogroup"


@email_only
async def dynamic(scope, receive, send):
    """Runs ``CONTROL['app']`` (a test sets it)."""
    await CONTROL["app"](scope, receive, send)


# -- a Channels-style consumer ------------------------------------------------------------------
from gateway.consumers import AsyncEmailConsumer


class SupportConsumer(AsyncEmailConsumer):
    async def message(self, msg):
        RECEIVED.append((self.scope, {"message": msg, "raw": self.raw}))
        subject = msg["subject"] or ""
        if "spam" in subject:
            await self.reject(554, "5.7.1 Looks like spam")
        elif "crash" in subject:
            raise RuntimeError("consumer crashed")
        else:
            await self.reply("We are on it.", html="<p>We are on it.</p>", reply_all=True)


support_consumer = SupportConsumer.as_asgi()


async def auth_hook(username, password):
    """An async AUTH hook: accepts ``hook``/``pw`` only."""
    await asyncio.sleep(0)
    return username == "hook" and password == "pw"


# -- Redis (for the per-mailbox lock): the layer tests' throwaway redis-server -------------------
from test_layer_redis_helpers import RedisServer as Redis  # noqa: F401


# -- crafted messages ----------------------------------------------------------------------------
def nested(levels: int, filler_lines: int = 0, subject: str = "deep") -> bytes:
    """A message whose text part sits inside ``levels`` nested multiparts (nesting depth
    ``levels``), each level opening with ``filler_lines`` short preamble lines."""
    out = [f"From: a@example.org\r\nTo: alice@example.com\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n".encode()]
    for i in range(levels):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % i)
        out.append(b"x\r\n" * filler_lines)
        out.append(b"--b%d\r\n" % i)
    out.append(b"Content-Type: text/plain\r\n\r\nhello\r\n")
    for i in reversed(range(levels)):
        out.append(b"--b%d--\r\n" % i)
    return b"".join(out)


class AuthUser:
    """What a sync AUTH hook hands back: any object; it becomes ``scope["user"]``."""

    def __init__(self, name: str, thread: int) -> None:
        self.name, self.thread = name, thread


def sync_auth_hook(username, password):
    """A blocking AUTH hook (think Django's ``authenticate``): ``carol``/``pw`` is a user object,
    ``dave``/``pw`` a plain True, ``boom`` raises; it records how often it was asked."""
    import threading

    CONTROL["hook_calls"] = CONTROL.get("hook_calls", 0) + 1
    time.sleep(0.01)
    if username == "boom":
        raise RuntimeError("directory unreachable")
    if password != "pw":
        return None
    if username == "carol":
        return AuthUser("carol", threading.get_ident())
    return username == "dave"
