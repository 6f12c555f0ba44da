"""``EmailAdapter``: SMTP in, IMAP in, SMTP out, tied to the gateway core."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.errors import StartupError
from gateway.events import EventSpec
from gateway.plugins import Adapter, AdapterContext
from gateway.routing import Match
from gateway.schema import parse_listen
from gateway.types import Message

from . import aiosmtpd_compat, stdlib_compat
from .bridge import EmailBridgeTarget
from .config import EmailConfig
from .matching import EmailRoute
from .smtp_in import SmtpServer, reply_text
from .smtp_out import REJECT_SPEC, SEND_SPEC, DeliveryError, Relay


class EmailAdapter(Adapter):
    """The ``email`` adapter (see docs/email.md and docs/specs/email.md)."""

    name: ClassVar[str] = "email"
    config_model = EmailConfig
    scope_types = ("email",)
    route_models: ClassVar[dict[str, type[EmailRoute]]] = {"email": EmailRoute}
    send_events: ClassVar[dict[str, dict[str, EventSpec]]] = {"email": {"email.send": SEND_SPEC, "email.reject": REJECT_SPEC}}
    outbound_channels = ("email.send",)
    bridge_target = EmailBridgeTarget

    config: EmailConfig

    def __init__(self, config: EmailConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        self.log = context.log
        self.smtp: SmtpServer | None = None
        self.relay = Relay(config.relay) if config.relay is not None else None
        self.pollers: list[Any] = []
        self._inbound: set[asyncio.Task[list[str]]] = set()
        smtp = config.smtp
        self.auth_enabled = bool(smtp and (smtp.auth_users or smtp.auth_hook))

    @classmethod
    def for_workers(cls, config: Any) -> Any:
        """SMTP shares its listener through SO_REUSEPORT; IMAP mailboxes already take one poller per
        mailbox across processes (the Redis lock)."""
        if config.smtp is None:
            return config
        return config.model_copy(update={"smtp": config.smtp.model_copy(update={"reuse_port": True})})

    @classmethod
    def listen_addresses(cls, config: Any) -> list[str]:
        if config.smtp is None:
            return []
        return [f"tcp:{parse_listen(a)}" for a in config.smtp.listen]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        stdlib_compat.CONTRACT.require()  # the parser of every message, SMTP or IMAP
        if cfg.smtp is not None:
            aiosmtpd_compat.CONTRACT.require()
            tls = None
            if cfg.smtp.tls_cert:
                tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                try:
                    tls.load_cert_chain(cfg.smtp.tls_cert, cfg.smtp.tls_key)
                except (OSError, ssl.SSLError) as exc:
                    raise StartupError(f"adapters.email.smtp: cannot load tls_cert/tls_key: {exc}") from exc
            self.smtp = SmtpServer(self, cfg.smtp, tls)
            for text in cfg.smtp.listen:
                address = parse_listen(text)
                try:
                    await self.smtp.start(address.host, address.port)
                except OSError as exc:
                    raise StartupError(f"adapters.email.smtp: cannot listen on {text}: {exc}") from exc
            self.context.health.set("email.smtp", "ok", ", ".join(self.smtp.addresses))
        if cfg.imap:
            from .imap import MailboxPoller

            for mailbox in cfg.imap:
                poller = MailboxPoller(self, mailbox)
                self.pollers.append(poller)
                poller.start()

    async def stop(self, drain: float) -> None:
        """One drain period for everything: the listener, the pollers and the messages in the
        applications share the deadline; what still runs after it is cancelled (not acknowledged,
        so the sender retries or the IMAP message stays)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        parts = [poller.stop(drain) for poller in self.pollers]
        if self.smtp is not None:
            parts.append(self.smtp.stop(drain))
        await asyncio.gather(*parts)
        self.pollers.clear()
        left = [t for t in self._inbound if not t.done()]
        if left:
            remaining = deadline - loop.time()
            _, pending = await asyncio.wait(left, timeout=remaining) if remaining > 0 else (set(), set(left))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.smtp = None

    @property
    def addresses(self) -> list[str]:
        return self.smtp.addresses if self.smtp is not None else []

    # -- inbound ---------------------------------------------------------------------------
    async def run_shielded(self, jobs: list[tuple[Match, dict[str, Any]]], event: dict[str, Any]) -> list[str]:
        """Run every (match, scope) for one message; the SMTP replies, one per job.

        The work runs in a task of its own, so a client that hangs up does not cancel it."""
        work = self._one(*jobs[0], event) if len(jobs) == 1 else _gather(*(self.run_inbound(m, s, event) for m, s in jobs))
        task = asyncio.get_running_loop().create_task(work)
        self._inbound.add(task)
        task.add_done_callback(self._inbound.discard)
        return await asyncio.shield(task)

    async def _one(self, match: Match, scope: dict[str, Any], event: dict[str, Any]) -> list[str]:
        return [await self.run_inbound(match, scope, event)]

    async def run_inbound(self, match: Match, scope: dict[str, Any], event: dict[str, Any]) -> str:
        """Run one instance; its SMTP reply: 250, 451 4.3.0, or the app's ``email.reject``."""
        rejected: list[Mapping[str, Any]] = []

        async def send(out: Message) -> None:
            kind = out["type"]
            if kind == "email.reject":
                rejected.append(out)
            elif kind == "email.send":
                await self.send_mail(out)

        result = await self.context.runner.run_message(match, scope, event, send, adapter="email")
        if not result.ok:
            why = "timed out" if result.outcome.value == "timeout" else "failed"
            return f"451 4.3.0 <{scope['rcpt_to']}>: temporary failure (the application {why}), try again later"
        if rejected:
            first = rejected[0]
            code = int(first.get("code", 550))
            return reply_text(code, first.get("reason"), "Message rejected")
        return f"250 2.1.5 <{scope['rcpt_to']}>: OK"

    # -- outbound --------------------------------------------------------------------------
    async def send_mail(self, event: Mapping[str, Any]) -> None:
        """Deliver an ``email.send``. A temporary failure that outlasts the retries raises
        ``DeliveryError`` (so the inbound message it answers is retried); a permanent refusal
        by the relay is logged with the relay's reply and does not raise."""
        if self.relay is None:
            raise RuntimeError("email.send needs 'adapters.email.relay' in the config")
        try:
            await self.relay.send(event)
        except DeliveryError as exc:
            if not exc.permanent:
                raise

    async def handle_outbound(self, channel: str, message: dict[str, Any]) -> None:
        problem = SEND_SPEC.problem(message)
        if problem:
            self.log.error("email.send.invalid", channel=channel, error=problem)
            return
        await self.send_mail(message)


async def _gather(*aws: Any) -> list[str]:
    return list(await asyncio.gather(*aws))
