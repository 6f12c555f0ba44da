"""What the adapter remembers: message ids already handled (provider retries) and opted-out numbers.

In memory for one process; in the channel layer's Redis when the layer is Redis, so every gateway
process sees the same ids and the same opt-out list.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class Store(Protocol):
    async def seen(self, key: str) -> bool: ...
    async def remember(self, key: str, ttl: float) -> None: ...
    async def opted_out(self, number: str) -> bool: ...
    async def set_opt_out(self, number: str, out: bool) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._opted_out: set[str] = set()
        self._next_sweep = 0.0

    async def seen(self, key: str) -> bool:
        expiry = self._seen.get(key)
        return expiry is not None and expiry > time.monotonic()

    async def remember(self, key: str, ttl: float) -> None:
        now = time.monotonic()
        self._seen[key] = now + ttl
        if now >= self._next_sweep:  # forget expired ids now and then, not on every message
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._next_sweep = now + 60.0

    async def opted_out(self, number: str) -> bool:
        return number in self._opted_out

    async def set_opt_out(self, number: str, out: bool) -> None:
        if out:
            self._opted_out.add(number)
        else:
            self._opted_out.discard(number)

    async def close(self) -> None:
        pass


class RedisStore:
    """Keys under the layer's prefix: ``<prefix>:sms.seen:<account>:<id>`` and the set ``<prefix>:sms.optout``."""

    def __init__(self, layer: Any) -> None:
        from gateway.layers.redis_hosts import make_client

        self.client = make_client(layer.hosts[0])
        self.prefix = f"{layer.prefix}:sms."

    async def seen(self, key: str) -> bool:
        return bool(await self.client.exists(f"{self.prefix}seen:{key}"))

    async def remember(self, key: str, ttl: float) -> None:
        await self.client.set(f"{self.prefix}seen:{key}", b"1", px=max(1, int(ttl * 1000)))

    async def opted_out(self, number: str) -> bool:
        return bool(await self.client.sismember(f"{self.prefix}optout", number))

    async def set_opt_out(self, number: str, out: bool) -> None:
        if out:
            await self.client.sadd(f"{self.prefix}optout", number)
        else:
            await self.client.srem(f"{self.prefix}optout", number)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


def make_store(layer: Any) -> MemoryStore | RedisStore:
    try:
        from gateway.layers.redis import RedisChannelLayer
    except ImportError:
        return MemoryStore()
    return RedisStore(layer) if isinstance(layer, RedisChannelLayer) else MemoryStore()
