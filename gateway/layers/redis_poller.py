"""The Redis layer's receive loops: ``BLMPOP`` on connections of their own, answers handed on.

A receive loop knows Redis and nothing of channels or groups: it pops from the keys it is told
to want and hands what it gets to its ``PollTarget`` (the layer, for one host and one event loop).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .redis_hosts import FAULTS, close_client, make_client, reset_pool

log = structlog.get_logger("gateway.layers.redis")

BLOCK_SECONDS = 2.0
"""Longest a receive loop blocks in one ``BLMPOP`` (bounds how long a dead socket goes unnoticed)."""
INBOX_BATCH = 512
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0


class PollTarget(Protocol):
    """What a receive loop needs from its layer, for one Redis host and one event loop."""

    host: dict[str, Any]
    """The host's client options (``redis_hosts.decode_hosts``)."""
    label: str
    queue_prefix: str
    """Key prefix of every queue (``<prefix>:q:``): what follows it is the channel or inbox name."""
    socket_timeout: float
    connect_timeout: float
    loop: asyncio.AbstractEventLoop

    def current(self) -> bool:
        """Whether the layer still receives on this event loop (else the loop stops)."""

    def waited_on(self, channel: str) -> bool:
        """Whether a receiver of this normal channel waits here (else its key is dropped)."""

    def command_client(self) -> Redis:
        """The client for ordinary commands (wake-ups); its pool is reset after a fault."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def inbox(self, inbox: str, elements: list[bytes]) -> None:
        """Elements popped from one of this process's inboxes, in order."""

    async def normal(self, key: str, channel: str, elements: list[bytes]) -> None:
        """Elements popped from a normal channel's queue ``key`` (given back if nobody waits any more)."""

    def down(self, exc: BaseException) -> None:
        """The host failed (once per fault, before the loop backs off)."""

    def up(self) -> None:
        """The host answers again."""


