"""``Harness``: the parts of a gateway that decide what an application's outcome means, without sockets.

A communicator must give a test the answer production would give, so the harness is built from
the production parts, not stand-ins for them: the config loader (``gateway.config``) and its
routers, the instance runner with its timeouts and exception isolation, and the event table
with every adapter's ``send_events``. The protocol answers (SMTP reply, webhook status, MQTT
acknowledgement) come from the built-in adapters' own code, constructed but never started: only
their outbound delivery (SMTP relay, provider REST API, broker publish) is replaced by a record.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from gateway import config as config_mod
from gateway.bridges.runtime import Runtime, Stats
from gateway.events import core_table
from gateway.health import Health
from gateway.layers.base import BaseChannelLayer
from gateway.metrics import Metrics
from gateway.mounts import Mounts
from gateway.plugins import Adapter, AdapterContext
from gateway.routing import Match, MatchAll, Route, Router, unmatched
from gateway.runner import Result, Runner, RunnerSettings
from gateway.types import ASGIApp, Message, Scope, Send

# What an application given alone (no YAML) is served with: every adapter, settings that bind
# nothing (the harness never starts them), one SMS account of the provider-neutral kind.
_APP_ONLY_ADAPTERS: dict[str, Any] = {
    "http": {"listen": ["127.0.0.1:0"]},
    "mqtt": {"mode": "broker", "listen": ["127.0.0.1:0"]},
    "email": {"smtp": {"listen": ["127.0.0.1:0"]}},
    "sms": {"provider": "generic", "webhook": "/sms", "numbers": ["+15550100000"], "signing_secret": "gateway-testing"},
}
PROTOCOLS = ("http", "websocket", "mqtt", "email", "sms")


class _RecordingRunner(Runner):
    """The production runner; it also keeps the result of every message scope it ran, so a
    communicator can show the app's exception next to the protocol answer made from it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[Result] = []

    async def run_message(self, match: Match, scope: Scope, message: Message, send: Send, *, adapter: str) -> Result:
        result = await super().run_message(match, scope, message, send, adapter=adapter)
        self.results.append(result)
        return result


class Harness:
    """One configuration's routing, runner and adapters, for communicators to run apps through.

    Build it from a YAML file (``Harness.from_file``), YAML text (``from_text``), a loaded
    ``Plan``, or a single ASGI application that takes every protocol (``for_app``).
    """

    def __init__(self, plan: config_mod.Plan) -> None:
        self.plan = plan
        cfg = plan.config
        self.metrics = Metrics()
        self.events = core_table()
        for ap in plan.adapters:
            for scope_type, table in ap.cls.send_events.items():
                self.events.register(scope_type, table)
        self.runner = _RecordingRunner(self.events, self.metrics, RunnerSettings(
            queue_size=cfg.instances.queue_size,
            app_close_timeout=cfg.instances.app_close_timeout,
            message_timeout=cfg.instances.message_timeout,
        ))
        self.router = plan.router
        self._layer: BaseChannelLayer | None = None
        self._adapters: dict[str, Adapter] = {}
        if any(bridge.route is not None for bridge in plan.bridges):
            # a bridge from a protocol is a route: a communicator's message runs it into this layer
            runtime = Runtime(self.layer, Stats(self.metrics))
            for bridge in plan.bridges:
                bridge.runtime = runtime

    @classmethod
    def from_file(cls, path: str | Path) -> Harness:
        return cls(config_mod.load(path))

    @classmethod
    def from_text(cls, text: str, base_dir: str | Path | None = None) -> Harness:
        return cls(config_mod.loads(text, base_dir=Path(base_dir) if base_dir else None))

    @classmethod
    def for_app(cls, app: ASGIApp, **adapters: Mapping[str, Any]) -> Harness:
        """Every protocol routed to ``app``; ``adapters`` replaces a default adapter block,
        e.g. ``sms={"provider": "twilio", ...}``."""
        blocks = {**_APP_ONLY_ADAPTERS, **adapters}
        plan = config_mod.build(config_mod.Source({"adapters": blocks}), Path.cwd())
        route = Route(MatchAll(), app, name="app")
        plan.routers = {kind: Router([route]) for kind in PROTOCOLS}
        return cls(plan)

    # -- what communicators use ------------------------------------------------------------
    def resolve(self, scope: Scope) -> Match | None:
        return self.router.resolve(scope)

    def resolve_or_refuse(self, scope: Scope) -> Match:
        """The route for an HTTP or WebSocket scope, or the 404 / refused handshake that the
        http adapter gives a request no route takes."""
        found = self.resolve(scope)
        return found if found is not None else Match(Route(MatchAll(), unmatched, name=None), (), {})

    @property
    def layer(self) -> BaseChannelLayer:
        """The configured channel layer (made on first use; adapters keep their SMS opt-outs
        and duplicates in memory regardless, as they do until started)."""
        if self._layer is None:
            self._layer = self.plan.layer_class(**self.plan.layer_options)
        return self._layer

    def adapter_config(self, name: str) -> Any:
        for ap in self.plan.adapters:
            if ap.name == name:
                return ap.config
        raise LookupError(f"this configuration has no 'adapters: {{{name}: ...}}' block; the {name} communicator needs one")

    def context(self, name: str) -> AdapterContext:
        return AdapterContext(
            name=name, router=self.router, runner=self.runner, layer=self.layer, metrics=self.metrics,
            mounts=Mounts(), health=Health(), log=structlog.get_logger(f"gateway.testing.{name}").bind(adapter=name),
        )

    def adapter(self, name: str, factory: Any) -> Any:
        """One adapter object per harness, made by ``factory(config, context)`` on first use and
        shared by every communicator (SMS opt-outs and duplicates persist across texts, as in
        one running gateway)."""
        found = self._adapters.get(name)
        if found is None:
            found = self._adapters[name] = factory(self.adapter_config(name), self.context(name))
        return found

    def take_result(self) -> Result | None:
        """How the message scopes run since the last call ended: the first that did not end
        normally (the one a sender's retry is about), else the last (``None``: no app ran)."""
        results = self.runner.results
        failed = [r for r in results if not r.ok]
        result = failed[0] if failed else results[-1] if results else None
        results.clear()
        return result


def harness_for(application: Any) -> Harness:
    """The harness a communicator runs on: the one given, or a new one serving ``application``."""
    if isinstance(application, Harness):
        return application
    if isinstance(application, config_mod.Plan):
        return Harness(application)
    return Harness.for_app(application)
