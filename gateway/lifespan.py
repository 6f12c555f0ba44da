"""ASGI lifespan for every distinct routed application.

Each application object (not each route) gets one ``lifespan`` scope with its own ``state``
dict; the router copies that dict into every scope it routes to the app, as the ASGI spec
asks. An app that raises on the lifespan scope before answering does not support lifespan and
is skipped (``mode: auto``), which is what Channels consumers and most plain apps do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from .errors import StartupError
from .routing import Route
from .types import ASGIApp, Message

log = structlog.get_logger("gateway.lifespan")


@dataclass(eq=False)
class _AppLifespan:
    app: ASGIApp
    name: str
    state: dict[str, Any] = field(default_factory=dict)
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    outbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None

    async def run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            await self.outbox.put({"type": "_returned"})

    async def _send(self, message: Message) -> None:
        await self.outbox.put(message)


class Lifespan:
    """Starts and stops the lifespan of every distinct application in the routes."""

    def __init__(self, routes: Iterable[Route], *, mode: str = "auto", startup_timeout: float = 30, shutdown_timeout: float = 30) -> None:
        self.mode = mode
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._routes = list(routes)
        self._running: list[_AppLifespan] = []

    async def startup(self) -> None:
        await self.extend(self._routes)

    async def extend(self, routes: Iterable[Route]) -> None:
        """Start the lifespan of every application of ``routes`` not running yet; every route
        gets its application's state. On reload: the apps kept go on, new ones start."""
        if self.mode == "off":
            return
        seen: dict[int, _AppLifespan] = {id(e.app): e for e in self._running}
        for route in routes:
            endpoint = route.endpoint
            assert endpoint is not None
            entry = seen.get(id(endpoint))
            if entry is None:
                entry = seen[id(endpoint)] = _AppLifespan(endpoint, route.target)
                if not await self._start_one(entry):
                    entry.state = {}  # unsupported: routes still get a fresh state dict
                    continue
                self._running.append(entry)
            route.state = entry.state

    async def retire(self, keep: Iterable[Route]) -> None:
        """Shut down the lifespan of the applications no route of ``keep`` names any more."""
        kept = {id(route.endpoint) for route in keep}
        gone = [e for e in self._running if id(e.app) not in kept]
        self._running = [e for e in self._running if id(e.app) in kept]
        await self._shut_down(gone)

    async def _start_one(self, entry: _AppLifespan) -> bool:
        entry.task = asyncio.get_running_loop().create_task(entry.run())
        await entry.inbox.put({"type": "lifespan.startup"})
        try:
            async with asyncio.timeout(self.startup_timeout):
                reply = await entry.outbox.get()
        except TimeoutError:
            entry.task.cancel()
            raise StartupError(f"application {entry.name} did not complete lifespan startup within {self.startup_timeout:g}s") from None
        kind = reply.get("type")
        if kind == "lifespan.startup.complete":
            log.debug("lifespan.started", app=entry.name)
            return True
        if kind == "lifespan.startup.failed":
            await self._reap(entry)
            message = reply.get("message") or "no message given"
            raise StartupError(f"application {entry.name} failed to start: {message}")
        # The app returned or raised without answering: it does not do lifespan.
        await self._reap(entry)
        if self.mode == "on":
            why = f"{type(entry.error).__name__}: {entry.error}" if entry.error else "it returned without answering"
            raise StartupError(f"application {entry.name} does not support lifespan ({why}) and lifespan.mode is 'on'")
        log.debug("lifespan.unsupported", app=entry.name)
        return False

    async def shutdown(self) -> None:
        running, self._running = self._running, []
        await self._shut_down(running)

    async def _shut_down(self, running: list[_AppLifespan]) -> None:
        for entry in reversed(running):
            await entry.inbox.put({"type": "lifespan.shutdown"})
            try:
                async with asyncio.timeout(self.shutdown_timeout):
                    reply = await entry.outbox.get()
            except TimeoutError:
                log.warning("lifespan.shutdown_timeout", app=entry.name, seconds=self.shutdown_timeout)
                reply = {}
            if reply.get("type") == "lifespan.shutdown.failed":
                log.error("lifespan.shutdown_failed", app=entry.name, message=reply.get("message", ""))
            await self._reap(entry)

    @staticmethod
    async def _reap(entry: _AppLifespan) -> None:
        task = entry.task
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - the app's own failure is reported by the caller
            pass
