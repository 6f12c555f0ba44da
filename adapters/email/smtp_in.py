"""The SMTP listener (aiosmtpd): recipients routed at RCPT, messages handed to applications at DATA.

The replies tell the truth:

* RCPT: ``550 5.1.1`` when no route accepts the recipient (never an open relay),
  ``550 5.7.1`` for a domain outside ``smtp.domains``, ``452 4.5.3`` past ``max_recipients``;
* DATA: ``250`` only after every routed instance returned normally; ``451 4.3.0`` when one raised
  or timed out; the code and reason of an ``email.reject`` the application sent; ``550 5.6.0``
  for NUL bytes / bare LF (by config); ``552`` over the size limit (aiosmtpd, also ``SIZE=``).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .aiosmtpd_compat import CompatSMTP
from .auth import THROTTLED, Login, SmtpAuth
from .library_logs import quiet_library
from .parse import TooComplex, read_message, scope_headers

if TYPE_CHECKING:
    from .adapter import EmailAdapter
    from .config import SmtpConfig

ASGI = {"version": "3.0", "spec_version": "1.0"}
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


def reply_text(code: int, reason: str | None, default: str) -> str:
    """An SMTP reply line from an application's code and reason (one line, no control characters)."""
    text = " ".join((reason or default).split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)[:400]
    if not text:
        text = default
    return f"{code} {text}"


