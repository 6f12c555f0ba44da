"""What the Redis layer binds to one event loop: clients, scripts, receive loops, keepers, waiting
receivers and the counts waiting to go back to Redis.

A Redis client, a task or a future belongs to the loop that made it, so all of them live here and
go together when the loop does; the messages themselves live in ``redis_local`` (the layer's).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis

from . import redis_scripts as scripts
from .redis_hosts import close_client, make_client
from .redis_poller import Poller


class LoopState:
    """The layer's state on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hosts: list[dict[str, Any]], socket_timeout: float, connect_timeout: float) -> None:
        self.loop = loop
        self.hosts = hosts
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.clients: dict[int, Redis] = {}
        self.scripts: dict[tuple[int, str], Any] = {}
        self.pollers: dict[tuple[int, str], Poller] = {}
        self.keepers: dict[int, asyncio.Task[None]] = {}
        self.kicks: dict[int, asyncio.Event] = {}
        self.waiters: dict[str, deque[asyncio.Future[None]]] = {}  # receivers of this process's channels
        self.general: dict[str, deque[asyncio.Future[bytes]]] = {}  # receivers of normal channels
        self.uncount: dict[int, dict[str, Counter[str]]] = {}  # per host, per inbox: counts to give back
        self.uncount_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.next_sweep = 0.0

    def here(self) -> bool:
        """Whether the calling code runs on this state's loop."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def client(self, shard: int) -> Redis:
        c = self.clients.get(shard)
        if c is None:
            c = self.clients[shard] = make_client(
                self.hosts[shard], socket_timeout=self.socket_timeout, connect_timeout=self.connect_timeout
            )
        return c

    def script(self, shard: int, name: str) -> Any:
        s = self.scripts.get((shard, name))
        if s is None:
            s = self.scripts[(shard, name)] = self.client(shard).register_script(getattr(scripts, name))
        return s

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` on this loop; it is cancelled with the state."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def poller(self, shard: int, kind: str, make: Callable[[], Poller]) -> Poller:
        """The receive loop of ``kind`` (``general`` or ``inbox``) on ``shard``, made by ``make`` on first use."""
        poller = self.pollers.get((shard, kind))
        if poller is None:
            poller = self.pollers[(shard, kind)] = make()
        return poller

    def kick(self, shard: int) -> None:
        """Make ``shard``'s keeper visit its host now (from any thread)."""
        kick = self.kicks.get(shard)
        if kick is None:
            return
        if self.here():
            kick.set()
        else:
            try:
                self.loop.call_soon_threadsafe(kick.set)
            except RuntimeError:
                pass  # that loop is closed

    def wake_one(self, channel: str) -> None:
        """Wake the first receiver still waiting on ``channel`` (called on this loop)."""
        waiters = self.waiters.get(channel)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def idle(self, channel: str) -> bool:
        """Nobody waits on ``channel`` here (an empty waiter list is forgotten on the way)."""
        waiters = self.waiters.get(channel)
        if waiters is not None and not waiters:
            del self.waiters[channel]
            waiters = None
        return waiters is None

    async def close(self) -> None:
        """Stop every task and receive loop, cancel the waiting receivers, close the clients."""
        pollers = list(self.pollers.values())
        tasks = [*(p.task for p in pollers), *self.keepers.values()]
        for task in [*tasks, *self.tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *self.tasks, return_exceptions=True)
        for poller in pollers:
            await poller.close()
        for general in self.general.values():
            for waiter in general:
                waiter.cancel()
        for waiters in self.waiters.values():
            for local in waiters:
                local.cancel()
        for client in self.clients.values():
            await close_client(client)
