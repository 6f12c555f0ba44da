"""Reloading the config in a running gateway (SIGHUP, ``gateway reload``) without dropping anything.

The new file is loaded and validated in full first, in a worker thread (imports may be slow); if
it is invalid nothing changes and the error is logged. A valid one takes effect in this order:

1. the lifespan of applications that are new starts (an application named before is the same
   object, so its lifespan simply goes on);
2. every protocol's route list is replaced in one assignment: new requests, connections and
   messages resolve against the new routes, while open WebSockets and in-flight messages finish
   on the applications they started with;
3. adapters whose settings changed are stopped (draining) and started with the new settings,
   removed ones are stopped, added ones started; the others are not touched;
4. the lifespan of applications no route names any more is shut down, once none of their
   instances is still running (bounded by ``shutdown.drain_timeout``).

Reloads run one at a time: a second signal during a reload waits for it, then reloads again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from . import config as config_mod
from .errors import GatewayError
from .routing import Router

if TYPE_CHECKING:
    from .server import Gateway

log = structlog.get_logger("gateway.reload")


class Reloader:
    def __init__(self, gateway: Gateway, path: str | Path, adjust: Callable[[config_mod.Plan], config_mod.Plan] | None = None) -> None:
        self.gateway = gateway
        self.path = Path(path)
        self.adjust = adjust
        """What the process does to every plan it loads (``--workers``: SO_REUSEPORT), done on reload too."""
        self.lock = asyncio.Lock()
        self.count = 0

    async def reload(self) -> bool:
        """Apply the config file as it is now; False when it was refused (nothing changed)."""
        async with self.lock:
            if not self.gateway.started:
                return False  # stopping: a reload now would start what the stop is ending
            return await self._reload()

    async def _reload(self) -> bool:
        gw = self.gateway
        old = gw.plan
        log.info("gateway.reloading", config=str(self.path))
        try:
            new = await asyncio.to_thread(config_mod.load, self.path, loader=old.loader)
            if self.adjust is not None:
                new = self.adjust(new)
        except GatewayError as exc:
            log.error("gateway.reload_failed", error=str(exc), detail="the running configuration is unchanged")
            return False
        if new.layer_class is not old.layer_class or new.layer_options != old.layer_options:
            log.error("gateway.reload_failed", error="the layer: section changed; that needs a restart",
                      detail="the running configuration is unchanged")
            return False
        new_routes = [route for _, route in new.routes()]
        try:
            await gw.lifespan.extend(new_routes)
        except GatewayError as exc:
            log.error("gateway.reload_failed", error=str(exc), detail="the running configuration is unchanged")
            await gw.lifespan.retire([route for _, route in old.routes()])
            return False
        self._swap_routes(new.routers)
        gw.plan = new
        if gw.bridges is not None:
            try:
                await gw.bridges.replace(new.bridges)
            except Exception as exc:  # the routes are swapped; say what did not follow
                log.error("gateway.reload_bridges_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        changed = await self._adapters(old, new)
        for name, adapter in list(gw.adapters.items()):
            if name not in changed:
                try:
                    await adapter.routes_changed()
                except Exception as exc:  # the routes are swapped; say what did not follow
                    log.error("gateway.reload_adapter_failed", adapter=name, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self.count += 1
        log.info("gateway.reloaded", routes=len(new_routes), adapters_restarted=changed)
        asyncio.get_running_loop().create_task(self._retire_when_idle(new_routes))
        return True

    def _swap_routes(self, routers: dict[str, Router]) -> None:
        """Fill the running routers with the new routes: adapters hold the router objects (and
        their bound ``resolve``), so the objects stay and their lists change, one assignment each."""
        mapping = self.gateway.router.application_mapping
        for scope_type, router in routers.items():
            current = mapping.get(scope_type)
            if isinstance(current, Router):
                current.routes = router.routes
            else:
                mapping[scope_type] = router
        for scope_type, current in mapping.items():
            if scope_type not in routers and isinstance(current, Router):
                current.routes = []

    async def _adapters(self, old: config_mod.Plan, new: config_mod.Plan) -> list[str]:
        gw = self.gateway
        before = {ap.name: ap for ap in old.adapters}
        after = {ap.name: ap for ap in new.adapters}
        drain = new.config.shutdown.drain_timeout
        changed = [name for name in before if name not in after or after[name].config != before[name].config
                   or after[name].cls is not before[name].cls]
        for name in changed:
            if name in gw.adapters:
                await gw.stop_adapter(name, drain)
        for name, ap in after.items():
            if name in changed or name not in before:
                try:
                    adapter = await gw.start_adapter(ap)
                except Exception as exc:  # noqa: BLE001 - the other adapters keep serving
                    gw.adapters.pop(name, None)
                    gw.health.set(f"adapter.{name}", "down", f"did not start after reload: {exc}")
                    log.error("gateway.reload_adapter_failed", adapter=name, error=str(exc))
                    continue
                gw.relay_outbound(adapter)
        return sorted(set(changed) | (set(after) - set(before)))

    async def _retire_when_idle(self, keep: list[config_mod.Route]) -> None:
        """Shut down removed applications' lifespan once their last instance has ended."""
        gw = self.gateway
        kept = {id(route.endpoint) for route in keep}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + gw.plan.config.shutdown.drain_timeout
        while loop.time() < deadline and any(  # noqa: ASYNC110 - a poll bounded by the drain timeout
            id(i.match.route.endpoint) not in kept for i in gw.runner.active
        ):
            await asyncio.sleep(0.1)
        await gw.lifespan.retire(keep)