class GatewaySMTP(CompatSMTP):
    """aiosmtpd's protocol with separate command/data timeouts, a ``421`` on timeout and session accounting."""

    def __init__(self, handler: SmtpHandler, *, data_timeout: float, on_close: Callable[[GatewaySMTP], None],
                 draining: Callable[[], bool], auth: SmtpAuth | None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._auth = auth
        self._data_timeout = data_timeout
        self._on_close = on_close
        self._draining = draining
        self.busy = False  # True while applications run for a message
        self.in_data = False  # from DATA until its reply: the message a shutdown lets finish

    @functools.wraps(SMTP.smtp_AUTH)
    async def smtp_AUTH(self, arg: str) -> None:
        if await self.refused_while_draining():
            return
        # A throttled address is refused before the exchange: no credentials read, no hook called.
        if self._auth is not None and self.session is not None and self._auth.throttled(_client(self.session)):
            await self.push(THROTTLED)
            return
        await super().smtp_AUTH(arg)

    @functools.wraps(SMTP.smtp_DATA)
    async def smtp_DATA(self, arg: str) -> None:
        if await self.refused_while_draining():
            return
        self.restart_timer(self._data_timeout)  # the next command sets the command timeout again
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False

    async def refused_while_draining(self) -> bool:
        """During shutdown every command but QUIT gets ``421 4.3.2`` and the connection closes,
        so no new transaction starts while in-flight messages finish."""
        if not self._draining():
            return False
        await self.push(SHUTTING_DOWN)
        self.close_now()
        return True

    def close_now(self, reply: str | None = None) -> None:
        """Write ``reply`` (if any) and close; the transport may be gone already."""
        transport = self.transport
        if transport is None:
            return
        if reply is not None:
            try:
                self.write_now(reply.encode() + b"\r\n")
            except Exception:  # noqa: BLE001 - the transport is closing anyway
                pass
        transport.close()

    def on_timeout(self) -> bool:
        if self.busy:
            return False  # the applications are working; the handler re-arms the timer
        try:
            self.write_now(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        except Exception:  # noqa: BLE001 - the transport may be gone already
            pass
        return True

    def pause_timeout(self) -> None:
        self.busy = True
        self.stop_timer()

    def resume_timeout(self) -> None:
        self.busy = False
        if self.transport is not None:
            self.restart_timer()

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._on_close(self)


def _guarded(name: str) -> Callable[[GatewaySMTP, str], Awaitable[None]]:
    @functools.wraps(getattr(SMTP, name))  # keeps the HELP text aiosmtpd attaches to the method
    async def command(self: GatewaySMTP, arg: str) -> None:
        if not await self.refused_while_draining():
            await getattr(super(GatewaySMTP, self), name)(arg)

    return command


# aiosmtpd dispatches to the ``smtp_<COMMAND>`` methods; each but QUIT (and DATA, AUTH above) is
# wrapped the same way for the shutdown refusal.
for _name in ("smtp_HELO", "smtp_EHLO", "smtp_NOOP", "smtp_RSET", "smtp_MAIL", "smtp_RCPT", "smtp_VRFY",
              "smtp_EXPN", "smtp_HELP", "smtp_STARTTLS"):
    setattr(GatewaySMTP, _name, _guarded(_name))


def _peer(session: Session) -> object:
    """``Session.peer``, which aiosmtpd annotates as a string: it holds the transport's
    ``peername``, a tuple on TCP (and a path on a Unix socket)."""
    return session.peer


def _client(session: Session) -> str:
    """The client's address (no port): what failed logins are counted and throttled by."""
    peer = _peer(session)
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class _Busy(asyncio.Protocol):
    """What a client over ``max_sessions`` gets: a 421 greeting and a closed connection."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any event loop's stream transport writes (uvloop's is no asyncio.WriteTransport subclass).
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(f"421 4.3.2 {self.hostname} Too many connections, try again later\r\n".encode())
        writer.close()


class SmtpHandler:
    """aiosmtpd handler hooks: routing at RCPT, running the applications at DATA."""

    def __init__(self, adapter: EmailAdapter, config: SmtpConfig) -> None:
        self.adapter = adapter
        self.context = adapter.context
        self.config = config
        self.log = adapter.context.log
        self.domains = set(config.domains)
        self._replies = adapter.context.metrics.counter(
            "gateway_email_smtp_replies_total",
            "SMTP replies that decide a recipient or a message: RCPT refusals and DATA replies, by stage and code.",
            ("stage", "code"),
        )
        self._children: dict[tuple[str, str], Any] = {}
        self.limits = adapter.config.mime

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's own answer would echo the exception to the client: log it here instead, and
        give the client a temporary failure it can retry."""
        self.log.error("smtp.error", error=f"{type(error).__name__}: {error}", exc_info=error)
        return "451 4.3.0 Local error in processing, try again later"

    def count(self, stage: str, reply: str) -> str:
        key = (stage, reply[:3])
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._replies.labels(*key)
        child.inc()
        return reply

    # -- EHLO: no AUTH line when no accounts are configured --------------------------------
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if not self.adapter.auth_enabled:
            responses = [r for r in responses if not r[4:].startswith("AUTH")]
        # aiosmtpd reads commands one line at a time, so pipelined commands work: say so.
        responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        if self.config.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if not address.isascii() and not envelope.smtp_utf8:
            return "553 5.6.7 Non-ASCII address not permitted without SMTPUTF8"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    def base_scope(self, server: SMTP, session: Session, envelope: Envelope) -> dict[str, Any]:
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":
            mail_from = ""
        transport = server.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        peer = _peer(session)
        auth_data: object = session.auth_data  # annotated None by aiosmtpd: it holds what the authenticator returned
        login = auth_data if session.authenticated and isinstance(auth_data, Login) else None
        return {
            "type": "email",
            "asgi": ASGI,
            "source": "smtp",
            "mail_from": mail_from,
            "rcpt_to": None,
            "recipients": list(envelope.rcpt_tos),
            "client": [peer[0], peer[1]] if isinstance(peer, tuple) else None,
            "server": [sockname[0], sockname[1]] if isinstance(sockname, tuple) else None,
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth_user": login.username if login is not None else None,
            "user": login.user if login is not None else None,
            "smtputf8": bool(envelope.smtp_utf8),
            "headers": None,
        }

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        if not address.isascii() and not envelope.smtp_utf8:
            return self.count("rcpt", "553 5.6.7 Non-ASCII address not permitted without SMTPUTF8")
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return self.count("rcpt", "452 4.5.3 Error: too many recipients")
        domain = address.rpartition("@")[2].lower()
        if self.domains and domain not in self.domains:
            return self.count("rcpt", f"550 5.7.1 <{address}>: relay access denied")
        scope = self.base_scope(server, session, envelope)
        scope["rcpt_to"] = address
        if self.context.resolve(scope) is None:
            return self.count("rcpt", f"550 5.1.1 <{address}>: recipient address rejected: no route accepts it")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, GatewaySMTP)
        server.pause_timeout()
        try:
            reply = self.count("data", await self._data(server, session, envelope))
        finally:
            server.resume_timeout()
        # The one INFO line per mail (no addresses: those are in the app's hands and at debug level).
        peer = _peer(session)
        self.log.info("smtp.message", client=peer[0] if isinstance(peer, tuple) else None,
                      size=len(envelope.original_content or b""), recipients=len(envelope.rcpt_tos),
                      reply=" ".join(reply.split(" ", 2)[:2]))
        return reply

    async def _data(self, server: GatewaySMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        lmtp = self.config.lmtp_replies

        def every(reply: str) -> str:  # LMTP: one reply line per recipient
            return "\r\n".join([reply] * len(envelope.rcpt_tos)) if lmtp else reply

        if self.config.reject_nul and b"\x00" in raw:
            return every("550 5.6.0 Message contains NUL characters")
        if self.config.bare_lf == "reject" and raw.count(b"\n") != raw.count(b"\r\n"):
            return every("550 5.6.0 Message contains bare LF line endings (use CRLF)")
        try:
            parsed = await read_message(raw, self.limits)
        except TooComplex as exc:
            self.log.info("smtp.too_complex", reason=str(exc), size=len(raw))
            return every(f"550 5.6.0 Message too complex: {exc}")
        base = self.base_scope(server, session, envelope)
        base["headers"] = scope_headers(parsed)
        base["message_id"] = parsed["message_id"]
        event = {"type": "email.message", "raw": raw, "message": parsed}
        jobs = []
        unroutable: dict[int, str] = {}
        for i, rcpt in enumerate(envelope.rcpt_tos):
            scope = dict(base)
            scope["rcpt_to"] = rcpt
            match = self.context.resolve(scope)
            if match is None:
                # A header matcher said "may match" at RCPT but the headers do not.
                refusal = f"550 5.7.1 <{rcpt}>: no route accepts this message"
                if not lmtp:
                    return refusal  # one reply for all recipients: refuse before anything runs
                unroutable[i] = refusal
                continue
            jobs.append((rcpt, match, scope))
        # Shielded: a client that hangs up after its final dot does not cancel the applications
        # (it will retry, as it never saw the 250); a gateway shutdown still cancels them.
        replies = await self.adapter.run_shielded([(m, s) for _, m, s in jobs], event) if jobs else []
        if lmtp:
            ran = iter(replies)
            return "\r\n".join(unroutable[i] if i in unroutable else next(ran) for i in range(len(envelope.rcpt_tos)))
        failed = [r for r in replies if r.startswith("451 4.3.0")]
        if failed:
            return failed[0]
        refused = [r for r in replies if not r.startswith("2")]
        if refused:
            return refused[0]
        return "250 2.0.0 OK: message accepted"


class SmtpServer:
    """Owns the listening socket and the live sessions."""

    def __init__(self, adapter: EmailAdapter, config: SmtpConfig, tls_context: ssl.SSLContext | None) -> None:
        self.adapter = adapter
        self.config = config
        self.handler = SmtpHandler(adapter, config)
        self.tls_context = tls_context
        self.sessions: set[GatewaySMTP] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.hostname = config.hostname
        self.auth = SmtpAuth(config, adapter.log, adapter.context.metrics) if adapter.auth_enabled else None
        self.authenticator = self._make_authenticator()
        quiet_library()
        self.draining = False
        self._saturated = False  # over max_sessions since the last free slot: logged once per incident

    def _make_authenticator(self) -> Callable[..., Any] | None:
        """aiosmtpd's authenticator callback, when AUTH is on. aiosmtpd calls it synchronously;
        it returns a coroutine, which ``GatewaySMTP.auth_PLAIN``/``auth_LOGIN`` await."""
        auth = self.auth
        if auth is None:
            return None

        async def check(client: str, mechanism: str, username: str, password: str) -> AuthResult:
            if auth.throttled(client):  # the block began while this exchange was under way
                return AuthResult(success=False, handled=False, message=THROTTLED)
            login = await auth.check(client, username, password, mechanism)
            return AuthResult(success=login is not None, handled=False, auth_data=login)

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> Any:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            return check(_client(session), mechanism, data.login.decode("utf-8", "replace"),
                         data.password.decode("utf-8", "replace"))

        return authenticate

    def _protocol(self) -> asyncio.Protocol:
        hostname = self.hostname or "localhost"
        if len(self.sessions) >= self.config.max_sessions:
            if not self._saturated:
                self._saturated = True
                self.adapter.log.warning("smtp.max_sessions_reached", max_sessions=self.config.max_sessions,
                                         note="further clients get 421 4.3.2 until a session ends")
            self.handler.count("connect", "421")
            return _Busy(hostname)
        cfg = self.config
        proto = GatewaySMTP(
            self.handler,
            data_timeout=cfg.data_timeout,
            on_close=self._closed,
            draining=lambda: self.draining,
            auth=self.auth,
            data_size_limit=cfg.max_message_size or None,
            enable_SMTPUTF8=cfg.smtputf8,
            decode_data=False,
            hostname=self.hostname,
            ident="asgi-gateway ESMTP",
            tls_context=self.tls_context,
            require_starttls=cfg.require_starttls,
            timeout=cfg.command_timeout,
            auth_required=False,  # enforced in handle_MAIL with an RFC 4954 reply
            auth_require_tls=True,
            authenticator=self.authenticator,
            auth_exclude_mechanism=None if self.adapter.auth_enabled else ["LOGIN", "PLAIN"],
            loop=asyncio.get_running_loop(),
        )
        self.sessions.add(proto)
        return proto

    def _closed(self, session: GatewaySMTP) -> None:
        self.sessions.discard(session)
        if len(self.sessions) < self.config.max_sessions:
            self._saturated = False

    async def start(self, host: str, port: int) -> None:
        """Listen on one more address (the adapter calls this once per ``listen`` entry)."""
        if self.hostname is None:
            import socket

            self.hostname = await asyncio.to_thread(socket.getfqdn)
        self.servers.append(await asyncio.get_running_loop().create_server(
            self._protocol, host, port, reuse_port=self.config.reuse_port or None))

    @property
    def addresses(self) -> list[str]:
        out = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    async def stop(self, drain: float) -> None:
        """Stop taking mail: close the listener; tell idle sessions ``421 4.3.2`` at once; let
        messages in DATA finish for up to ``drain`` seconds (their next command but QUIT gets
        ``421``); then tell whoever is left ``421`` and close. Returns within ``drain`` plus a
        moment; the adapter cancels the applications of messages still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        self.draining = True
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            if not session.in_data:
                session.close_now(SHUTTING_DOWN)
        while any(s.in_data for s in self.sessions) and loop.time() < deadline:  # noqa: ASYNC110 - a poll bounded by the drain deadline
            await asyncio.sleep(0.02)
        for session in list(self.sessions):
            session.close_now(SHUTTING_DOWN)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), max(0.1, min(1.0, deadline - loop.time())))
            except TimeoutError:
                pass
        self.servers.clear()
