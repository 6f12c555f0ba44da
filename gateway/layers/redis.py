"""The Redis channel layer: Channels' layer API shared by every gateway process on one Redis.

Use it from YAML (``layer: {backend: redis, hosts: [redis://redis:6379/0]}``) or from Django
(``CHANNEL_LAYERS = {"default": {"BACKEND": "gateway.layers.redis.RedisChannelLayer",
"CONFIG": {"hosts": [...]}}}``); the config keys are channels_redis's where they mean the same.

How it works (see ``redis_scripts`` for keys and the wire format):

* **Normal channels** (``mqtt.publish``) are Redis lists. ``send`` is one ``EVALSHA`` that drops
  expired messages, checks capacity and pushes. Every process receiving normal channels runs
  one receive loop per Redis host: one ``BLMPOP`` over the channels it has receivers waiting
  on. A pop is atomic, so each message goes to exactly one receiver across all processes.
* **Process-specific channels** (``specific.<process>!<random>``, from ``new_channel``) share
  one inbox list per process; one receive loop per process drains it in batches into local
  per-channel buffers. No blocking connection per channel.
* **group_send** is one ``EVALSHA`` per Redis host (one round trip with one host). The script
  drops expired memberships and pushes **one small element per member process** (group name +
  payload) and one per normal-channel member; each process expands the element to its member
  channels from a membership cache that ``group_add``/``group_discard`` keep in step through the
  same ordered inbox. Neither Redis nor the wire carries per-member data, so 1,000 members in
  one process cost one list push (channels_redis sends the 1,000 names with every message).
* **Process-local shortcut**: ``send`` to a channel of this process does not touch Redis; the
  message is serialised and queued locally exactly as if it had come back from Redis.
* **Capacity**: a normal channel is full at ``capacity`` queued messages (``ChannelFull`` on
  ``send``); a process-specific channel counts messages ``send`` queued for it in a count hash
  (``ChannelFull`` at capacity, as channels_redis, but per channel where channels_redis counts
  per process), and its process checks room for a group message when the message arrives.
  A group member that is full misses the message, as in Channels, but it is counted
  (``full_drops``), passed to ``on_full`` and logged at warning (``layer.channel_full``) where
  it is detected; never dropped silently. An inbox holding ``inbox_limit`` unread elements (a
  process that stopped reading) makes its members full, so a dead process cannot grow Redis.
* **Expiry**: every message carries its deadline; expired messages are dropped where they are
  found (``expired_drops``, ``layer.message_expired``), and, as in Channels, a channel of this
  process whose message expired unread leaves the groups this process added it to.

Faults: commands are not retried (a retried push could deliver twice; delivery is at most
once). When Redis is unreachable, ``send``/``group_send``/``group_add``/``group_discard`` raise
``LayerUnavailable`` at once (a ``ConnectionError``) naming the host; receive loops keep
running, retry with exponential backoff (50 ms doubling to 2 s, with jitter), and receivers
simply wait. When Redis comes back empty (restart without persistence), every process re-adds
the group memberships of its own channels, with their original join times (a marker key,
``<prefix>.epoch``, tells "came back empty" from "connection blipped"). The
layer's state is reported through ``on_health(status, detail)`` (``"ok"``/``"degraded"``).
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import structlog
from pydantic import Field
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_scripts as scripts
from .base import BaseChannelLayer, ChannelFull, FullHook, HealthHook, LayerOptions, LayerUnavailable
from .redis_hosts import HashRing, decode_hosts, host_label, make_client

log = structlog.get_logger("gateway.layers.redis")

BLOCK_SECONDS = 2.0
"""Longest a receive loop blocks in one ``BLMPOP`` (bounds how long a dead socket goes unnoticed)."""
INBOX_BATCH = 512
UNCOUNT_DELAY = 0.02
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
_OTHER_PROCESS = re.compile(r".*\.[0-9a-f]{12}!")
"""The inbox of a channel another RedisChannelLayer made (``<prefix>.<12 hex>!``)."""
_FAULTS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class RedisLayerOptions(LayerOptions):
    """`layer: {backend: redis, ...}`: the Redis channel layer (keys as in channels_redis where they mean the same)."""

    hosts: list[str | tuple[str, int] | dict[str, Any]] = Field(
        default_factory=list,
        description="Redis hosts: URLs (`redis://[user:password@]host:6379/0`, `rediss://` for TLS), "
        "`[host, port]`, or mappings (`{address: URL, ...}`, or `{sentinels: [[host, port]], master_name: ...}` "
        "for Sentinel). Several hosts are sharded by consistent hashing. Default `redis://127.0.0.1:6379/0`.",
    )
    url: str | None = Field(None, description="Shorthand for one host: `url: redis://redis:6379/0` is `hosts: [redis://redis:6379/0]`.")
    prefix: str = Field("asgi", min_length=1, description="Prefix of every Redis key the layer writes; layers with different prefixes never meet.")
    inbox_limit: int = Field(
        1000, ge=1,
        description="Unread elements (group messages and membership notices) a process's inbox holds before group_send counts its members as full "
        "(bounds memory for a process that died without leaving its groups).",
    )
    socket_timeout: float = Field(5, gt=0, description="Seconds to wait for Redis to answer a command before it fails.")
    connect_timeout: float = Field(2, gt=0, description="Seconds to wait for a connection to Redis.")


@dataclass(slots=True, eq=False)
class _Local:
    """A channel of this process: ``(expires_ms, payload, count_inbox)`` in arrival order, and waiting receivers.

    ``count_inbox`` is set for messages that ``send`` counted in Redis: receiving one gives the count back.
    """

    messages: deque[tuple[int, bytes, str | None]] = field(default_factory=deque)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class _LoopState:
    """Everything bound to one event loop: clients, receive loops, local buffers, waiters."""

    def __init__(self, layer: RedisChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.clients: dict[int, Redis] = {}
        self.scripts: dict[tuple[int, str], Any] = {}
        self.pollers: dict[tuple[int, str], _Poller] = {}
        self.local: dict[str, _Local] = {}
        self.general: dict[str, deque[asyncio.Future[bytes]]] = {}
        self.uncount: dict[int, dict[str, Counter[str]]] = {}
        self.uncount_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.next_sweep = 0.0

    def client(self, shard: int) -> Redis:
        c = self.clients.get(shard)
        if c is None:
            layer = self.layer
            c = self.clients[shard] = make_client(
                layer.hosts[shard], socket_timeout=layer.socket_timeout, connect_timeout=layer.connect_timeout
            )
        return c

    def script(self, shard: int, name: str) -> Any:
        s = self.scripts.get((shard, name))
        if s is None:
            s = self.scripts[(shard, name)] = self.client(shard).register_script(getattr(scripts, name))
        return s

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class RedisChannelLayer(BaseChannelLayer):
    """Channels' layer API on Redis (the ``redis`` backend); several processes and machines share it."""

    options_model = RedisLayerOptions

    def __init__(
        self,
        hosts: Any = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str, int] | None = None,
        url: str | None = None,
        inbox_limit: int = 1000,
        socket_timeout: float = 5,
        connect_timeout: float = 2,
        on_full: FullHook | None = None,
        on_health: HealthHook | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("symmetric_encryption_keys"):
            raise TypeError("symmetric_encryption_keys is not supported by gateway.layers.redis (use rediss:// for encryption in transit)")
        if kwargs.get("serializer_format", "msgpack") != "msgpack":
            raise TypeError("gateway.layers.redis only serialises with msgpack (serializer_format must be 'msgpack')")
        unknown = sorted(set(kwargs) - {"symmetric_encryption_keys", "serializer_format", "random_prefix_length"})
        if unknown:
            raise TypeError(f"unknown RedisChannelLayer option(s): {', '.join(unknown)}")
        super().__init__(
            expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity,
            on_full=on_full, on_health=on_health,
        )
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty str")
        if url and hosts:
            raise ValueError("give either url or hosts, not both")
        self.hosts = decode_hosts([url] if url else hosts)
        self.labels = [host_label(h) for h in self.hosts]
        self.ring = HashRing(self.labels)
        self.prefix = prefix
        self.inbox_limit = inbox_limit
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.client_id = secrets.token_hex(6)
        self._ttl_ms = max(int(expiry * 1000), 1)
        self._gexp_ms = max(int(group_expiry * 1000), 1)
        self._q = f"{prefix}:q:"
        self._n = f"{prefix}:n:"
        self._g = f"{prefix}:g:"
        self._gp = f"{prefix}:gp:"
        self._gn = f"{prefix}:gn:"
        self._epoch_key = f"{prefix}.epoch"
        self._lua_caps: list[Any] = []
        for pattern, cap in (channel_capacity or {}).items():
            self._lua_caps += [scripts.glob_to_lua(pattern), cap]
        self._inboxes: set[str] = set()
        self._local_groups: dict[tuple[str, str], dict[str, int]] = {}  # (own inbox, group) -> {channel: joined_ms}
        self._down: dict[int, str] = {}
        self._epochs: dict[int, bytes] = {}
        self._state: _LoopState | None = None
        self._closed = False

    def __str__(self) -> str:
        return f"{type(self).__name__}(hosts={self.labels}, prefix={self.prefix!r})"

    # -- Channel API -----------------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` on ``channel``; ``ChannelFull`` at capacity, ``LayerUnavailable`` if Redis is unreachable."""
        _check_message(message)
        self.valid_channel_name(channel)
        payload = _pack(message)
        now = _now_ms()
        capacity = self.get_capacity(channel)
        if "!" in channel:
            inbox = self.non_local_name(channel)
            st = self._state_here()
            if inbox in self._inboxes and st is not None:
                self._maybe_sweep(st, now)
                local = self._local(st, channel)
                self._purge_local(st, channel, local, now)
                if len(local.messages) >= capacity:
                    raise ChannelFull(channel)
                local.messages.append((now + self._ttl_ms, payload, None))
                _wake_one(local)
                return
            shard = self.ring.index(inbox)
            element = b"%013d" % (now + self._ttl_ms) + b"c" + channel.encode() + b"\n" + payload
            keys = [self._q + inbox, self._n + inbox]
            args = [now, self._ttl_ms, capacity, element, channel]
        else:
            shard = self.ring.index(channel)
            element = b"%013d" % (now + self._ttl_ms) + b"n\n" + payload
            keys, args = [self._q + channel], [now, self._ttl_ms, capacity, element, ""]
        ok, purged = await self._run(shard, "SEND", keys, args)
        if purged:
            self._expired(channel, purged)
        if not ok:
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for, remove and return the oldest unexpired message on ``channel``.

        Several receivers of a normal channel, in this process or others, are each given a
        different message. A process-specific channel is received in the process that made it.
        """
        self.valid_channel_name(channel)
        st = self._receive_state()
        if "!" in channel:
            return await self._receive_local(st, channel)
        return await self._receive_general(st, channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A fresh process-specific channel name, ``<prefix>.<process id>!<random>``."""
        inbox = f"{prefix}.{self.client_id}!"
        name = inbox + secrets.token_hex(8)
        self.valid_channel_name(name)
        self._inboxes.add(inbox)
        st = self._state_here()
        if st is not None:
            self._inbox_poller(st, inbox)
        return name

    # -- Groups extension ------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (again: renews its ``group_expiry``)."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        now = _now_ms()
        if "!" not in channel:
            key = self._gn + group

            async def call(client: Redis) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zadd(key, {channel: now})
                    pipe.pexpire(key, self._gexp_ms)
                    await pipe.execute()

            await self._call(self.ring.index(channel), call)
            return
        inbox = self.non_local_name(channel)
        mine = inbox in self._inboxes
        before = self._local_groups.get((inbox, group), {}).get(channel)
        if mine:  # before Redis: a group_send racing with this add must already find it here
            self._remember(inbox, group, channel, now)
        element = b"%013d" % (now + self._ttl_ms) + b"a" + group.encode() + b"\n" + f"{channel},{now}".encode()
        try:
            await self._run(
                self.ring.index(inbox), "GROUP_ADD", [self._g + group, self._gp + group, self._q + inbox],
                [channel, now, self._gexp_ms, self._ttl_ms, inbox, element],
            )
        except BaseException:
            if mine:
                if before is None:
                    self._forget(inbox, group, channel)
                else:
                    self._remember(inbox, group, channel, before)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op when it is not a member."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        if "!" not in channel:
            await self._call(self.ring.index(channel), lambda c: c.zrem(self._gn + group, channel))
            return
        inbox = self.non_local_name(channel)
        self._forget(inbox, group, channel)
        element = b"%013d" % (_now_ms() + self._ttl_ms) + b"d" + group.encode() + b"\n" + channel.encode()
        await self._run(
            self.ring.index(inbox), "GROUP_DISCARD", [self._g + group, self._gp + group, self._q + inbox],
            [channel, inbox, element, self._ttl_ms],
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for every current member: one script call per Redis host.

        The script pushes one element per member process (expanded there) and one per
        normal-channel member. A member whose channel is full is skipped (Channels' rule),
        counted and logged.
        """
        _check_message(message)
        self.valid_group_name(group)
        payload = _pack(message)
        now = _now_ms()
        stamp = b"%013d" % (now + self._ttl_ms)
        args = [
            now, self._gexp_ms, self._ttl_ms, stamp + b"g" + group.encode() + b"\n" + payload, stamp + b"n\n" + payload,
            self._q, self.inbox_limit, self.capacity, *self._lua_caps,
        ]
        keys = [self._g + group, self._gp + group, self._gn + group]
        if self.ring.size == 1:
            results = [await self._run(0, "GROUP_SEND", keys, args)]
        else:
            results = await asyncio.gather(*(self._run(i, "GROUP_SEND", keys, args) for i in range(self.ring.size)))
        for full in results:
            for channel in full:
                self._count_full(channel.decode(), group)

    # -- Flush extension and lifecycle -----------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key under the prefix on every host, and every locally buffered message.

        Other processes drop their buffered messages and membership caches when they read the
        flush mark left in their inbox.
        """
        args = [f"{self.prefix}:*", self._q, b"%013d" % (_now_ms() + self._ttl_ms) + b"f\n", self._ttl_ms, self._gp]
        await asyncio.gather(*(self._run(i, "FLUSH", [], args) for i in range(self.ring.size)))
        self._local_groups.clear()
        st = self._state
        if st is not None:
            for channel, local in list(st.local.items()):
                local.messages.clear()
                self._forget_if_idle(st, channel, local)
            st.uncount.clear()

    async def close(self) -> None:
        """Stop the receive loops and close every connection. Waiting receivers are cancelled."""
        st, self._state = self._state, None
        if st is None:
            return
        try:
            running = asyncio.get_running_loop() is st.loop
        except RuntimeError:
            running = False
        if running:
            await self._close_state(st)

    async def _close_state(self, st: _LoopState) -> None:
        pollers = list(st.pollers.values())
        for poller in pollers:
            poller.stopping = True
        for poller in pollers:
            poller.task.cancel()
        for task in list(st.tasks):
            task.cancel()
        await asyncio.gather(*(p.task for p in pollers), *st.tasks, return_exceptions=True)
        for poller in pollers:
            await _close_client(poller.client)
        for waiters in st.general.values():
            for w in waiters:
                w.cancel()
        for local in st.local.values():
            for w in local.waiters:
                w.cancel()
        for client in st.clients.values():
            await _close_client(client)

    # -- receiving -------------------------------------------------------------------------------

    async def _receive_local(self, st: _LoopState, channel: str) -> dict[str, Any]:
        inbox = self.non_local_name(channel)
        if inbox not in self._inboxes and _OTHER_PROCESS.fullmatch(inbox):
            raise ValueError(
                f"{channel!r} was made by another process (or layer instance); a process-specific channel "
                "is received only where new_channel() created it"
            )
        self._inboxes.add(inbox)
        self._inbox_poller(st, inbox)
        while True:
            now = _now_ms()
            self._maybe_sweep(st, now)
            local = self._local(st, channel)
            self._purge_local(st, channel, local, now)
            if local.messages:
                _, payload, counted = local.messages.popleft()
                self._forget_if_idle(st, channel, local)
                if counted is not None:
                    self._give_back(st, counted, channel)
                return _unpack(payload)
            waiter: asyncio.Future[None] = st.loop.create_future()
            local.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                try:
                    local.waiters.remove(waiter)
                except ValueError:
                    pass
                if waiter.done() and not waiter.cancelled() and local.messages:
                    _wake_one(local)
                self._forget_if_idle(st, channel, local)
                raise

    async def _receive_general(self, st: _LoopState, channel: str) -> dict[str, Any]:
        shard = self.ring.index(channel)
        waiter: asyncio.Future[bytes] = st.loop.create_future()
        waiters = st.general.setdefault(channel, deque())
        waiters.append(waiter)
        poller = self._poller(st, shard, "general")
        poller.want(self._q + channel)
        try:
            element = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Popped for us, then we were cancelled: put it back at the head for someone else.
                st.spawn(self._push_back(st, shard, self._q + channel, waiter.result()))
            raise
        finally:
            try:
                waiters.remove(waiter)
            except ValueError:
                pass
            if not waiters and st.general.get(channel) is waiters:
                del st.general[channel]
        return _unpack(_payload(element))

    async def _push_back(self, st: _LoopState, shard: int, key: str, element: bytes) -> None:
        try:
            await st.client(shard).lpush(key, element)
        except _FAULTS as exc:
            log.warning("layer.message_lost", key=key, reason=f"could not requeue after a cancelled receive: {exc}")

    def _deliver_general(self, st: _LoopState, channel: str, element: bytes, now: int) -> bool:
        """Hand a popped element to a waiting receiver; False when none waits (caller requeues)."""
        if int(element[:13]) <= now:
            self._expired(channel, 1)
            return True
        for waiter in st.general.get(channel, ()):
            if not waiter.done():
                waiter.set_result(element)
                return True
        return False

    def _deliver_inbox(self, st: _LoopState, inbox: str, elements: list[bytes]) -> None:
        now = _now_ms()
        for element in elements:
            expires = int(element[:13])
            kind = element[13:14]
            nl = element.index(b"\n", 14)
            name = element[14:nl].decode()
            body = element[nl + 1 :]
            if kind == b"g":
                members = self._local_groups.get((inbox, name))
                if not members:
                    continue
                if expires <= now:
                    self._expired(f"group:{name}", len(members))
                    continue
                for channel, joined in list(members.items()):
                    if now - joined >= self._gexp_ms:
                        self._forget(inbox, name, channel)
                        continue
                    local = self._local(st, channel)
                    self._purge_local(st, channel, local, now)
                    if len(local.messages) >= self.get_capacity(channel):
                        self._count_full(channel, name)
                        self._forget_if_idle(st, channel, local)
                        continue
                    local.messages.append((expires, body, None))
                    _wake_one(local)
            elif kind == b"c":
                if expires <= now:
                    self._give_back(st, inbox, name)
                    self._expired(name, 1)
                    self._leave_groups(name)
                    continue
                local = self._local(st, name)
                local.messages.append((expires, body, inbox))
                _wake_one(local)
            elif kind == b"a":
                channel, _, joined = body.decode().rpartition(",")
                self._remember(inbox, name, channel, int(joined))
            elif kind == b"d":
                self._forget(inbox, name, body.decode())
            elif kind == b"f":
                for key in [k for k in self._local_groups if k[0] == inbox]:
                    del self._local_groups[key]
                for channel, local in list(st.local.items()):
                    if channel.startswith(inbox):
                        local.messages.clear()
                        self._forget_if_idle(st, channel, local)

    # -- membership cache (the groups of this process's channels) ------------------------------

    def _remember(self, inbox: str, group: str, channel: str, joined: int) -> None:
        self._local_groups.setdefault((inbox, group), {})[channel] = joined

    def _forget(self, inbox: str, group: str, channel: str) -> None:
        members = self._local_groups.get((inbox, group))
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._local_groups[(inbox, group)]

    # -- local buffers -----------------------------------------------------------------------------

    def _local(self, st: _LoopState, channel: str) -> _Local:
        local = st.local.get(channel)
        if local is None:
            local = st.local[channel] = _Local()
        return local

    def _purge_local(self, st: _LoopState, channel: str, local: _Local, now: int) -> None:
        dropped = 0
        while local.messages and local.messages[0][0] <= now:
            _, _, counted = local.messages.popleft()
            if counted is not None:
                self._give_back(st, counted, channel)
            dropped += 1
        if dropped:
            self._expired(channel, dropped)
            self._leave_groups(channel)

    def _forget_if_idle(self, st: _LoopState, channel: str, local: _Local) -> None:
        if not local.messages and not local.waiters and st.local.get(channel) is local:
            del st.local[channel]

    def _maybe_sweep(self, st: _LoopState, now: int) -> None:
        """Expire every local buffer at most once per expiry period (channels nobody reads again)."""
        if now < st.next_sweep:
            return
        st.next_sweep = now + self._ttl_ms
        for channel, local in list(st.local.items()):
            self._purge_local(st, channel, local, now)
            self._forget_if_idle(st, channel, local)

    def _give_back(self, st: _LoopState, inbox: str, channel: str) -> None:
        """A counted message left the inbox's channel: lower its count in Redis (batched)."""
        shard = self.ring.index(inbox)
        st.uncount.setdefault(shard, {}).setdefault(inbox, Counter())[channel] += 1
        if st.uncount_task is None or st.uncount_task.done():
            st.uncount_task = st.spawn(self._flush_uncount(st))

    async def _flush_uncount(self, st: _LoopState) -> None:
        # Coalesce: one call per inbox every UNCOUNT_DELAY at most, however many messages were
        # received (the count may lag that long behind; it only ever over-counts).
        await asyncio.sleep(UNCOUNT_DELAY)
        while st.uncount:
            batch, st.uncount = st.uncount, {}
            for shard, inboxes in batch.items():
                try:
                    for inbox, counts in inboxes.items():
                        args: list[Any] = []
                        for channel, n in counts.items():
                            args += [channel, n]
                        await self._run(shard, "UNCOUNT", [self._n + inbox], args, health=False)
                except (LayerUnavailable, ResponseError):
                    pass  # counts live no longer than the messages (they expire with them)

    def _leave_groups(self, channel: str) -> None:
        """As in Channels: a channel whose message expired unread leaves its groups."""
        inbox = self.non_local_name(channel)
        groups = sorted(g for (box, g), members in self._local_groups.items() if box == inbox and channel in members)
        st = self._state_here()
        if not groups or st is None:
            return
        log.warning("layer.channel_left_groups", channel=channel, groups=groups, reason="message expired unread")

        async def leave() -> None:
            for group in groups:
                try:
                    await self.group_discard(group, channel)
                except LayerUnavailable:
                    self._forget(self.non_local_name(channel), group, channel)

        st.spawn(leave())

    # -- accounting ------------------------------------------------------------------------------

    def _expired(self, channel: str, count: int) -> None:
        self.expired_drops += count
        log.warning("layer.message_expired", channel=channel, count=count)

    # -- connections, scripts, health --------------------------------------------------------------

    def _queue_name(self, channel: str) -> str:
        return self.non_local_name(channel) if "!" in channel else channel

    def _state_here(self) -> _LoopState | None:
        """The state of the running loop, or None when this call runs on another live loop."""
        loop = asyncio.get_running_loop()
        st = self._state
        if st is not None and st.loop is loop:
            return st
        if st is None or st.loop.is_closed() or not st.loop.is_running():
            self._state = st = _LoopState(self, loop)
            self._close_with_loop(st)
            return st
        return None

    def _close_with_loop(self, st: _LoopState) -> None:
        """Close ``st``'s connections when its loop closes (asyncio.run, async_to_sync), as
        channels_redis does: sync Django code makes a loop per call and would leak otherwise."""
        loop = st.loop
        original = loop.close

        def close() -> None:
            if self._state is st:
                self._state = None
            try:
                if not loop.is_closed() and not loop.is_running():
                    loop.run_until_complete(self._close_state(st))
            except Exception:  # noqa: BLE001 - closing must not stop the loop from closing
                pass
            finally:
                try:
                    del loop.close  # type: ignore[method-assign]
                except AttributeError:
                    pass
            original()

        try:
            loop.close = close  # type: ignore[method-assign]
        except (AttributeError, TypeError):  # e.g. uvloop: attributes cannot be set
            pass

    def _receive_state(self) -> _LoopState:
        st = self._state_here()
        if st is None:
            raise RuntimeError("two event loops are receiving on one RedisChannelLayer at once; receive on one loop only")
        return st

    async def _call(self, shard: int, fn: Callable[[Redis], Any], health: bool = True) -> Any:
        """Run ``fn(client)`` against ``shard``; connection faults become ``LayerUnavailable``."""
        st = self._state_here()
        temp = None
        if st is None:  # a call from another loop (async_to_sync from a Django view): own client
            temp = make_client(self.hosts[shard], socket_timeout=self.socket_timeout, connect_timeout=self.connect_timeout)
            client = temp
        else:
            client = st.client(shard)
        try:
            result = await fn(client)
        except _FAULTS as exc:
            if health:
                self._shard_down(shard, exc)
            raise LayerUnavailable(f"channel layer: Redis at {self.labels[shard]} is unreachable ({type(exc).__name__}: {exc})") from exc
        finally:
            if temp is not None:
                await _close_client(temp)
        if shard in self._down and health:
            self._shard_up(shard)
        return result

    async def _run(self, shard: int, name: str, keys: list[Any], args: list[Any], health: bool = True) -> Any:
        source = getattr(scripts, name)
        st = self._state_here()
        if st is None:
            return await self._call(shard, lambda c: c.eval(source, len(keys), *keys, *args), health)
        script = st.script(shard, name)
        return await self._call(shard, lambda c: script(keys=keys, args=args), health)

    def _shard_down(self, shard: int, exc: BaseException) -> None:
        if shard in self._down:
            return
        detail = f"Redis at {self.labels[shard]} unreachable: {type(exc).__name__}: {exc}"
        self._down[shard] = detail
        log.warning("layer.redis_unreachable", host=self.labels[shard], error=f"{type(exc).__name__}: {exc}")
        self._set_health("degraded", "; ".join(self._down.values()))

    def _shard_up(self, shard: int) -> None:
        if self._down.pop(shard, None) is None:
            return
        log.info("layer.redis_reconnected", host=self.labels[shard])
        if self._down:
            self._set_health("degraded", "; ".join(self._down.values()))
        else:
            self._set_health("ok", "")

    def _set_health(self, status: str, detail: str) -> None:
        self.health = (status, detail)
        if self.on_health is not None:
            try:
                self.on_health(status, detail)
            except Exception as exc:  # noqa: BLE001 - a broken hook must not break the layer
                log.error("layer.health_hook_failed", error=f"{type(exc).__name__}: {exc}")

    async def _check_epoch(self, st: _LoopState, shard: int, client: Redis) -> None:
        """Notice that a host lost its data (restart without persistence) and re-add memberships."""
        token = secrets.token_hex(8).encode()
        await client.set(self._epoch_key, token, nx=True)
        current = await client.get(self._epoch_key)
        known = self._epochs.get(shard)
        self._epochs[shard] = current
        if known is None or known == current:
            return
        now = _now_ms()
        count = 0
        for (inbox, group), members in list(self._local_groups.items()):
            if self.ring.index(inbox) != shard:
                continue
            args: list[Any] = [inbox, self._gexp_ms]
            for channel, joined in members.items():
                if now - joined < self._gexp_ms:
                    args += [channel, joined]
            if len(args) > 2:
                await client.eval(scripts.READD, 2, self._g + group, self._gp + group, *args)
                count += (len(args) - 2) // 2
        log.warning("layer.memberships_restored", host=self.labels[shard], memberships=count, reason="Redis lost its data")

    # -- receive loops ---------------------------------------------------------------------------

    def _poller(self, st: _LoopState, shard: int, kind: str) -> _Poller:
        poller = st.pollers.get((shard, kind))
        if poller is None:
            poller = st.pollers[(shard, kind)] = _Poller(self, st, shard, kind)
        return poller

    def _inbox_poller(self, st: _LoopState, inbox: str) -> None:
        self._poller(st, self.ring.index(inbox), "inbox").want(self._q + inbox)


class _Poller:
    """One receive loop: one connection, one ``BLMPOP`` over a set of queue keys at a time.

    ``general`` loops pop one message at a time from the normal channels that have receivers
    waiting here (so other processes get the rest); ``inbox`` loops drain this process's inboxes
    in batches. A change of the key set wakes the blocked pop through a wake-up list.
    """

    def __init__(self, layer: RedisChannelLayer, st: _LoopState, shard: int, kind: str) -> None:
        self.layer = layer
        self.st = st
        self.shard = shard
        self.kind = kind
        self.client = make_client(layer.hosts[shard], blocking=True, connect_timeout=layer.connect_timeout)
        self.wake_key = f"{layer.prefix}:w:{layer.client_id}:{kind}"
        self.keys: dict[str, None] = {}  # insertion-ordered set
        self.blocking_on: frozenset[str] = frozenset()
        self.waking = False
        self.stopping = False
        self.blmpop = True
        self.lpop_count = True
        self.task = st.loop.create_task(self.run(), name=f"redis-layer-{kind}-{shard}")

    def want(self, key: str) -> None:
        """Make sure the loop pops from ``key``: wake the blocked pop when it does not cover it."""
        if key not in self.keys:
            self.keys[key] = None
        if key not in self.blocking_on:
            self.wake()

    def wake(self) -> None:
        if self.waking:
            return
        self.waking = True

        async def push() -> None:
            try:
                async with self.st.client(self.shard).pipeline(transaction=False) as pipe:
                    pipe.lpush(self.wake_key, b"1")
                    pipe.pexpire(self.wake_key, 60_000)
                    await pipe.execute()
            except _FAULTS:
                pass  # the loop is reconnecting and recomputes its keys anyway
            finally:
                self.waking = False

        self.st.spawn(push())

    def _current_keys(self) -> list[str]:
        if self.kind == "inbox":
            keys = list(self.keys)
        else:
            q = len(self.layer._q)
            keys = [k for k in self.keys if self.st.general.get(k[q:])]
            for k in [k for k in self.keys if not self.st.general.get(k[q:])]:
                del self.keys[k]
        if len(keys) > 1:  # BLMPOP serves the first non-empty key: rotate for fairness
            shift = random.randrange(len(keys))
            keys = keys[shift:] + keys[:shift]
        return keys

    async def _pop(self, keys: list[str], count: int) -> Any:
        """``(key, [elements])`` from the first non-empty key (wake-up list first), or None."""
        if self.blmpop:
            return await self.client.blmpop(BLOCK_SECONDS, len(keys) + 1, self.wake_key, *keys, direction="LEFT", count=count)
        popped = await self.client.blpop([self.wake_key, *keys], timeout=BLOCK_SECONDS)
        if popped is None:
            return None
        key, element = popped
        elements = [element]
        if count > 1 and self.lpop_count:
            try:
                more = await self.client.lpop(key, count - 1)
            except ResponseError:
                self.lpop_count = False  # before 6.2
            else:
                elements += more or []
        return [key, elements]

    async def run(self) -> None:
        layer, st, shard = self.layer, self.st, self.shard
        backoff = BACKOFF_FIRST
        need_check = True
        count = INBOX_BATCH if self.kind == "inbox" else 1
        while not self.stopping:
            keys = self._current_keys()
            self.blocking_on = frozenset(keys)
            try:
                if need_check:
                    await asyncio.wait_for(layer._check_epoch(st, shard, self.client), layer.socket_timeout + layer.connect_timeout)
                    need_check = False
                    layer._shard_up(shard)
                result = await asyncio.wait_for(self._pop(keys, count), BLOCK_SECONDS + layer.socket_timeout)
            except asyncio.CancelledError:
                raise
            except _FAULTS as exc:
                layer._shard_down(shard, exc)
                need_check = True
                try:
                    await self.client.connection.disconnect()  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001
                    pass
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except ResponseError as exc:
                if self.blmpop and "unknown command" in str(exc).lower():
                    self.blmpop = False  # Redis before 7.0: BLPOP, then LPOP with a count (6.2+)
                    log.warning("layer.redis_without_blmpop", host=layer.labels[shard], fallback="BLPOP")
                    continue
                log.error("layer.receive_failed", host=layer.labels[shard], error=str(exc))
                await asyncio.sleep(BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            if result is None:
                continue
            key = result[0].decode()
            if key == self.wake_key:
                continue
            elements = result[1]
            if self.kind == "inbox":
                layer._deliver_inbox(st, key[len(layer._q) :], elements)
                continue
            channel = key[len(layer._q) :]
            now = _now_ms()
            for element in elements:
                if not layer._deliver_general(st, channel, element, now):
                    await layer._push_back(st, shard, key, element)


def _wake_one(local: _Local) -> None:
    while local.waiters:
        waiter = local.waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _payload(element: bytes) -> bytes:
    return element[element.index(b"\n", 14) + 1 :]


def _pack(message: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a Redis channel layer message must be msgpack-serialisable: {exc}") from None


def _unpack(payload: bytes) -> dict[str, Any]:
    return msgpack.unpackb(payload, raw=False)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"a channel layer message must be a dict, not {type(message).__name__}")


async def _close_client(client: Redis) -> None:
    try:
        await client.aclose(close_connection_pool=True)
    except Exception:  # noqa: BLE001 - closing a broken connection must not raise
        pass


__all__ = ["ChannelFull", "LayerUnavailable", "RedisChannelLayer", "RedisLayerOptions"]
