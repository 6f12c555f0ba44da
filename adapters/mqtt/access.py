"""Broker mode: who may connect, and what a connection may publish and subscribe to.

Logins are checked against the ``users`` table, then the ``auth_app`` hook; topics against the
``acl`` table, then the ``acl_app`` hook. Hooks are the way in for a framework (Django's
``authenticate()`` and permissions) without this adapter knowing it: a hook may be a coroutine
function or a plain function, which then runs in a worker thread so that a blocking lookup (an
ORM query) never stalls the event loop.

What a connection is allowed is kept in the amqtt session's ``attributes`` (amqtt's documented
place for extension state) under ``gateway.*`` keys, reset at every CONNECT: the user object
``auth_app`` returned and the ``acl_app`` answers, cached per topic and action for the life of
the connection (a permission withdrawn meanwhile applies from the device's next connection).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.contexts import Action

from gateway.apps import import_string
from gateway.plugins import AdapterContext
from gateway.throttle import LoginThrottle

from .config import MqttConfig
from .topics import TopicMatcher

USER = "gateway.user"
_ACL_CACHE = "gateway.acl"
_ACL_CACHE_SIZE = 1024  # topics per connection; a device walking more topics is asked again

Hook = Callable[..., Awaitable[Any]]


def load_hook(target: str) -> Hook:
    """``module:callable`` as a coroutine function: sync callables run in a worker thread."""
    fn = import_string(target)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):  # noqa: B004
        return fn

    async def in_thread(*args: Any) -> Any:
        result = await asyncio.to_thread(fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    return in_thread


class Access:
    def __init__(self, config: MqttConfig, context: AdapterContext) -> None:
        self.config = config
        self.log = context.log
        self.auth_app = load_hook(config.auth_app) if config.auth_app else None
        self.acl_app = load_hook(config.acl_app) if config.acl_app else None
        self.allow_anonymous = config.allow_anonymous if config.allow_anonymous is not None else not (config.users or config.auth_app)
        self.throttle = LoginThrottle(config.login_throttle.max_failures, config.login_throttle.window)
        self._failures = context.metrics.counter(
            "gateway_auth_failures_total", "Refused logins, by adapter and reason (invalid credentials, throttled, hook_error).",
            ("adapter", "reason"),
        )

    # -- CONNECT ----------------------------------------------------------------------------
    async def authenticate(self, session: Any) -> bool:
        session.attributes.pop(USER, None)
        session.attributes.pop(_ACL_CACHE, None)
        address = session.remote_address or "unknown"
        username, password = session.username, session.password
        if self.throttle.blocked(address):
            self._refused(session, address, "throttled")
            return False
        reason = "invalid"
        users = self.config.users
        if username is None:
            ok = self.allow_anonymous
            reason = "anonymous"
        elif username in users:
            ok = password is not None and hmac.compare_digest(str(password).encode(), users[username].password.encode())
        elif self.auth_app is not None:
            try:
                result = await self.auth_app(session.client_id, username, password)
            except Exception as exc:
                self.log.error("mqtt.auth_app_failed", client=address, client_id=session.client_id, username=username,
                               error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                result, reason = None, "hook_error"
            ok = result is not None and result is not False
            if ok and result is not True:
                session.attributes[USER] = result
        else:
            ok = False
        if not ok:
            self.throttle.failed(address)
            self._refused(session, address, reason)
        return ok

    def _refused(self, session: Any, address: str, reason: str) -> None:
        self._failures.labels("mqtt", reason).inc()
        self.log.warning("mqtt.auth_failed", client=address, username=session.username, client_id=session.client_id, reason=reason)

    # -- topics -----------------------------------------------------------------------------
    def user(self, session: Any) -> Any:
        """The ``user`` of ``acl_app``: what ``auth_app`` returned, else the username (or ``None``)."""
        return session.attributes.get(USER, session.username)

    def cached(self, session: Any, topic: str, action: Action) -> bool | None:
        """The verdict when it is known without awaiting the hook (``None``: ask ``permitted``)."""
        if not self.table_allows(session, topic, action):
            return False
        if self.acl_app is None or action == Action.RECEIVE:
            return True
        cache = session.attributes.get(_ACL_CACHE)
        return None if cache is None else cache.get((topic, action))

    async def permitted(self, session: Any, topic: str, action: Action) -> bool:
        verdict = self.cached(session, topic, action)
        if verdict is not None:
            return verdict
        assert self.acl_app is not None
        name = "publish" if action == Action.PUBLISH else "subscribe"
        try:
            verdict = bool(await self.acl_app(self.user(session), topic, name))
        except Exception as exc:  # a broken hook denies, it never allows
            self.log.error("mqtt.acl_app_failed", client_id=session.client_id, topic=topic, action=name,
                           error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return False
        cache = session.attributes.setdefault(_ACL_CACHE, {})
        if len(cache) >= _ACL_CACHE_SIZE:
            cache.clear()
        cache[(topic, action)] = verdict
        return verdict

    def table_allows(self, session: Any, topic: str, action: Action) -> bool:
        acl = self.config.acl
        if acl is None:
            return True
        rule = acl.get(session.username) if session.username is not None else None
        if rule is None:
            rule = acl.get("*")
        if rule is None:
            return False
        filters = rule.publish if action == Action.PUBLISH else rule.subscribe
        client_id = session.client_id or ""
        username = session.username or ""
        for pattern in filters:
            allowed = pattern.replace("%u", username).replace("%c", client_id)
            if action == Action.PUBLISH:
                if TopicMatcher(allowed).match_topic(topic) is not None:
                    return True
            elif filter_covers(allowed, topic):
                return True
        return False


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether subscribing to ``requested`` stays inside what the filter ``allowed`` permits."""
    a_levels = allowed.split("/")
    r_levels = requested.split("/")
    if requested.startswith("$") and a_levels[0] in ("+", "#"):
        return False
    for i, a in enumerate(a_levels):
        if a == "#":
            return True
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if r == "#":
            return False
        if a == "+":
            continue
        if a != r:
            return False
    return len(r_levels) == len(a_levels)