class Poller:
    """One receive loop: ``BLMPOP`` over a set of queue keys, on a connection of its own.

    ``general`` loops pop one message at a time from the normal channels that have receivers
    waiting here (so other processes get the rest). ``inbox`` loops drain this process's inboxes
    in batches, and keep a second pop queued behind the one waiting in Redis: Redis runs it the
    moment the first is answered, so a message leaves Redis as soon as it arrives instead of
    sitting there (where a Redis crash would lose it) until this busy event loop gets round to
    asking again. Both pops travel on one connection, so the inbox is read in order. A change
    of the key set wakes the blocked pops through a wake-up list of the loop's own.

    A pop in flight holds messages Redis has already removed, so it is never abandoned: when
    the loop is cancelled (its event loop is closing), it wakes its pops, takes what they
    return into the layer's buffers, and only then ends.
    """

    def __init__(self, target: PollTarget, kind: str, wake_key: str) -> None:
        self.target = target
        self.kind = kind
        self.depth = 2 if kind == "inbox" else 1
        self.client = self._new_client()
        self.connection: Any = None
        self.reads: deque[asyncio.Future[Any]] = deque()  # answers of the pops in flight, oldest first
        self.unanswered: deque[asyncio.Future[Any]] = deque()  # the part of ``reads`` not read yet
        self.reader: asyncio.Task[None] | None = None
        self.wake_key = wake_key
        self.keys: dict[str, None] = {}  # insertion-ordered set
        self.blocking_on: frozenset[str] = frozenset()
        self.waking = False
        self.stopping = False
        self.blmpop = True
        self.task = target.loop.create_task(self.run(), name=f"redis-layer-{kind}-{target.label}")

    def _new_client(self) -> Redis:
        return make_client(self.target.host, blocking=True, connect_timeout=self.target.connect_timeout)

    def want(self, key: str) -> None:
        """Make sure the loop pops from ``key``: wake the blocked pops when they do not all cover it."""
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
                await push_wakeups(self.target.command_client(), self.wake_key, self.depth)
            finally:
                self.waking = False

        self.target.spawn(push())

    def _current_keys(self) -> list[str]:
        if self.kind == "inbox":
            keys = list(self.keys)
        else:
            q = len(self.target.queue_prefix)
            keys = [k for k in self.keys if self.target.waited_on(k[q:])]
            for k in [k for k in self.keys if not self.target.waited_on(k[q:])]:
                del self.keys[k]
        if len(keys) > 1:  # BLMPOP serves the first non-empty key: rotate for fairness
            shift = random.randrange(len(keys))
            keys = keys[shift:] + keys[:shift]
        return keys

    async def _connect(self) -> Any:
        if self.connection is None:
            self.connection = await self.client.connection_pool.get_connection()
        return self.connection

    async def _send_pops(self, count: int) -> None:
        """Send pops until ``depth`` are in flight. Their answers are read, in order, by a task of
        its own, so that cancelling this loop never cuts a read short (that drops the connection)."""
        conn = await self._connect()
        depth = self.depth if self.blmpop else 1
        covered: set[str] | None = None
        while len(self.reads) < depth:
            keys = self._current_keys()
            if self.blmpop:
                await conn.send_command("BLMPOP", BLOCK_SECONDS, len(keys) + 1, self.wake_key, *keys, "LEFT", "COUNT", count)
            else:  # Redis before 7.0
                await conn.send_command("BLPOP", self.wake_key, *keys, BLOCK_SECONDS)
            answer: asyncio.Future[Any] = self.target.loop.create_future()
            self.reads.append(answer)
            self.unanswered.append(answer)
            covered = set(keys) if covered is None else covered & set(keys)
        if covered is not None:
            self.blocking_on = frozenset(covered)
        if self.reader is None or self.reader.done():
            self.reader = self.target.loop.create_task(self._read_answers(conn))

    async def _read_answers(self, conn: Any) -> None:
        while self.unanswered:
            try:
                reply = await conn.read_response(timeout=BLOCK_SECONDS + self.target.socket_timeout)
            except asyncio.CancelledError:  # the event loop is closing and cancels every task
                for answer in self.unanswered:
                    answer.cancel()
                self.unanswered.clear()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which reconnects
                for answer in self.unanswered:
                    if not answer.done():
                        answer.set_exception(exc)
                self.unanswered.clear()
                return
            answer = self.unanswered.popleft()
            if not answer.done():
                answer.set_result(reply)

    async def _next(self, count: int) -> Any:
        """The oldest pop's answer as ``(key, [elements])`` or None; pops in flight are finished if this task is cancelled."""
        read = self.reads[0]
        try:
            await asyncio.wait((read,))
        except asyncio.CancelledError:
            await self._finish()
            raise
        self.reads.popleft()
        result = read.result()
        if result is None or self.blmpop:
            return result
        key, element = result  # BLPOP: one element; take the rest of a batch with LPOP (6.2+)
        elements = [element]
        if count > 1:
            await self.connection.send_command("LPOP", key, count - 1)
            try:
                more = await self.connection.read_response(timeout=self.target.socket_timeout)
            except ResponseError:
                more = None  # before 6.2: one at a time
            elements += more or []
        return [key, elements]

    async def _finish(self) -> None:
        self.stopping = True
        if any(not read.done() for read in self.reads):
            try:
                async with asyncio.timeout(self.target.socket_timeout):
                    await push_wakeups(self.target.command_client(), self.wake_key, len(self.reads))
                    await asyncio.wait(self.reads)
            except TimeoutError:
                pass
        while self.reads:
            read = self.reads.popleft()
            if read.done() and not read.cancelled() and read.exception() is None:
                await self._take(read.result())
            else:
                read.cancel()

    async def _reconnect(self) -> None:
        """Drop the connection and the pops on it, and make a new client: a Sentinel client
        must ask the sentinels for the master again, not reconnect to the old address."""
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        for read in self.reads:
            read.cancel()
        self.reads.clear()
        self.unanswered.clear()
        self.connection = None
        await close_client(self.client)
        self.client = self._new_client()

    async def _take(self, result: Any) -> None:
        """Hand what one pop returned to the layer."""
        if result is None:
            return
        key = result[0].decode()
        if key == self.wake_key:
            return
        name = key[len(self.target.queue_prefix) :]
        if self.kind == "inbox":
            self.target.inbox(name, result[1])
        else:
            await self.target.normal(key, name, result[1])

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        if self.connection is not None:
            await self.connection.disconnect()
        await close_client(self.client)

    async def run(self) -> None:
        target = self.target
        backoff = BACKOFF_FIRST
        failed = False
        broken = False  # an unexpected error was logged; cleared by the next message handed out
        count = INBOX_BATCH if self.kind == "inbox" else 1
        me = asyncio.current_task()
        assert me is not None
        try:
            while not self.stopping and target.current() and not me.cancelling():  # a library may turn a cancel into an error
                try:
                    if failed:
                        await self.client.ping()
                        failed = False
                        await reset_pool(target.command_client())  # the pooled connections predate the fault
                        target.up()
                    await self._send_pops(count)
                    result = await self._next(count)
                    if self.kind == "inbox" and not self.stopping:
                        # Before handing out: the next pop waits in Redis meanwhile. (Not for normal
                        # channels: it would pop a message for a receiver about to be served.)
                        await self._send_pops(count)
                except FAULTS as exc:
                    target.down(exc)
                    failed = True
                    await self._reconnect()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                except ResponseError as exc:
                    await self._reconnect()
                    if self.blmpop and "unknown command" in str(exc).lower():
                        self.blmpop = False  # Redis before 7.0: BLPOP, then LPOP with a count (6.2+)
                        log.warning("layer.redis_without_blmpop", host=target.label, fallback="BLPOP")
                        continue
                    log.error("layer.receive_failed", host=target.label, error=str(exc))
                    await asyncio.sleep(BACKOFF_MAX)
                    continue
                except Exception as exc:  # a bug, ours or a library's: log it, start over on a fresh connection
                    if not broken:
                        broken = True
                        log.error("layer.receive_loop_error", host=target.label, kind=self.kind,
                                  error=f"{type(exc).__name__}: {exc}", exc_info=exc, why="the loop reconnects and goes on")
                    await self._reconnect()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                try:
                    await self._take(result)
                    broken = False
                except Exception as exc:  # a bug, ours or a library's: never a silent end of receiving
                    if not broken:
                        broken = True
                        log.error("layer.receive_loop_error", host=target.label, kind=self.kind,
                                  error=f"{type(exc).__name__}: {exc}", exc_info=exc,
                                  why="what this pop returned was not handed out; the loop goes on")
        finally:
            if self.reads:
                await self._finish()  # stopped (taken over, or closing): take what the pops in flight hold


async def push_wakeups(client: Redis, wake_key: str, pops: int = 1) -> None:
    """Answer ``pops`` blocked pops at once with wake-up elements; faults are the receive loop's to notice."""
    try:
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(pops):  # one push per pop: a pop takes every element it finds
                pipe.lpush(wake_key, b"1")
            pipe.pexpire(wake_key, 60_000)
            await pipe.execute()
    except FAULTS:
        pass
