"""Running a plan's bridges in a gateway: start, stop, and swap them on a config reload."""

from __future__ import annotations

import asyncio

from .config import GROUP, Bridge
from .outbound import OutboundBridge
from .runtime import Runtime


class BridgeService:
    """Gives every bridge the runtime, and runs the loops of the bridges from a group."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.running: dict[str, OutboundBridge] = {}

    async def start(self, bridges: list[Bridge]) -> None:
        for bridge in bridges:
            self.runtime.stats.register(bridge.name)
            bridge.runtime = self.runtime
        started: list[OutboundBridge] = []
        try:
            for bridge in bridges:
                if bridge.source == GROUP:
                    runner = OutboundBridge(bridge, self.runtime)
                    await runner.start()
                    started.append(runner)
                    self.running[bridge.name] = runner
        except BaseException:
            await asyncio.gather(*(r.stop() for r in started), return_exceptions=True)
            for runner in started:
                self.running.pop(runner.bridge.name, None)
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.running.values()), return_exceptions=True)
        self.running.clear()

    async def replace(self, bridges: list[Bridge]) -> list[str]:
        """On reload: stop the bridges from a group that were removed or changed, start the new
        ones; an unchanged one keeps running. Returns the names (re)started."""
        wanted = {b.name: b for b in bridges if b.source == GROUP}
        for name, runner in list(self.running.items()):
            if name not in wanted or wanted[name].config_key != runner.bridge.config_key:
                await runner.stop(leave=True)
                del self.running[name]
        fresh = [b for b in bridges if b.source != GROUP or b.name not in self.running]
        await self.start(fresh)
        for bridge in bridges:  # the unchanged ones: the new plan's objects get the runtime too
            bridge.runtime = self.runtime
        return sorted(b.name for b in fresh if b.source == GROUP)
