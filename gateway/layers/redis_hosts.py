"""Redis hosts for the channel layer: decoding ``hosts`` entries, consistent hashing, clients.

``hosts`` takes the entries channels_redis takes, so a Django ``CHANNEL_LAYERS`` block moves over
unchanged:

* a URL string: ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS),
  ``unix:///path/redis.sock``; every redis-py URL option works (``?ssl_cert_reqs=none``...);
* ``[host, port]``;
* a mapping: ``{"address": URL, **redis-py kwargs}`` or, for Sentinel,
  ``{"sentinels": [[host, port], ...], "master_name": "mymaster", "sentinel_kwargs": {...}, **kwargs}``;
  any other mapping is passed to ``redis.asyncio.Redis(**mapping)``.

Keys are spread over the hosts by a consistent-hash ring (160 points per host, SHA-1), so adding
a host moves only about ``1/(n+1)`` of the keys; channels_redis's ``crc32 % 4096`` split moves
about half of them.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

POINTS_PER_HOST = 160
DEFAULT_HOST = "redis://127.0.0.1:6379/0"
FAULTS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
"""What a call to an unreachable, dead or stalled Redis raises."""


def decode_hosts(hosts: Any) -> list[dict[str, Any]]:
    """Normalise ``hosts`` to one kwargs mapping per host (``address``, ``sentinels`` or plain kwargs)."""
    if not hosts:
        return [{"address": DEFAULT_HOST}]
    if isinstance(hosts, (str, bytes)):
        raise ValueError("hosts must be a list of Redis hosts, even if there is only one (e.g. ['redis://127.0.0.1:6379/0'])")
    result: list[dict[str, Any]] = []
    for entry in hosts:
        if isinstance(entry, dict):
            result.append(dict(entry))
        elif isinstance(entry, (tuple, list)):
            if len(entry) != 2:
                raise ValueError(f"a [host, port] hosts entry needs two items, got {list(entry)!r}")
            result.append({"host": entry[0], "port": int(entry[1])})
        elif isinstance(entry, str):
            result.append({"address": entry})
        else:
            raise ValueError(f"hosts entry {entry!r} is not a URL, [host, port] or mapping")
    return result


def host_label(host: dict[str, Any]) -> str:
    """A stable, password-free name for one host: used for the ring and in log lines."""
    if "address" in host:
        from urllib.parse import urlsplit

        parts = urlsplit(host["address"])
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path}"
    if "sentinels" in host:
        return f"sentinel:{host.get('master_name', 'mymaster')}"
    return f"{host.get('host', 'localhost')}:{host.get('port', 6379)}/{host.get('db', 0)}"


def make_client(host: dict[str, Any], *, blocking: bool = False, socket_timeout: float = 5, connect_timeout: float = 2) -> Redis:
    """A redis-py asyncio client for one host.

    Commands are never retried by redis-py: a command that failed after it was written may have
    run, and retrying it could deliver a message twice (the layer promises at-most-once). A
    connection found dead is replaced on the next call.

    ``blocking`` clients serve one receive loop each; their read timeout is left to the loop
    (which blocks for a bounded time per call).
    """
    kwargs = dict(host)
    kwargs.setdefault("socket_connect_timeout", connect_timeout)
    kwargs.setdefault("socket_timeout", None if blocking else socket_timeout)
    kwargs.setdefault("socket_keepalive", True)
    kwargs.setdefault("health_check_interval", 1)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    if blocking:
        kwargs["single_connection_client"] = True
    if "address" in kwargs:
        address = kwargs.pop("address")
        return Redis.from_url(address, **kwargs)
    if "sentinels" in kwargs:
        from redis.asyncio.sentinel import Sentinel

        sentinels = [tuple(s) for s in kwargs.pop("sentinels")]
        master = kwargs.pop("master_name", "mymaster")
        sentinel_kwargs = kwargs.pop("sentinel_kwargs", None) or {}
        sentinel_kwargs.setdefault("socket_connect_timeout", connect_timeout)
        sentinel_kwargs.setdefault("socket_timeout", socket_timeout)
        single = kwargs.pop("single_connection_client", False)
        client = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs).master_for(master)
        if single:
            client.single_connection_client = True
        return client
    return Redis(**kwargs)


async def reset_pool(client: Redis) -> None:
    """Drop every pooled connection: after a fault they are suspect, after a restart all dead."""
    try:
        await client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001 - disconnecting a broken connection must not raise
        pass


async def close_client(client: Redis) -> None:
    try:
        await client.aclose(close_connection_pool=True)
    except Exception:  # noqa: BLE001 - closing a broken connection must not raise
        pass


class HashRing:
    """Consistent hashing of key names over ``n`` hosts (identified by their labels)."""

    def __init__(self, labels: Sequence[str], points_per_host: int = POINTS_PER_HOST) -> None:
        if not labels:
            raise ValueError("a hash ring needs at least one host")
        self.size = len(labels)
        ring: list[tuple[int, int]] = []
        for index, label in enumerate(labels):
            for point in range(points_per_host):
                ring.append((_hash(f"{label}#{point}"), index))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]

    def index(self, name: str) -> int:
        """The host index that owns ``name``."""
        if self.size == 1:
            return 0
        at = bisect.bisect(self._points, _hash(name))
        return self._owners[at % len(self._owners)]


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.sha1(value.encode()).digest()[:8], "big")
