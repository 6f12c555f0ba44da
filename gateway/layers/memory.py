"""The in-memory channel layer: Channels' semantics for one gateway process.

It is the default backend: consumers, adapters and code outside an instance in the same process
talk through it with no external service. Behaviour follows ``channels.layers.InMemoryChannelLayer``
(capacity, expiry, group expiry, copies of messages, ``prefix.inmemory!<random>`` names), with
three differences that matter in a long-running daemon:

* cost: every operation touches only the channel or group it names; expired messages and
  memberships are dropped lazily on access, plus one sweep of everything at most once per expiry
  period (Channels scans every channel on every ``receive``);
* ``group_send`` never drops silently: a member whose channel is full is counted in
  ``full_drops``, reported to the ``on_full`` hook and logged as ``layer.channel_full``;
* ``receive`` waits on a future per waiting receiver (no polling), and a receiver that is
  cancelled after being woken passes the wake-up on, so no message is stranded.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from .base import BaseChannelLayer, ChannelCapacities, ChannelFull


@dataclass(slots=True, eq=False)
class _Channel:
    """One channel's queue: ``(expires_at, message)`` in arrival order, plus waiting receivers.

    ``expires_at`` is ``time.monotonic()`` at send plus ``expiry``; since ``expiry`` is fixed,
    the deque is sorted by expiry, so expired messages are always at its head.
    """

    capacity: int
    messages: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class InMemoryChannelLayer(BaseChannelLayer):
    """Channels' layer API held in this process's memory (the ``memory`` backend)."""

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: ChannelCapacities | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity, **kwargs
        )
        self._channels: dict[str, _Channel] = {}
        self._groups: dict[str, dict[str, float]] = {}  # group -> {channel: joined_at}
        self._member_of: dict[str, set[str]] = {}  # channel -> groups; makes leaving all groups O(groups joined)
        self._next_sweep = time.monotonic() + self._sweep_interval()

    # Channel API

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue a copy of ``message`` on ``channel``; ``ChannelFull`` if it holds ``capacity`` live messages."""
        _check_message(message)
        self.valid_channel_name(channel)
        now = time.monotonic()
        self._maybe_sweep(now)
        if not self._put(channel, message, now):
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for, remove and return the oldest unexpired message on ``channel``.

        Process-specific names (``prefix.inmemory!xyz``) are received by their full name, as in
        Channels' in-memory layer. Several receivers on one channel are served first come, first
        served, each message going to exactly one of them.
        """
        self.valid_channel_name(channel)
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            self._maybe_sweep(now)
            # Looked up on every pass: a flush or sweep may have replaced the entry while we slept.
            state = self._state(channel)
            self._purge(channel, state, now)
            if state.messages:
                _, message = state.messages.popleft()
                self._forget_if_idle(channel, state)
                return message
            waiter: asyncio.Future[None] = loop.create_future()
            state.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                try:
                    state.waiters.remove(waiter)
                except ValueError:
                    pass
                # Woken for a message, then cancelled: hand the wake-up to the next receiver.
                if waiter.done() and not waiter.cancelled() and state.messages:
                    _wake_one(state)
                self._forget_if_idle(channel, state)
                raise

    async def new_channel(self, prefix: str = "specific") -> str:
        """A fresh process-specific channel name, ``<prefix>.inmemory!<random>``, unused in this layer."""
        while True:
            name = f"{prefix}.inmemory!{secrets.token_hex(8)}"
            if name not in self._channels:
                self.valid_channel_name(name)
                return name

    # Groups extension

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; adding again renews the membership's ``group_expiry``."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        self._groups.setdefault(group, {})[channel] = time.monotonic()
        self._member_of.setdefault(channel, set()).add(group)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op when it is not a member."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        self._leave(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Queue a copy of ``message`` on every current member's channel.

        A member whose channel is full is skipped, as in Channels, so one stuck consumer cannot
        block the rest; but the skip is counted (``full_drops``), passed to ``on_full`` and logged.
        """
        _check_message(message)
        self.valid_group_name(group)
        now = time.monotonic()
        self._maybe_sweep(now)
        members = self._groups.get(group)
        if not members:
            return
        for channel in [ch for ch, joined in members.items() if now - joined >= self.group_expiry]:
            self._leave(group, channel)
        for channel in list(members):
            state = self._state(channel)
            self._purge(channel, state, now)
            if channel not in members:
                continue  # a message of its expired unread just now: Channels treats it as gone
            if not self._put(channel, message, now):
                self._count_full(channel, group)

    # Flush extension and lifecycle

    async def flush(self) -> None:
        """Drop every message and every group. Receivers already waiting keep waiting."""
        self._groups.clear()
        self._member_of.clear()
        for channel, state in list(self._channels.items()):
            state.messages.clear()
            self._forget_if_idle(channel, state)

    async def close(self) -> None:
        """Nothing to release but memory: same as ``flush``."""
        await self.flush()

    # Internals

    def _state(self, channel: str) -> _Channel:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(capacity=self.get_capacity(channel))
        return state

    def _put(self, channel: str, message: dict[str, Any], now: float) -> bool:
        """Append a deep copy unless the channel is at capacity; False when full."""
        state = self._state(channel)
        self._purge(channel, state, now)
        if len(state.messages) >= state.capacity:
            self._forget_if_idle(channel, state)
            return False
        state.messages.append((now + self.expiry, deepcopy(message)))
        _wake_one(state)
        return True

    def _purge(self, channel: str, state: _Channel, now: float) -> None:
        """Drop expired messages at the head of ``channel``.

        As in Channels, an expired message means nobody is consuming the channel, so it also
        leaves every group: later group sends stop piling up on it.
        """
        dropped = 0
        while state.messages and state.messages[0][0] <= now:
            state.messages.popleft()
            dropped += 1
        if dropped:
            groups = sorted(self._member_of.get(channel, ()))
            for group in groups:
                self._leave(group, channel)
            self._drop("expired", dropped, "layer.message_expired", channel, channel=channel, count=dropped, left_groups=groups)

    def _leave(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._groups[group]
        joined = self._member_of.get(channel)
        if joined is not None:
            joined.discard(group)
            if not joined:
                del self._member_of[channel]

    def _forget_if_idle(self, channel: str, state: _Channel) -> None:
        """Free an empty channel nobody waits on, so short-lived channels do not accumulate."""
        if not state.messages and not state.waiters and self._channels.get(channel) is state:
            del self._channels[channel]

    def _sweep_interval(self) -> float:
        return max(min(self.expiry, self.group_expiry), 0.001)

    def _maybe_sweep(self, now: float) -> None:
        """Expire everything at most once per interval, so channels and groups nobody touches
        again are freed too; between sweeps, expiry is applied only where an operation looks."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval()
        for channel, state in list(self._channels.items()):
            self._purge(channel, state, now)
            self._forget_if_idle(channel, state)
        for group, members in list(self._groups.items()):
            for channel in [ch for ch, joined in members.items() if now - joined >= self.group_expiry]:
                self._leave(group, channel)


def _wake_one(state: _Channel) -> None:
    """Wake the longest-waiting receiver that is still waiting."""
    while state.waiters:
        waiter = state.waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"a channel layer message must be a dict, not {type(message).__name__}")
