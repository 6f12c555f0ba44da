"""The Redis channel layer: Channels' layer API shared by every gateway process on one Redis.

Use it from YAML (``layer: {backend: redis, hosts: [redis://redis:6379/0]}``) or from Django
(``CHANNEL_LAYERS = {"default": {"BACKEND": "gateway.layers.redis.RedisChannelLayer",
"CONFIG": {"hosts": [...]}}}``); the config keys are channels_redis's where they mean the same.

This module is the layer (the Channels API, keepers, health); beside it: ``redis_local`` (what
this process buffers for its channels and their groups), ``redis_loop`` (clients, tasks and
waiters of one event loop), ``redis_poller`` (receive loops), ``redis_codec`` (the element
format), ``redis_hosts`` (clients, sharding), ``redis_scripts`` (the Lua side).

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
  (``drops["full"]``), passed to ``on_full``/``on_drop`` and logged at warning
  (``layer.channel_full``, once per incident) where it is detected; never dropped silently.
  An inbox holding ``inbox_limit`` unread elements (a process that stopped reading) makes its
  members full, so a dead process cannot grow Redis.
* **Expiry**: every message carries its deadline; expired messages are dropped where they are
  found (``drops["expired"]``, ``layer.message_expired``), and, as in Channels, a channel of this
  process whose message expired unread leaves its groups (group messages queued before that
  are still delivered: the leave travels through the same ordered inbox).
* **Event loops**: messages buffered for this process's channels belong to the layer; clients,
  receive loops and waiting receivers belong to one event loop, and the loop that calls next
  takes over from one that is closed or idle (sync code runs each call on a new loop).

Faults (docs/layers.md, "Faults", says the same for users): a call that meets an unreachable
Redis raises ``LayerUnavailable`` naming the host; it is made once more on a fresh connection
only when that cannot deliver twice (idempotent calls; ``send``/``group_send`` when Redis lost
its data meanwhile). Receive loops retry with backoff and receivers simply wait. A keeper per
host and event loop heartbeats this process's inboxes (``<prefix>.procs``), removes processes
silent for ``dead_after``, and notices a Redis that lost its data (``<prefix>.epoch`` gone):
every process then re-adds its own memberships, and ``group_send`` waits while any process it
knew alive has not (``<prefix>.restoring``), for ``restore_timeout`` at most. Every dropped
message is counted by reason (``drops``, ``on_drop``), logged once per incident; the layer's
state goes to ``on_health(status, detail)`` (``"ok"``, or ``"down"`` while not ready).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import Field
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import redis_codec as codec
from . import redis_scripts as scripts
from .base import BaseChannelLayer, ChannelFull, FullHook, HealthHook, LayerOptions, LayerUnavailable
from .incidents import DropHook
from .redis_hosts import FAULTS, HashRing, close_client, decode_hosts, host_label, make_client, reset_pool
from .redis_local import Buffered, LocalChannels
from .redis_loop import LoopState
from .redis_poller import Poller, push_wakeups

log = structlog.get_logger("gateway.layers.redis")

UNCOUNT_DELAY = 0.02
RESTORE_POLL = 0.05
"""How often a group_send held by a restore looks again."""
KEEP_SOON = 0.25
"""How soon a process visits a host again after a failed visit, or while others restore."""

class RedisLayerOptions(LayerOptions):
    """`layer: {backend: redis, ...}`: the Redis channel layer (keys as in channels_redis where they mean the same)."""

    hosts: list[str | tuple[str, int] | dict[str, Any]] = Field(
        default_factory=list,
        description="Redis hosts: URLs (`redis://[user:password@]host:6379/0`, `rediss://` for TLS), "
        "`[host, port]`, or mappings (`{address: URL, ...}`, or `{sentinels: [[host, port]], master_name: ...}` "
        "for Sentinel). Several hosts are sharded by consistent hashing. Default `redis://127.0.0.1:6379/0`.",
    )
    url: str | None = Field(None, description="Shorthand for one host: `url: redis://redis:6379/0` is `hosts: [redis://redis:6379/0]`.")
    prefix: str = Field(
        "asgi", min_length=1, description="Prefix of every Redis key the layer writes; layers with different prefixes never meet.",
    )
    inbox_limit: int = Field(
        1000, ge=1,
        description="Unread elements (group messages and membership notices) a process's inbox holds before group_send counts its "
        "members as full (bounds memory for a process that stopped reading).",
    )
    dead_after: float = Field(
        30, gt=0,
        description="Seconds without a heartbeat after which a process counts as dead: a live process then removes its group memberships "
        "and its inbox (the messages queued there are counted as dropped, reason dead_member). Processes heartbeat every dead_after/6 "
        "while their event loop runs.",
    )
    restore_timeout: float = Field(
        5, gt=0,
        description="After Redis lost its data (a restart without persistence), the longest group_send waits for the processes to re-add "
        "their memberships before it raises LayerUnavailable (counted as dropped, reason restore_window); also how long the list of "
        "processes still restoring lasts when this process writes it.",
    )
    socket_timeout: float = Field(5, gt=0, description="Seconds to wait for Redis to answer a command before it fails.")
    connect_timeout: float = Field(2, gt=0, description="Seconds to wait for a connection to Redis.")


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
        dead_after: float = 30,
        restore_timeout: float = 5,
        socket_timeout: float = 5,
        connect_timeout: float = 2,
        on_full: FullHook | None = None,
        on_health: HealthHook | None = None,
        on_drop: DropHook | None = None,
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
            on_full=on_full, on_health=on_health, on_drop=on_drop,
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
        self.dead_after = dead_after
        self.restore_timeout = restore_timeout
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.client_id = secrets.token_hex(6)
        self._own = f".{self.client_id}!"
        self._ttl_ms = max(int(expiry * 1000), 1)
        self._gexp_ms = max(int(group_expiry * 1000), 1)
        self._dead_ms = max(int(dead_after * 1000), 1)
        self._restore_ms = max(int(restore_timeout * 1000), 1)
        self._beat = dead_after / 6
        self._p = f"{prefix}:"
        self._q = f"{prefix}:q:"
        self._n = f"{prefix}:n:"
        self._g = f"{prefix}:g:"
        self._gp = f"{prefix}:gp:"
        self._gn = f"{prefix}:gn:"
        self._ig = f"{prefix}:ig:"
        self._epoch_key = f"{prefix}.epoch"
        self._restoring_key = f"{prefix}.restoring"
        self._procs_key = f"{prefix}.procs"
        self._lua_caps: list[Any] = []
        for pattern, cap in (channel_capacity or {}).items():
            self._lua_caps += [scripts.glob_to_lua(pattern), cap]
        self._inboxes: set[str] = set()
        self._local = LocalChannels()
        self._leaving: set[str] = set()
        self._down: dict[int, str] = {}
        self._restoring: dict[int, str] = {}
        self._epochs: dict[int, bytes] = {}  # per host: the epoch this process's memberships were last written under
        self._seen: dict[int, bytes] = {}  # per host: the epoch any reply last carried
        self._peers: dict[int, list[str]] = {}  # per host: other processes' inboxes seen alive
        self._beaten: dict[int, set[str]] = {}  # per host: own inboxes heartbeated under the current epoch
        self._state: LoopState | None = None

    def __str__(self) -> str:
        return f"{type(self).__name__}(hosts={self.labels}, prefix={self.prefix!r})"

    # -- Channel API -----------------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` on ``channel``; ``ChannelFull`` at capacity, ``LayerUnavailable`` if Redis is unreachable."""
        codec.check_message(message)
        self.valid_channel_name(channel)
        payload = codec.pack(message)
        now = codec.now_ms()
        capacity = self.get_capacity(channel)
        if "!" in channel:
            inbox = self.non_local_name(channel)
            st = self._state_here()
            if inbox in self._inboxes and st is not None:
                self._maybe_sweep(st, now)
                buffer = self._local.buffer(channel)
                self._purge_local(st, channel, buffer, now)
                if len(buffer) >= capacity:
                    raise ChannelFull(channel)
                buffer.append((now + self._ttl_ms, payload, None))
                self._wake(channel)
                return
            shard = self.ring.index(inbox)
            element = codec.element(now + self._ttl_ms, b"c", channel, payload)
            keys = [self._q + inbox, self._n + inbox, self._epoch_key]
            args = [now, self._ttl_ms, capacity, element, channel]
        else:
            shard = self.ring.index(channel)
            element = codec.element(now + self._ttl_ms, b"n", "", payload)
            keys = [self._q + channel, self._n + channel, self._epoch_key]
            args = [now, self._ttl_ms, capacity, element, ""]
        ok, purged, epoch = await self._run(shard, "SEND", keys, args)
        if epoch:
            self._seen[shard] = epoch
        if purged:
            self._expired(channel, purged)
        if not ok:
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for, remove and return the oldest unexpired message on ``channel``.

        Several receivers of a normal channel, in this process or others, are each given a
        different message. A process-specific channel is received only by the layer whose
        ``new_channel`` made it; any other name with a ``!`` is refused at once.
        """
        self.valid_channel_name(channel)
        if "!" in channel and not self.non_local_name(channel).endswith(self._own):
            raise ValueError(
                f"{channel!r} was not made by this layer's new_channel() (another process, another layer instance, "
                "or by hand); a process-specific channel is received only where new_channel() created it"
            )
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
        now = codec.now_ms()
        if "!" not in channel:
            key = self._gn + group

            async def call(client: Redis) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zadd(key, {channel: now})
                    pipe.pexpire(key, self._gexp_ms)
                    await pipe.execute()

            await self._call(self.ring.index(channel), call, retry=True)
            return
        inbox = self.non_local_name(channel)
        mine = inbox in self._inboxes
        before = (self._local.members(inbox, group) or {}).get(channel)
        if mine:  # before Redis: a group_send racing with this add must already find it here
            self._local.remember(inbox, group, channel, now)
        element = codec.element(now + self._ttl_ms, b"a", group, f"{channel},{now}".encode())
        try:
            await self._run(
                self.ring.index(inbox), "GROUP_ADD",
                [self._g + group, self._gp + group, self._q + inbox, self._ig + inbox, self._procs_key],
                [channel, now, self._gexp_ms, self._ttl_ms, inbox, element, group], retry=True,
            )
            if mine:
                # GROUP_ADD heartbeats the inbox: should this process be taken for dead before its
                # keeper's first visit (sync code whose loop ends at once), that visit must see it
                # as revived and restore its memberships, not as a new inbox.
                self._beaten.setdefault(self.ring.index(inbox), set()).add(inbox)
        except BaseException:
            if mine:
                if before is None:
                    self._local.forget(inbox, group, channel)
                else:
                    self._local.remember(inbox, group, channel, before)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op when it is not a member.

        The owning process forgets the membership when the notice reaches it through its inbox,
        after every group message queued before the discard: those are still delivered, as in
        channels_redis.
        """
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        if "!" not in channel:
            await self._call(self.ring.index(channel), lambda c: c.zrem(self._gn + group, channel), retry=True)
            return
        inbox = self.non_local_name(channel)
        element = codec.element(codec.now_ms() + self._ttl_ms, b"d", group, channel.encode())
        await self._run(
            self.ring.index(inbox), "GROUP_DISCARD", [self._g + group, self._gp + group, self._q + inbox, self._ig + inbox],
            [channel, inbox, element, self._ttl_ms, group], retry=True,
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for every current member: one script call per Redis host.

        The script pushes one element per member process (expanded there) and one per
        normal-channel member. A member whose channel is full is skipped (Channels' rule),
        counted and logged. While the processes re-add their memberships after Redis lost its
        data, this waits (up to ``restore_timeout``), then raises ``LayerUnavailable``.
        """
        codec.check_message(message)
        self.valid_group_name(group)
        payload = codec.pack(message)
        now = codec.now_ms()
        expires = now + self._ttl_ms
        args = [
            now, self._gexp_ms, self._ttl_ms, codec.element(expires, b"g", group, payload), codec.element(expires, b"n", "", payload),
            self._q, self.inbox_limit, self.capacity, group, self._ig, self._dead_ms, *self._lua_caps,
        ]
        keys = [self._g + group, self._gp + group, self._gn + group, self._epoch_key, self._restoring_key, self._procs_key]
        if self.ring.size == 1:
            await self._group_send_shard(0, group, keys, args)
        else:
            await asyncio.gather(*(self._group_send_shard(i, group, keys, args) for i in range(self.ring.size)))

    async def _group_send_shard(self, shard: int, group: str, keys: list[str], args: list[Any]) -> None:
        deadline: float | None = None
        while True:
            reply = await self._run(shard, "GROUP_SEND", keys, args)
            status = reply[0]
            if status == b"ok":
                self._seen[shard] = reply[1]
                for i in range(2, len(reply), 2):
                    self._missed(reply[i].decode(), reply[i + 1], group)
                return
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.restore_timeout
            if status == b"noepoch" and await self._keep_now(shard):
                continue  # this process met the host anew: it claims it (and restores, if it must)
            if now >= deadline:
                if status == b"noepoch":
                    await self._claim_fresh_host(shard)
                    continue
                self._drop(
                    "restore_window", 1, "layer.restore_window", shard, host=self.labels[shard], group=group,
                    reason="group memberships were still being restored after Redis lost its data",
                )
                raise LayerUnavailable(
                    f"channel layer: Redis at {self.labels[shard]} lost its data and the group memberships were not all restored "
                    f"within {self.restore_timeout}s; group_send to {group!r} was not queued there"
                )
            await asyncio.sleep(RESTORE_POLL)

    def _missed(self, name: str, why: bytes, group: str) -> None:
        if why == b"c":
            self._count_full(name, group)
        elif why == b"i":
            self._count_full(name, group, inbox_limit=self.inbox_limit, reason="inbox full: its process is not reading")
        else:
            self._drop(
                "dead_member", 1, "layer.dead_member", name, inbox=name, group=group,
                reason=f"its process has not heartbeated for {self.dead_after}s",
            )

    async def _claim_fresh_host(self, shard: int) -> None:
        """No process with channels claimed a host that has no epoch: take it for a new, empty Redis."""
        await self._call(shard, lambda c: c.set(self._epoch_key, secrets.token_hex(8), nx=True), retry=True)
        log.warning(
            "layer.epoch_created", host=self.labels[shard],
            reason=f"no process with channels met this Redis within restore_timeout ({self.restore_timeout}s); taken for a new one",
        )

    # -- Flush extension and lifecycle -----------------------------------------------------------

    async def probe(self) -> None:
        """PING every host: a host found down, or back, changes ``health`` as any call would."""
        await asyncio.gather(*(self._call(shard, lambda c: c.ping(), retry=True) for shard in range(self.ring.size)))

    async def flush(self) -> None:
        """Delete every key under the prefix on every host, and every locally buffered message.

        Other processes drop their buffered messages and membership caches when they read the
        flush mark left in their inbox.
        """
        args = [f"{self.prefix}:*", self._q, codec.element(codec.now_ms() + self._ttl_ms, b"f"), self._ttl_ms, self._gp]
        await asyncio.gather(*(self._run(i, "FLUSH", [], args, retry=True) for i in range(self.ring.size)))
        self._local.clear()
        st = self._state
        if st is not None:
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
            await st.close()

    # -- receiving -------------------------------------------------------------------------------

    async def _receive_local(self, st: LoopState, channel: str) -> dict[str, Any]:
        self._inboxes.add(self.non_local_name(channel))
        self._inbox_poller(st, self.non_local_name(channel))
        while True:
            now = codec.now_ms()
            self._maybe_sweep(st, now)
            buffer = self._local.get(channel)
            if buffer:
                self._purge_local(st, channel, buffer, now)
            if buffer:
                _, payload, counted = buffer.popleft()
                self._forget_if_idle(st, channel)
                if counted is not None:
                    self._give_back(st, counted, channel)
                return codec.unpack(payload)
            waiter: asyncio.Future[None] = st.loop.create_future()
            waiters = st.waiters.setdefault(channel, deque())
            waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
                if waiter.done() and not waiter.cancelled() and self._local.get(channel):
                    self._wake(channel)  # it was woken for a message: pass the turn on
                self._forget_if_idle(st, channel)
                raise

    async def _receive_general(self, st: LoopState, channel: str) -> dict[str, Any]:
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
        return codec.unpack(codec.payload(element))

    async def _push_back(self, st: LoopState, shard: int, key: str, element: bytes) -> None:
        try:
            await st.client(shard).lpush(key, element)
        except FAULTS as exc:
            log.warning("layer.message_lost", key=key, reason=f"could not requeue after a cancelled receive: {exc}")

    def _deliver_general(self, st: LoopState, channel: str, element: bytes, now: int) -> bool:
        """Hand a popped element to a waiting receiver; False when none waits (caller requeues)."""
        if codec.expiry(element) <= now:
            self._expired(channel, 1)
            return True
        for waiter in st.general.get(channel, ()):
            if not waiter.done():
                waiter.set_result(element)
                return True
        return False

    def _deliver_inbox(self, st: LoopState, inbox: str, elements: list[bytes]) -> None:
        now = codec.now_ms()
        for element in elements:
            expires, kind, name, body = codec.parse(element)
            if kind == b"g":
                members = self._local.members(inbox, name)
                if not members:
                    continue  # no channel of this process is in the group (any more): nobody to deliver to
                if expires <= now:
                    self._expired(f"group:{name}", len(members))
                    continue
                for channel, joined in list(members.items()):
                    if now - joined >= self._gexp_ms:
                        self._local.forget(inbox, name, channel)
                        continue
                    buffer = self._local.buffer(channel)
                    self._purge_local(st, channel, buffer, now)
                    if len(buffer) >= self.get_capacity(channel):
                        self._count_full(channel, name)
                        self._forget_if_idle(st, channel)
                        continue
                    buffer.append((expires, body, None))
                    self._wake(channel)
            elif kind == b"c":
                if expires <= now:
                    self._give_back(st, inbox, name)
                    self._expired(name, 1)
                    self._leave_groups(st, name)
                    continue
                self._local.buffer(name).append((expires, body, inbox))
                self._wake(name)
            elif kind == b"a":
                channel, _, since = body.decode().rpartition(",")
                self._local.remember(inbox, name, channel, int(since))
            elif kind == b"d":
                self._local.forget(inbox, name, body.decode())
            elif kind == b"f":
                for channel in self._local.flush_inbox(inbox):
                    self._forget_if_idle(st, channel)

    # -- the groups of this process's channels ---------------------------------------------------

    def _leave_groups(self, st: LoopState, channel: str) -> None:
        """As in Channels: a channel whose message expired unread leaves its groups."""
        inbox = self.non_local_name(channel)
        groups = self._local.groups_of(inbox, channel)
        if not groups or channel in self._leaving:
            return
        self._leaving.add(channel)
        log.warning("layer.channel_left_groups", channel=channel, groups=groups, reason="message expired unread")

        async def leave() -> None:
            try:
                for group in groups:
                    await self.group_discard(group, channel)
            except LayerUnavailable:
                pass  # still a member: its next expired message tries again
            finally:
                self._leaving.discard(channel)

        st.spawn(leave())

    # -- local buffers -----------------------------------------------------------------------------

    def _wake(self, channel: str) -> None:
        """Wake one receiver waiting on ``channel`` in the loop that receives now (any thread)."""
        st = self._state
        if st is None or not st.waiters.get(channel):
            return
        if st.here():
            st.wake_one(channel)
            return
        try:
            st.loop.call_soon_threadsafe(self._wake, channel)
        except RuntimeError:
            pass  # that loop is closed: its receivers are gone

    def _purge_local(self, st: LoopState, channel: str, buffer: deque[Buffered], now: int) -> None:
        removed = self._local.expire(buffer, now)
        if removed:
            for counted in removed:
                if counted is not None:
                    self._give_back(st, counted, channel)
            self._expired(channel, len(removed))
            self._leave_groups(st, channel)

    def _forget_if_idle(self, st: LoopState, channel: str) -> None:
        if st.idle(channel):
            self._local.drop_if_empty(channel)

    def _maybe_sweep(self, st: LoopState, now: int) -> None:
        """Expire every local buffer at most once per expiry period (channels nobody reads again)."""
        if now < st.next_sweep:
            return
        st.next_sweep = now + self._ttl_ms
        for channel, buffer in self._local.channels():
            self._purge_local(st, channel, buffer, now)
            self._forget_if_idle(st, channel)

    def _give_back(self, st: LoopState, inbox: str, channel: str) -> None:
        """A counted message left the inbox's channel: lower its count in Redis (batched)."""
        shard = self.ring.index(inbox)
        st.uncount.setdefault(shard, {}).setdefault(inbox, Counter())[channel] += 1
        if st.uncount_task is None or st.uncount_task.done():
            st.uncount_task = st.spawn(self._flush_uncount(st))

    async def _flush_uncount(self, st: LoopState) -> None:
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

    # -- accounting ------------------------------------------------------------------------------

    def _expired(self, channel: str, count: int) -> None:
        self._drop("expired", count, "layer.message_expired", channel, channel=channel, count=count)

    # -- event loops -------------------------------------------------------------------------------

    def _state_here(self) -> LoopState | None:
        """The state of the running loop, or None when this call runs on another live loop.

        A loop that is closed or not running any more (the last ``async_to_sync`` call's, an idle
        ``asyncio.Runner``'s) hands over to the running one; its receive loops stop popping.
        """
        loop = asyncio.get_running_loop()
        st = self._state
        if st is not None and st.loop is loop:
            return st
        if st is None or st.loop.is_closed() or not st.loop.is_running():
            new = self._state = LoopState(loop, self.hosts, self.socket_timeout, self.connect_timeout)
            self._close_with_loop(new)
            if st is not None and not st.loop.is_closed():
                for (shard, _), poller in st.pollers.items():
                    poller.stopping = True  # ...and its pops in flight, if any, are answered by this wake-up
                    new.spawn(push_wakeups(new.client(shard), poller.wake_key, poller.depth))
            return new
        return None

    def _close_with_loop(self, st: LoopState) -> None:
        """Close ``st``'s connections when its loop closes (asyncio.run, async_to_sync), as
        channels_redis does: sync Django code makes a loop per call and would leak otherwise."""
        loop = st.loop
        original = loop.close

        def close() -> None:
            if self._state is st:
                self._state = None
            try:
                if not loop.is_closed() and not loop.is_running():
                    loop.run_until_complete(st.close())
            except Exception:  # noqa: BLE001 - closing must not stop the loop from closing
                pass
            finally:
                try:
                    del loop.close
                except AttributeError:
                    pass
            original()

        try:
            loop.close = close  # type: ignore[method-assign]
        except (AttributeError, TypeError):  # e.g. uvloop: attributes cannot be set
            pass

    def _receive_state(self) -> LoopState:
        st = self._state_here()
        if st is None:
            raise RuntimeError("two event loops are receiving on one RedisChannelLayer at once; receive on one loop only")
        return st

    # -- connections, scripts, health --------------------------------------------------------------

    async def _call(self, shard: int, fn: Callable[[Redis], Any], *, retry: bool = False, health: bool = True) -> Any:
        """Run ``fn(client)`` against ``shard``; connection faults become ``LayerUnavailable``.

        A fault drops every pooled connection to the host (after a restart they are all dead) and
        the call is made once more on a fresh one when that cannot deliver twice: ``retry`` (the
        call is idempotent), or Redis lost its data meanwhile (whatever the first attempt did is
        gone with it).
        """
        st = self._state_here()
        temp = None
        if st is None:  # a call from another loop (async_to_sync from a Django view): own client
            temp = make_client(self.hosts[shard], socket_timeout=self.socket_timeout, connect_timeout=self.connect_timeout)
        client = temp or st.client(shard)  # type: ignore[union-attr]
        try:
            try:
                result = await fn(client)
            except FAULTS as first:
                await reset_pool(client)
                if not (retry or await self._lost_data(shard, client)):
                    raise self._unavailable(shard, first, health) from first
                try:
                    result = await fn(client)
                except FAULTS as exc:
                    await reset_pool(client)
                    raise self._unavailable(shard, exc, health) from exc
        finally:
            if temp is not None:
                await close_client(temp)
        if shard in self._down and health:
            self._shard_up(shard)
        return result

    async def _lost_data(self, shard: int, client: Redis) -> bool:
        seen = self._seen.get(shard)
        if seen is None:
            return False
        try:
            return await client.get(self._epoch_key) != seen
        except FAULTS:
            return False

    def _unavailable(self, shard: int, exc: BaseException, health: bool) -> LayerUnavailable:
        if health:
            self._shard_down(shard, exc)
        return LayerUnavailable(f"channel layer: Redis at {self.labels[shard]} is unreachable ({type(exc).__name__}: {exc})")

    async def _run(self, shard: int, name: str, keys: list[Any], args: list[Any], *, retry: bool = False, health: bool = True) -> Any:
        source = getattr(scripts, name)
        st = self._state_here()
        if st is None:
            return await self._call(shard, lambda c: c.eval(source, len(keys), *keys, *args), retry=retry, health=health)
        script = st.script(shard, name)
        return await self._call(shard, lambda c: script(keys=keys, args=args), retry=retry, health=health)

    def _shard_down(self, shard: int, exc: BaseException) -> None:
        if shard in self._down:
            return
        self._down[shard] = f"Redis at {self.labels[shard]} unreachable: {type(exc).__name__}: {exc}"
        log.warning("layer.redis_unreachable", host=self.labels[shard], error=f"{type(exc).__name__}: {exc}")
        self._health_changed()

    def _shard_up(self, shard: int) -> None:
        if self._down.pop(shard, None) is None:
            return
        log.info("layer.redis_reconnected", host=self.labels[shard])
        st = self._state
        if st is not None and shard in st.keepers:  # not ready until it knows whether Redis lost its data
            self._restoring.setdefault(shard, f"Redis at {self.labels[shard]}: checking whether it lost its data")
            st.kick(shard)
        self._health_changed()

    def _health_changed(self) -> None:
        problems = [*self._down.values(), *self._restoring.values()]
        status = ("down", "; ".join(problems)) if problems else ("ok", "")
        if status != self.health:
            self._set_health(*status)

    def _set_health(self, status: str, detail: str) -> None:
        self.health = (status, detail)
        if self.on_health is not None:
            try:
                self.on_health(status, detail)
            except Exception as exc:
                log.error("layer.health_hook_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    # -- keepers: epoch, heartbeat, dead processes, restore -----------------------------------

    async def _keeper(self, st: LoopState, shard: int) -> None:
        """Visit the host every dead_after/6: heartbeat, remove dead processes, notice lost data."""
        kick = st.kicks[shard]
        me = asyncio.current_task()
        assert me is not None
        while self._state is st:
            try:
                soon = await self._keep(st, shard)
            except LayerUnavailable:
                soon = True
            except ResponseError as exc:
                log.error("layer.keep_failed", host=self.labels[shard], error=str(exc))
                soon = False
            if me.cancelling():  # a library may turn a cancel into an error: stop all the same
                return
            try:
                async with asyncio.timeout(KEEP_SOON if soon else self._beat):
                    await kick.wait()
            except TimeoutError:
                pass
            kick.clear()

    async def _keep_now(self, shard: int) -> bool:
        """Visit ``shard`` now if this process keeps it (has channels there); False when it does not."""
        st = self._state_here()
        if st is None or shard not in st.keepers:
            return False
        await self._keep(st, shard)
        return True

    async def _keep(self, st: LoopState, shard: int) -> bool:
        """One visit; True when the next one should come soon (others are still restoring)."""
        own = sorted(box for box in self._inboxes if self.ring.index(box) == shard)
        known = self._epochs.get(shard)
        args = [
            secrets.token_hex(8), known or b"", codec.now_ms(), self._dead_ms, self._restore_ms, self._p, len(own), *own,
            *self._peers.get(shard, ()),
        ]
        reply = await self._run(shard, "KEEP", [self._epoch_key, self._restoring_key, self._procs_key], args, retry=True)
        epoch, added, alive, pending = reply[0], [b.decode() for b in reply[1]], reply[2], reply[3]
        self._peers[shard] = [box for box in (b.decode() for b in alive) if box not in own]
        if known is not None and epoch != known:
            await self._restore(shard, own, "Redis lost its data")
            pending = await self._call(shard, lambda c: c.hlen(self._restoring_key), retry=True)
        else:
            revived = [box for box in added if box in self._beaten.get(shard, ())]
            if revived:
                await self._restore(shard, revived, f"this process was taken for dead (no heartbeat for {self.dead_after}s)")
        self._epochs[shard] = self._seen[shard] = epoch
        self._beaten[shard] = set(own)
        for i in range(4, len(reply), 3):
            self._reaped(shard, reply[i].decode(), reply[i + 1], reply[i + 2])
        if pending:
            self._restoring[shard] = f"Redis at {self.labels[shard]} lost its data: {pending} process(es) still re-adding memberships"
        else:
            self._restoring.pop(shard, None)
        self._health_changed()
        return bool(pending)

    async def _restore(self, shard: int, boxes: list[str], reason: str) -> None:
        """Re-add the memberships of this process's ``boxes`` on ``shard``, with their join times."""
        self._restoring[shard] = f"Redis at {self.labels[shard]}: re-adding group memberships ({reason})"
        self._health_changed()
        now = codec.now_ms()
        count = 0

        async def call(client: Redis) -> None:
            nonlocal count
            count = 0
            async with client.pipeline(transaction=False) as pipe:
                for inbox, group, members in self._local.memberships(boxes):
                    args: list[Any] = [inbox, self._gexp_ms, group]
                    for channel, joined in members.items():
                        if now - joined < self._gexp_ms:
                            args += [channel, joined]
                    if len(args) > 3:
                        pipe.eval(scripts.READD, 3, self._g + group, self._gp + group, self._ig + inbox, *args)
                        count += (len(args) - 3) // 2
                if boxes:
                    pipe.hdel(self._restoring_key, *boxes)
                await pipe.execute()

        await self._call(shard, call, retry=True)
        log.warning("layer.memberships_restored", host=self.labels[shard], memberships=count, reason=reason)

    def _reaped(self, shard: int, inbox: str, memberships: int, dropped: int) -> None:
        log.warning(
            "layer.dead_process_removed", host=self.labels[shard], inbox=inbox, memberships=memberships, dropped=dropped,
            reason=f"no heartbeat for {self.dead_after}s",
        )
        if dropped:
            self._count_drops("dead_member", dropped)

    # -- receive loops ---------------------------------------------------------------------------

    def _poller(self, st: LoopState, shard: int, kind: str) -> Poller:
        def make() -> Poller:
            wake_key = f"{self.prefix}:w:{self.client_id}:{kind}:{secrets.token_hex(4)}"
            return Poller(_Target(self, st, shard), kind, wake_key)

        return st.poller(shard, kind, make)

    def _inbox_poller(self, st: LoopState, inbox: str) -> None:
        shard = self.ring.index(inbox)
        self._poller(st, shard, "inbox").want(self._q + inbox)
        if shard not in st.keepers:
            st.kicks[shard] = asyncio.Event()
            st.keepers[shard] = st.loop.create_task(self._keeper(st, shard), name=f"redis-layer-keeper-{shard}")
        elif inbox not in self._beaten.get(shard, ()):
            st.kicks[shard].set()  # heartbeat the new inbox now


class _Target:
    """A receive loop's view of the layer: one host, one event loop (``redis_poller.PollTarget``)."""

    def __init__(self, layer: RedisChannelLayer, st: LoopState, shard: int) -> None:
        self.layer = layer
        self.st = st
        self.shard = shard
        self.host = layer.hosts[shard]
        self.label = layer.labels[shard]
        self.queue_prefix = layer._q
        self.socket_timeout = layer.socket_timeout
        self.connect_timeout = layer.connect_timeout
        self.loop = st.loop

    def current(self) -> bool:
        return self.layer._state is self.st

    def waited_on(self, channel: str) -> bool:
        return bool(self.st.general.get(channel))

    def command_client(self) -> Redis:
        return self.st.client(self.shard)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self.st.spawn(coro)

    def inbox(self, inbox: str, elements: list[bytes]) -> None:
        self.layer._deliver_inbox(self.st, inbox, elements)

    async def normal(self, key: str, channel: str, elements: list[bytes]) -> None:
        now = codec.now_ms()
        for element in elements:
            if not self.layer._deliver_general(self.st, channel, element, now):
                await self.layer._push_back(self.st, self.shard, key, element)

    def down(self, exc: BaseException) -> None:
        self.layer._shard_down(self.shard, exc)

    def up(self) -> None:
        self.layer._shard_up(self.shard)


__all__ = ["ChannelFull", "LayerUnavailable", "RedisChannelLayer", "RedisLayerOptions"]
