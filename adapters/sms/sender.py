"""Outbound texts: checks (number, length, opt-outs), the per-sender rate limit, and the REST call
with retries.

A 429, a 5xx, a timeout or a network error is retried up to ``retries`` times, waiting
``backoff * 2**n`` seconds with jitter, or what ``Retry-After`` says (both capped at
``max_backoff``). Every attempt carries the same idempotency key, so a retry after a timeout does not
send twice where the provider honours the key. Any other refusal is final at once.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from .numbers import InvalidNumber, segments, to_e164
from .providers import OutboundSms, Provider, SendFailed

if TYPE_CHECKING:
    from .adapter import SmsAdapter
    from .config import AccountConfig


class SmsSendError(Exception):
    """An ``sms.send`` that was not sent: refused before sending, or failed for good."""


class OptedOut(SmsSendError):
    """The recipient texted a stop word; nothing is sent to it until it texts a start word."""


@dataclass
class Account:
    """One configured account at run time: its config, its provider object and its webhook URL."""

    config: AccountConfig
    provider: Provider

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def status_url(self) -> str | None:
        """Where the provider reports delivery: our webhook, when its public URL is known."""
        base = self.config.public_url
        return f"{base}{self.config.webhook}" if base else None


class Sender:
    def __init__(self, adapter: SmsAdapter) -> None:
        self.adapter = adapter
        self.log = adapter.context.log
        self.session: aiohttp.ClientSession | None = None
        self._slots: dict[tuple[str, str], float] = {}
        metrics = adapter.context.metrics
        self._sent = metrics.counter(
            "gateway_sms_sent_total", "Outbound texts by account and outcome (sent, failed, refused, abandoned).", ("account", "outcome")
        )
        self._retries = metrics.counter("gateway_sms_send_retries_total", "REST attempts that were retried, by account.", ("account",))

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def prepare(self, account: Account, event: Mapping[str, Any], default_from: str | None) -> OutboundSms:
        """The checked ``OutboundSms`` for an ``sms.send`` event; ``SmsSendError`` says why not."""
        region = self.adapter.config.default_region
        try:
            to = to_e164(event["to"], region)
        except InvalidNumber as exc:
            raise self.refused(account, f"invalid recipient: {exc}") from None
        sender = event.get("from") or default_from or account.config.sender
        if not sender:
            raise self.refused(account, f"no sender: give 'from', or 'numbers'/'default_from' on account {account.label!r}")
        if sender.lstrip("+").isdigit():
            try:
                sender = to_e164(sender, region)
            except InvalidNumber as exc:
                raise self.refused(account, f"invalid sender: {exc}") from None
        body = event.get("body") or ""
        parts, kind = segments(body)
        limit = self.adapter.config.max_segments
        if parts > limit:
            raise self.refused(account, f"the text is {parts} {kind} segments long; the limit is {limit} (max_segments)")
        return OutboundSms(
            to=to, sender=sender, body=body, media=list(event.get("media") or []), encoding=kind,
            idempotency_key=event.get("idempotency_key") or secrets.token_hex(16), status_url=account.status_url,
        )

    def count(self, account: Account, outcome: str) -> None:
        self._sent.labels(account.label, outcome).inc()

    def opted_out(self, account: Account, number: str) -> OptedOut:
        self._sent.labels(account.label, "refused").inc()
        self.log.warning("sms.send.opted_out", account=account.label, to=number)
        return OptedOut(f"{number} has opted out (texted a stop word): not sent")

    def refused(self, account: Account, why: str) -> SmsSendError:
        self._sent.labels(account.label, "refused").inc()
        self.log.warning("sms.send.refused", account=account.label, error=why)
        return SmsSendError(why)

    async def send(self, account: Account, sms: OutboundSms, *, force: bool = False) -> str:
        """Send through the provider's REST API; the provider's message id. ``force`` skips the
        opt-out check (for the confirmation of a stop word itself)."""
        if not force and await self.adapter.store.opted_out(sms.to):
            raise self.opted_out(account, sms.to)
        await self._turn(account, sms.sender)
        cfg = account.config
        attempt = 0
        while True:
            try:
                message_id = await self._attempt(account, sms)
            except SendFailed as exc:
                failure = exc
            else:
                self._sent.labels(account.label, "sent").inc()
                self.log.info("sms.sent", account=account.label, to=sms.to, message_id=message_id, attempts=attempt + 1)
                return message_id
            if failure.permanent or attempt >= cfg.retries:
                self._sent.labels(account.label, "failed").inc()
                why = "refused" if failure.permanent else f"failed after {attempt + 1} attempts"
                self.log.error("sms.send.failed", account=account.label, to=sms.to, error=str(failure), attempts=attempt + 1)
                raise SmsSendError(f"{account.provider.name} {why}: {failure}")
            wait = failure.retry_after if failure.retry_after is not None else cfg.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
            wait = min(wait, cfg.max_backoff)
            self._retries.labels(account.label).inc()
            self.log.warning("sms.send.retry", account=account.label, to=sms.to, error=str(failure), wait=round(wait, 3))
            await asyncio.sleep(wait)
            attempt += 1

    async def _attempt(self, account: Account, sms: OutboundSms) -> str:
        if self.session is None:
            raise SendFailed("the sms adapter is stopped", permanent=True)
        request = account.provider.send_request(sms)
        try:
            async with self.session.request(
                request.method, request.url, headers=request.headers, data=request.body,
                timeout=aiohttp.ClientTimeout(total=account.config.timeout),
            ) as response:
                body = await response.read()
                headers = {k.lower(): v for k, v in response.headers.items()}
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}".rstrip(": "), permanent=False) from None
        return account.provider.sent(status, headers, body)

    async def _turn(self, account: Account, sender: str) -> None:
        """Wait for the sender's next slot under ``rate_limit``."""
        rate = account.config.rate_limit
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        key = (account.label, sender)
        slot = max(now, self._slots.get(key, 0.0))
        self._slots[key] = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)
