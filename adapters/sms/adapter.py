"""``SmsAdapter``: provider webhooks in (mounted on the http adapter), routed texts and delivery
reports to applications, ``sms.send`` out through the provider's REST API."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.errors import StartupError
from gateway.plugins import Adapter, AdapterContext
from gateway.routing import Match
from gateway.runner import Outcome

from .bridge import SmsBridgeTarget
from .config import SmsConfig
from .events import SEND_EVENTS, SEND_SPEC
from .matching import SmsRoute
from .numbers import InvalidNumber, to_e164
from .providers import Inbound, OutboundSms, StatusReport, provider_class
from .sender import Account, OptedOut, Sender, SmsSendError
from .store import MemoryStore, RedisStore, make_store
from .webhook import Answer, Webhook

ASGI = {"version": "3.0", "spec_version": "1.0"}
BUSY_RETRY_AFTER = b"1"
# "Stop." and "JOIN!" are the keywords STOP and JOIN
KEYWORD_PUNCTUATION = ".,;:!?\"'()[]"


class SmsAdapter(Adapter):
    """The ``sms`` adapter (see docs/sms.md and docs/specs/sms.md)."""

    name: ClassVar[str] = "sms"
    config_model = SmsConfig
    scope_types = ("sms",)
    route_models: ClassVar[dict[str, type[SmsRoute]]] = {"sms": SmsRoute}
    send_events = SEND_EVENTS
    outbound_channels = ("sms.send",)
    bridge_target = SmsBridgeTarget

    config: SmsConfig

    def __init__(self, config: SmsConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        self.log = context.log
        self.accounts = {a.label: Account(a, provider_class(a.provider)(a)) for a in config.accounts}
        self.sender = Sender(self)
        self.store: MemoryStore | RedisStore = MemoryStore()
        self._running: dict[int, int] = {}  # id(route) -> instances running, for max_concurrency
        self._slots = asyncio.Semaphore(config.outbound_concurrency)
        self._sending: set[asyncio.Task[None]] = set()  # sends taken from the layer channel
        self._busy = 0  # webhook instances running now
        self._idle: asyncio.Event | None = None  # set when the last one ends, while stop() waits
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._in_flight: set[str] = set()  # "<account>:<message id>" being handled in this process
        self._webhooks = context.metrics.counter(
            "gateway_sms_webhooks_total",
            "SMS webhooks by account, kind (message, status) and outcome (handled, duplicate, in_flight, opt_out, failed, "
            "timeout, busy, no_route, forbidden, malformed, too_large, disconnected, method, error).",
            ("account", "kind", "outcome"),
        )

    @classmethod
    def mount_paths(cls, config: Any) -> list[tuple[str, tuple[str, ...]]]:
        return [(account.webhook, ("http",)) for account in config.accounts]

    @property
    def addresses(self) -> list[str]:
        """Its webhooks, on the http adapter's listener (as the mqtt adapter lists ``mount:/mqtt``)."""
        return [f"mount:{account.config.webhook}" for account in self.accounts.values()]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.store = make_store(self.context.layer)
        await self.sender.start()
        for account in self.accounts.values():
            try:
                self.context.mounts.add(account.config.webhook, Webhook(self, account), f"sms:{account.label}", required=True)
            except ValueError as exc:
                raise StartupError(f"adapters.sms: account {account.label!r}: {exc}") from None
        self.context.health.set("sms", "ok", ", ".join(f"{a.label}: {a.config.webhook}" for a in self.accounts.values()))

    async def stop(self, drain: float) -> None:
        # running instances may still send texts: the REST client stays open while they finish
        # (the http adapter drains their webhooks, the runner cancels what outlives the drain)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        if self._busy and drain > 0:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), drain)
            except TimeoutError:
                pass
        if self._sending:  # sends taken from the channel: finish them within the drain, else give up
            _, pending = await asyncio.wait(set(self._sending), timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()  # each logs and counts itself as abandoned
            await asyncio.gather(*pending, return_exceptions=True)
        await self.sender.close()
        await self.store.close()

    def count(self, account: Account, kind: str, outcome: str) -> None:
        key = (account.label, kind, outcome)
        child = self._counted.get(key)
        if child is None:  # a label lookup per webhook costs more than the increment: once per series
            child = self._counted[key] = self._webhooks.labels(*key)
        child.inc()

    # -- inbound messages ------------------------------------------------------------------
    async def on_message(self, account: Account, msg: Inbound, client: Any, url: str) -> Answer:
        key = f"{account.label}:{msg.message_id}"
        window = self.config.dedup_window
        if window and await self.store.seen(key):
            self.count(account, "message", "duplicate")
            self.log.info("sms.webhook.duplicate", account=account.label, message_id=msg.message_id)
            return self._ok(account, [])
        if key in self._in_flight:  # a retry while the first delivery still runs here: not yet handled
            self.count(account, "message", "in_flight")
            self.log.info("sms.webhook.in_flight", account=account.label, message_id=msg.message_id)
            return Answer(503, b"this message is being handled; retry later\n", headers=((b"retry-after", BUSY_RETRY_AFTER),))
        self._in_flight.add(key)
        try:
            return await self._message(account, msg, key, client, url)
        finally:
            self._in_flight.discard(key)

    async def _message(self, account: Account, msg: Inbound, key: str, client: Any, url: str) -> Answer:
        provider = account.provider
        window = self.config.dedup_window
        words = msg.body.split(maxsplit=1)
        keyword = (words[0].strip(KEYWORD_PUNCTUATION).upper() or None) if words else None
        replies: list[OutboundSms] = []
        opt = self.config.opt_out
        if opt.enabled and keyword is not None:
            reply, route_it = await self._opt_out(account, msg, keyword)
            if reply is not None:
                await self._reply(account, msg, reply, replies)
            if not route_it:
                if window:
                    await self.store.remember(key, window)
                self.count(account, "message", "opt_out")
                return self._ok(account, replies)
        scope = self._scope(account, "message", msg.sender, msg.recipient, msg.message_id, client, url)
        scope["keyword"] = keyword
        scope["body"] = msg.body
        match = self.context.resolve(scope)
        if match is None:
            self.count(account, "message", "no_route")
            self.log.warning("sms.webhook.no_route", account=account.label, to=msg.recipient, message_id=msg.message_id)
            return Answer(404, b"no sms route takes this message\n")
        event = {
            "type": "sms.message", "from": msg.sender, "to": msg.recipient, "body": msg.body, "provider": provider.name,
            "message_id": msg.message_id, "media": msg.media, "segments": msg.segments, "encoding": msg.encoding, "raw": msg.raw,
        }

        async def send(out: dict[str, Any]) -> None:
            target = self._account_for(out, account)
            sms = self.sender.prepare(target, out, default_from=msg.recipient if target is account else None)
            if provider.inline_replies and target is account and sms.to == msg.sender and sms.sender == msg.recipient:
                if await self.store.opted_out(sms.to):
                    raise self.sender.opted_out(account, sms.to)
                replies.append(sms)
                return
            await self.sender.send(target, sms)

        answer = await self._run(account, "message", match, scope, event, send)
        if answer is not None:
            return answer
        if window:
            await self.store.remember(key, window)
        return self._ok(account, replies)

    async def _opt_out(self, account: Account, msg: Inbound, keyword: str) -> tuple[str | None, bool]:
        """Apply a stop/start/help word: ``(answer text or None, route the message too)``."""
        opt = self.config.opt_out
        if keyword in opt.stop:
            await self.store.set_opt_out(msg.sender, True)
            self.log.info("sms.opt_out", account=account.label, number=msg.sender, keyword=keyword)
            return opt.stop_reply, opt.pass_to_app
        if keyword in opt.start:
            await self.store.set_opt_out(msg.sender, False)
            self.log.info("sms.opt_in", account=account.label, number=msg.sender, keyword=keyword)
            return opt.start_reply, opt.pass_to_app
        if keyword in opt.help and opt.help_reply is not None:
            return opt.help_reply, False
        return None, True

    async def _reply(self, account: Account, msg: Inbound, text: str, replies: list[OutboundSms]) -> None:
        """The adapter's own answer (opt-out confirmations): inline where possible, else REST;
        a confirmation that cannot be sent is logged, the opt-out stands."""
        try:
            sms = self.sender.prepare(account, {"to": msg.sender, "body": text}, default_from=msg.recipient)
            if account.provider.inline_replies:
                replies.append(sms)
            else:
                await self.sender.send(account, sms, force=True)
        except SmsSendError as exc:
            self.log.error("sms.opt_out.reply_failed", account=account.label, to=msg.sender, error=str(exc))

    def _ok(self, account: Account, replies: list[OutboundSms]) -> Answer:
        content_type, body = account.provider.answer(replies)
        return Answer(200, body, content_type)

    # -- delivery reports ------------------------------------------------------------------
    async def on_status(self, account: Account, report: StatusReport, client: Any, url: str | None) -> Answer:
        window = self.config.dedup_window
        # a provider's retry of a report already handled; the gateway's own reports have no id
        key = f"{account.label}:status:{report.message_id}:{report.provider_status}" if report.message_id and window else None
        if key is not None and await self.store.seen(key):
            self.count(account, "status", "duplicate")
            return self._ok(account, [])
        sender, recipient = self._number(report.sender), self._number(report.recipient)
        scope = self._scope(account, "status", sender, recipient, report.message_id, client, url)
        scope["keyword"] = None
        match = self.context.resolve(scope)
        if match is None:
            self.count(account, "status", "no_route")
            self.log.info("sms.status.unrouted", account=account.label, message_id=report.message_id, status=report.status)
            return self._ok(account, [])
        event = {
            "type": "sms.status", "message_id": report.message_id, "status": report.status,
            "provider_status": report.provider_status, "from": sender, "to": recipient, "error_code": report.error_code,
            "error": report.error, "provider": account.provider.name, "raw": report.raw,
        }

        async def send(out: dict[str, Any]) -> None:
            target = self._account_for(out, account)
            await self.sender.send(target, self.sender.prepare(target, out, default_from=None))

        answer = await self._run(account, "status", match, scope, event, send)
        if answer is not None:
            return answer
        if key is not None:
            await self.store.remember(key, window)
        return self._ok(account, [])

    def _number(self, number: str | None) -> str | None:
        """E.164 when it is a number; as given otherwise (an alphanumeric sender id)."""
        if not number:
            return number
        try:
            return to_e164(number, self.config.default_region)
        except InvalidNumber:
            return number

    # -- running instances -----------------------------------------------------------------
    def _scope(self, account: Account, kind: str, sender: str | None, recipient: str | None, message_id: str | None,
               client: Any, url: str | None) -> dict[str, Any]:
        return {
            "type": "sms", "asgi": ASGI, "kind": kind, "provider": account.provider.name, "account": account.label,
            "from": sender, "to": recipient, "message_id": message_id, "client": client, "webhook_url": url,
        }

    async def _run(self, account: Account, kind: str, match: Match, scope: dict[str, Any], event: dict[str, Any],
                   send: Any) -> Answer | None:
        """Run one instance; ``None`` when it returned normally, else the answer that makes the
        provider retry."""
        route = match.route
        limit = getattr(route.config, "max_concurrency", None)
        running = self._running.get(id(route), 0)
        if limit is not None and running >= limit:
            self.count(account, kind, "busy")
            self.log.warning("sms.webhook.busy", account=account.label, route=route.name or route.target, limit=limit)
            busy = b"busy: too many messages for this route at once, retry later\n"
            return Answer(503, busy, headers=((b"retry-after", BUSY_RETRY_AFTER),))
        self._running[id(route)] = running + 1
        self._busy += 1
        try:
            # Inline in the webhook's connection task: the http adapter never cancels it when the
            # caller hangs up (the instance runs to its end), and a shutdown cancels it through the
            # runner like any HTTP request. A separate task would cost two more loop turns each.
            result = await self.context.runner.run_message(match, scope, event, send, adapter="sms")
        finally:
            self._running[id(route)] -= 1
            self._busy -= 1
            if not self._busy and self._idle is not None:
                self._idle.set()
        if result.ok:
            self.count(account, kind, "handled")
            return None
        if result.outcome is Outcome.TIMEOUT:
            self.count(account, kind, "timeout")
            return Answer(503, b"the application timed out; retry later\n", headers=((b"retry-after", BUSY_RETRY_AFTER),))
        self.count(account, kind, "failed")
        return Answer(500, b"the application failed; retry later\n")

    # -- outbound --------------------------------------------------------------------------
    def _account_for(self, event: Mapping[str, Any], default: Account | None) -> Account:
        name = event.get("account")
        if name is None:
            return default or next(iter(self.accounts.values()))
        found = self.accounts.get(name)
        if found is None:
            raise SmsSendError(f"unknown account {name!r} (configured: {', '.join(self.accounts)})")
        return found

    async def handle_outbound(self, channel: str, message: dict[str, Any]) -> None:
        """An ``sms.send`` from the channel layer, sent in a task of its own so one slow or
        retried send does not hold up the others; at most ``outbound_concurrency`` at once (the
        relay waits for a free slot, and the channel's capacity pushes back on producers)."""
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:  # shutdown while it waited for a slot: taken, never sent
            self._abandoned(message)
            raise
        task = asyncio.get_running_loop().create_task(self._send_from_layer(message))
        self._sending.add(task)
        task.add_done_callback(self._sent_one)

    def _sent_one(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._slots.release()
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # a bug (ours or a provider plugin's): failed sends are handled inside the task
            self.log.error("sms.send.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def _abandoned(self, message: dict[str, Any]) -> None:
        label = message.get("account")
        account = (self.accounts.get(label) if isinstance(label, str) else None) or next(iter(self.accounts.values()))
        self.sender.count(account, "abandoned")
        self.log.error("sms.send.abandoned", account=account.label, to=message.get("to"),
                       note="taken from the sms.send channel, cancelled at shutdown before it was sent")

    async def _send_from_layer(self, message: dict[str, Any]) -> None:
        """Send one; one that fails for good is logged, counted and reported as a
        ``status: failed`` instance."""
        problem = SEND_SPEC.problem(message)
        account = next(iter(self.accounts.values()))
        try:
            if problem:
                raise self.sender.refused(account, f"invalid sms.send event: {problem}")
            account = self._account_for(message, None)
            await self.sender.send(account, self.sender.prepare(account, message, default_from=None))
        except asyncio.CancelledError:
            self._abandoned(message)
            raise
        except SmsSendError as exc:
            report = StatusReport(
                message_id=None, status="failed", provider_status="opted_out" if isinstance(exc, OptedOut) else "not_sent",
                sender=message.get("from") or account.config.sender, recipient=message.get("to"),
                raw=dict(message), error=str(exc),
            )
            await self.on_status(account, report, None, None)
