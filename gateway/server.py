"""``Gateway``: starting, running and stopping everything a plan describes.

Start-up is all or nothing: lifespan first, then every adapter; if one fails, the ones already
started are stopped again and the error is raised. Shutdown stops accepting (adapters drain
their own in-flight work), cancels whatever outlives the drain timeout, then runs lifespan
shutdown. A second SIGTERM/SIGINT skips the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from . import config as config_mod
from . import fdlimit, preflight, threads
from .admin import AdminListener
from .bridges.runtime import Runtime, Stats
from .bridges.service import BridgeService
from .django.layers import ChannelsBinding
from .errors import StartupError
from .events import core_table
from .health import Health
from .layers import set_channel_layer
from .layers.base import BaseChannelLayer, LayerUnavailable
from .lifespan import Lifespan
from .metrics import Metrics
from .mounts import Mounts
from .outbound import OutboundRelay
from .plugins import Adapter, AdapterContext
from .reload import Reloader
from .runner import Runner, RunnerSettings
from .types import ASGIApp

log = structlog.get_logger("gateway")

LAYER_PROBE_INTERVAL = 5.0
"""Seconds between two checks that the layer's service answers (docs/deploy.md, health)."""


class Gateway:
    """One gateway: adapters, router, runner and channel layer, started and stopped together.

    ``async with Gateway.from_file("gateway.yaml") as gw: ...`` runs it in-process; after start,
    ``gw.addresses`` tells what each adapter bound (port 0 resolved).
    """

    def __init__(
        self, plan: config_mod.Plan, *, config_path: str | Path | None = None,
        adjust: Callable[[config_mod.Plan], config_mod.Plan] | None = None,
    ) -> None:
        self.plan = plan
        self.reloader = Reloader(self, config_path, adjust) if config_path is not None else None
        """Set for a gateway built from a file: SIGHUP (or ``reload()``) re-reads it."""
        cfg = plan.config
        self.metrics = Metrics()
        self.health = Health()
        self.mounts = Mounts()
        self.events = core_table()
        for ap in plan.adapters:
            for scope_type, table in ap.cls.send_events.items():
                self.events.register(scope_type, table)
        self.runner = Runner(self.events, self.metrics, RunnerSettings(
            queue_size=cfg.instances.queue_size,
            app_close_timeout=cfg.instances.app_close_timeout,
            message_timeout=cfg.instances.message_timeout,
        ))
        self.router = plan.router
        threads.configure(cfg.instances.sync_threads)
        self.layer: BaseChannelLayer | None = None
        self._prober: asyncio.Task[None] | None = None
        self.adapters: dict[str, Adapter] = {}
        self.lifespan = Lifespan(
            [route for _, route in plan.routes()], mode=cfg.lifespan.mode,
            startup_timeout=cfg.lifespan.startup_timeout, shutdown_timeout=cfg.lifespan.shutdown_timeout,
        )
        self._outbound: dict[str, list[OutboundRelay]] = {}  # by adapter name
        self._reloads: set[asyncio.Task[bool]] = set()
        self._reload_pending = False
        self._channels = ChannelsBinding() if plan.django else None
        self._stop_requested: asyncio.Event | None = None
        self._force = False
        self.started = False
        self.admin: AdminListener | None = None
        """The internal listener of metrics and health (``admin:``), while started."""
        self.bridges: BridgeService | None = None
        """The plan's bridges (docs/bridges.md), while started."""

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> Gateway:
        return cls(config_mod.load(path), config_path=path)

    @classmethod
    def from_text(cls, text: str, base_dir: str | Path | None = None) -> Gateway:
        return cls(config_mod.loads(text, base_dir=Path(base_dir) if base_dir else None))

    @classmethod
    def from_app(
        cls, app: ASGIApp, *, listen: str | list[str] = "127.0.0.1:0", http: Mapping[str, Any] | None = None, **top: Any
    ) -> Gateway:
        """Serve one ASGI application for every HTTP and WebSocket path, the way ``uvicorn.run(app)`` does."""
        from .routing import MatchAll, Route, Router

        http_cfg = {"listen": listen if isinstance(listen, list) else [listen], **(http or {})}
        plan = config_mod.build(config_mod.Source({"adapters": {"http": http_cfg}, **top}), Path.cwd())
        route = Route(MatchAll(), app, name="app")
        plan.routers = {"http": Router([route]), "websocket": Router([route])}
        return cls(plan)

    # -- running -------------------------------------------------------------------------
    @property
    def addresses(self) -> dict[str, list[str]]:
        return {name: adapter.addresses for name, adapter in self.adapters.items()}

    async def start(self) -> None:
        if self.started:
            raise RuntimeError("this gateway is already started")
        self._stop_requested = asyncio.Event()
        self.layer = self.plan.layer_class(**self.plan.layer_options)
        self._watch_layer(self.layer)
        self._prober = asyncio.get_running_loop().create_task(self._probe_layer(self.layer))
        set_channel_layer(self.layer)
        if self._channels is not None:
            self._channels.bind(self.layer)
        fdlimit.ensure(sum(ap.cls.connection_limit(ap.config) for ap in self.plan.adapters))
        try:
            preflight.tcp_ports_free((ap.name, address) for ap in self.plan.adapters for address in ap.cls.listen_addresses(ap.config))
        except preflight.PortTaken as exc:
            log.error("gateway.start_failed", error=str(exc))
            await self._close_layer()
            raise StartupError(self._with_env_hint(exc.adapter, exc)) from None
        self.health.phase = "starting"
        try:
            await self._serve_operations()
            await self.lifespan.startup()
        except BaseException:
            await self._stop_admin()
            await self._close_layer()
            raise
        try:  # before the adapters: a bridge from a protocol is routed as soon as they serve
            await self._start_bridges()
        except BaseException as exc:
            log.error("gateway.start_failed", error=f"bridges: {type(exc).__name__}: {exc}")
            await self.lifespan.shutdown()
            await self._stop_admin()
            await self._close_layer()
            raise
        try:
            for ap in self.plan.adapters:
                await self.start_adapter(ap)
            unserved = self.mounts.unserved()
            if unserved:
                wanted = ", ".join(f"{m.owner} at {m.prefix!r}" for m in unserved)
                raise StartupError(f"{wanted} needs an HTTP listener: configure adapters.http (the mount shares its port)")
        except BaseException as exc:
            log.error("gateway.start_failed", error=str(exc))
            await asyncio.gather(*(a.stop(0) for a in self.adapters.values()), return_exceptions=True)
            self.adapters.clear()
            await self._stop_bridges()
            await self.lifespan.shutdown()
            await self._stop_admin()
            await self._close_layer()
            if isinstance(exc, OSError):
                raise StartupError(str(exc)) from exc
            raise
        for adapter in self.adapters.values():
            self.relay_outbound(adapter)
        self.started = True
        self.health.phase = "serving"
        log.info("gateway.started", addresses=self.addresses, layer=str(self.layer))

    async def _start_bridges(self) -> None:
        assert self.layer is not None
        self.bridges = BridgeService(Runtime(self.layer, Stats(self.metrics)))
        await self.bridges.start(self.plan.bridges)

    async def _stop_bridges(self) -> None:
        if self.bridges is not None:
            await self.bridges.stop()
            self.bridges = None

    async def start_adapter(self, ap: config_mod.AdapterPlan) -> Adapter:
        context = AdapterContext(
            name=ap.name, router=self.router, runner=self.runner, layer=self.layer,  # type: ignore[arg-type]
            metrics=self.metrics, mounts=self.mounts, health=self.health,
            log=structlog.get_logger(f"gateway.adapters.{ap.name}").bind(adapter=ap.name),
        )
        adapter = ap.cls(ap.config, context)
        self.adapters[ap.name] = adapter
        try:
            await adapter.start()
        except (OSError, StartupError) as exc:
            raise StartupError(self._with_env_hint(ap.name, exc)) from exc
        self.health.set(f"adapter.{ap.name}", "ok", ", ".join(adapter.addresses))
        log.info("adapter.started", adapter=ap.name, addresses=adapter.addresses)
        return adapter

    async def stop_adapter(self, name: str, drain: float) -> None:
        """Stop one adapter (on reload: its settings changed or it was removed) and its relays."""
        adapter = self.adapters.pop(name)
        await asyncio.gather(*(relay.stop(drain) for relay in self._outbound.pop(name, [])))
        await adapter.stop(drain)
        self.mounts.remove_owned_by(name)
        self.health.forget(f"adapter.{name}")
        self.health.forget(name)
        log.info("adapter.stopped", adapter=name)

    def relay_outbound(self, adapter: Adapter) -> None:
        assert self.layer is not None
        relays = self._outbound[adapter.name] = [
            OutboundRelay(self.layer, adapter, channel, self.metrics) for channel in adapter.outbound_channels
        ]
        for relay in relays:
            relay.start()

    def _with_env_hint(self, adapter: str, exc: BaseException) -> str:
        """A start failure of an adapter whose settings came from the environment names the
        variables, so a user of the default config knows what to change (GATEWAY_MQTT_LISTEN)."""
        names = self.plan.source.env_vars_under(("adapters", adapter))
        if not names:
            return str(exc)
        return f"{exc} (adapters.{adapter} is set from the environment: {', '.join(names)})"

    async def _serve_operations(self) -> None:
        """Metrics and health: on the admin listener when configured (started first, so probes
        see "starting"), else mounted on the http adapter's port."""
        cfg = self.plan.config
        endpoints = [(path, app, owner) for path, app, owner in (
            (cfg.metrics.path, self._metrics_endpoint, "metrics"), (cfg.metrics.health_path, self.health.asgi, "health"),
            (cfg.metrics.live_path, self.health.live, "health"), (cfg.metrics.ready_path, self.health.ready, "health"),
        ) if path]
        if cfg.admin is not None:
            self.admin = AdminListener(cfg.admin.listen, {path: app for path, app, _ in endpoints})
            try:
                await self.admin.start()
            except OSError as exc:
                self.admin = None
                raise StartupError(f"admin.listen {cfg.admin.listen}: {exc}") from exc
            return
        for path, app, owner in endpoints:
            self.mounts.add(path, app, owner)

    async def _stop_admin(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None

    def _watch_layer(self, layer: BaseChannelLayer) -> None:
        """Layer faults show on the health endpoint; refused and dropped messages in the metrics."""
        full = self.metrics.counter(
            "gateway_layer_channel_full_total", "Messages the channel layer refused because a channel was full.", ("group",)
        )
        layer.on_full = lambda channel, group: full.labels(group or "").inc()
        dropped = self.metrics.counter(
            "gateway_layer_dropped_total",
            "Messages the channel layer dropped, by reason: full, expired, restore_window (Redis lost its data and the "
            "memberships were not restored in time), dead_member (the member's process died).", ("reason",),
        )
        for reason in layer.drops:  # every reason on /metrics from the start, at 0
            dropped.labels(reason)
        layer.on_drop = lambda reason, count: dropped.labels(reason).inc(count)
        layer.on_health = lambda status, detail: self.health.set("layer", status, detail)  # type: ignore[arg-type]
        self.health.set("layer", *layer.health)  # type: ignore[arg-type]

    async def stop(self, drain: float | None = None) -> None:
        """Stop accepting, drain in-flight work up to ``drain`` seconds, then shut down."""
        if not self.started:
            return
        # a reload in progress finishes first (nothing half-swapped); one still waiting then sees the stop
        async with self.reloader.lock if self.reloader is not None else contextlib.nullcontext():
            self.started = False
        self.health.phase = "stopping"
        drain = self.plan.config.shutdown.drain_timeout if drain is None else drain
        if self._force:
            drain = 0
        log.info("gateway.stopping", drain_seconds=drain)
        await self._stop_bridges()  # first: what a bridge took reaches the outbound channels
        # then the relays: a message in hand finishes while its adapter still runs
        started = time.monotonic()
        await asyncio.gather(*(relay.stop(drain) for relays in self._outbound.values() for relay in relays))
        self._outbound.clear()
        drain = max(0.0, drain - (time.monotonic() - started))
        results = await asyncio.gather(*(a.stop(drain) for a in self.adapters.values()), return_exceptions=True)
        for name, result in zip(list(self.adapters), results, strict=True):
            if isinstance(result, BaseException):
                log.error("adapter.stop_failed", adapter=name, error=f"{type(result).__name__}: {result}", exc_info=result)
        cancelled = await self.runner.drain(0 if self._force else drain)
        if cancelled:
            log.warning("gateway.instances_cancelled", count=cancelled)
        self.adapters.clear()
        await self.lifespan.shutdown()
        await self._stop_admin()
        await self._close_layer()
        log.info("gateway.stopped")

    async def _probe_layer(self, layer: BaseChannelLayer) -> None:
        """Readiness names an unreachable layer before traffic meets it: a gateway whose Redis
        is not up yet (or gone while idle) answers 503 on /readyz instead of 200 and then a 500
        on the first WebSocket handshake."""
        while True:
            try:
                await layer.probe()
            except LayerUnavailable:
                pass  # the layer set its health and logged the fault once
            except Exception as exc:
                log.error("layer.probe_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            await asyncio.sleep(LAYER_PROBE_INTERVAL)

    async def _close_layer(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None
        if self.layer is not None:
            await self.layer.close()
            set_channel_layer(None)
            if self._channels is not None:
                self._channels.unbind()
            self.layer = None

    async def serve(self, *, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Start, run until one of ``signals`` (or ``request_stop()``), then stop gracefully."""
        loop = asyncio.get_running_loop()
        reload_signal = self.reloader is not None and bool(signals)
        if reload_signal:  # before start: a SIGHUP's default action would end the process
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # A stop signal during start (a slow lifespan startup, a listener already accepting) is
        # kept and acted on once started: its default action would drop what was accepted.
        # A second one gives up the start (a hung lifespan startup must not make Ctrl-C useless).
        stop_early = False
        starting = asyncio.ensure_future(self.start())

        def stop_while_starting() -> None:
            nonlocal stop_early
            if starting.done():  # uvloop may still call this handler after it was replaced
                self.request_stop()
                return
            if stop_early:
                log.warning("gateway.start_abandoned", reason="second stop signal while starting")
                starting.cancel()
                return
            stop_early = True
            log.info("gateway.stop_requested_while_starting", note="stopping as soon as the start completes")

        for sig in signals:
            loop.add_signal_handler(sig, stop_while_starting)
        try:
            await starting
        except BaseException as exc:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if reload_signal:
                loop.remove_signal_handler(signal.SIGHUP)
            if isinstance(exc, asyncio.CancelledError) and starting.cancelled() and stop_early:
                return  # abandoned on purpose; start() has closed what it had opened
            raise
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        if stop_early:
            self.request_stop()
        if self._reload_pending:
            self.request_reload()
        try:
            assert self._stop_requested is not None
            await self._stop_requested.wait()
            stopping = asyncio.ensure_future(self.stop())
            while not stopping.done():
                await asyncio.wait([stopping], timeout=0.1)
                if self._force and not stopping.done():
                    await self.runner.cancel_all()
            await stopping
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if reload_signal:
                loop.remove_signal_handler(signal.SIGHUP)

    def request_reload(self) -> None:
        """Re-read the config file in the background (SIGHUP); reloads queue one after another."""
        if self.reloader is None:
            return
        if not self.started:
            self._reload_pending = True  # asked while starting: reload once started
            return
        self._reload_pending = False
        task = asyncio.get_running_loop().create_task(self.reloader.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Apply the config file as it is now (see ``gateway.reload``); False if it was refused."""
        if self.reloader is None:
            raise RuntimeError("this gateway was not built from a file: there is nothing to reload")
        return await self.reloader.reload()

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: stop at once (skip the drain)."""
        if self._stop_requested is None:
            return
        if self._stop_requested.is_set():
            log.warning("gateway.stop_now", reason="second stop signal")
            self._force = True
        self._stop_requested.set()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _metrics_endpoint(self, scope: Any, receive: Any, send: Any) -> None:
        body = self.metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", self.metrics.content_type.encode()), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})


async def serve(target: str | Path | ASGIApp, **kwargs: Any) -> None:
    """Run a config file, or a single ASGI app, until a stop signal: ``asyncio.run(gateway.serve(app))``."""
    gw = Gateway.from_file(target) if isinstance(target, (str, Path)) else Gateway.from_app(target, **kwargs)
    await gw.serve()
