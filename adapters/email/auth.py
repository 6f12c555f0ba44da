"""SMTP AUTH: who may log in, what the session's user is, and how failed logins are throttled.

Accounts come from ``auth_users`` or from ``auth_hook``, a ``module:callable`` the adapter knows
nothing about beyond its signature: ``(username: str, password: str)``, plain or ``async``. A
plain one runs in a worker thread, so it may block (a Django ORM lookup, an LDAP bind) without
holding up the event loop. ``None`` or ``False`` refuses the login; anything else accepts it, and
what it returned (unless it is just ``True``) is the session's user: ``scope["user"]`` of the mail
sent in that session.

Failed logins are logged one line each (client address, username, never the password), counted,
and throttled per client address: after ``max_failures`` within ``window`` seconds, AUTH from that
address is refused with ``454 4.7.0`` without asking anyone, until the window has passed.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction

from gateway.apps import import_string
from gateway.throttle import LoginThrottle

if TYPE_CHECKING:
    from .config import SmtpConfig

THROTTLED = "454 4.7.0 Too many failed logins from your address, try again later"


@dataclass(frozen=True)
class Login:
    """A successful AUTH: the name the client gave, and the user the session acts as."""

    username: str
    user: Any


class SmtpAuth:
    """Decides SMTP logins for one listener."""

    def __init__(self, config: SmtpConfig, log: Any, metrics: Any) -> None:
        self.users = {u.username: u.password for u in config.auth_users}
        self.hook = import_string(config.auth_hook) if config.auth_hook else None
        self.throttle = LoginThrottle(config.login_throttle.max_failures, config.login_throttle.window)
        self.log = log
        self._failures = metrics.counter(
            "gateway_auth_failures_total",
            "Refused logins, by adapter and reason (invalid credentials, throttled, hook_error).",
            ("adapter", "reason"),
        )

    def throttled(self, client: str) -> bool:
        """True (and counted) when ``client`` may not try to log in now."""
        if self.throttle.blocked(client):
            self._failures.labels("email", "throttled").inc()
            return True
        return False

    async def check(self, client: str, username: str, password: str, mechanism: str) -> Login | None:
        """The login, or ``None`` (logged, counted, and throttled per client address)."""
        if username in self.users:
            known = self.users[username].encode()
            user = username if hmac.compare_digest(known, password.encode()) else None
            reason = "invalid"
        elif self.hook is not None:
            try:
                user = await self._ask_hook(username, password)
                reason = "invalid"
            except Exception as exc:  # a failing hook refuses the login
                self.log.error("smtp.auth_hook_failed", client=client, username=username,
                               error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                user, reason = None, "hook_error"
        else:
            user, reason = None, "invalid"
        if user is None:
            self._failed(client, username, mechanism, reason)
            return None
        return Login(username, user)

    async def _ask_hook(self, username: str, password: str) -> Any:
        """The hook's user (``username`` for a bare ``True``), or ``None``."""
        assert self.hook is not None
        if iscoroutinefunction(self.hook):
            result = await self.hook(username, password)
        else:
            result = await asyncio.to_thread(self.hook, username, password)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
        if result is None or result is False:
            return None
        return username if result is True else result

    def _failed(self, client: str, username: str, mechanism: str, reason: str) -> None:
        self._failures.labels("email", reason).inc()
        self.log.warning("smtp.auth_failed", client=client, username=username, mechanism=mechanism, reason=reason)
        if self.throttle.failed(client):
            self.log.warning("smtp.auth_throttled", client=client, failures=self.throttle.max_failures,
                             window_seconds=self.throttle.window, note="AUTH from this address gets 454 until the window passes")
