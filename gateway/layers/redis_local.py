"""What the Redis layer keeps in this process for its own channels: the messages buffered for
them and the groups they are in.

Pure bookkeeping, no Redis and no event loop: it belongs to the layer, not to a loop, because
sync code calls the layer from a new loop each time and a message must outlive the loop that got
it. What follows from a change (giving a count back to Redis, counting an expired message,
waking a receiver) is the caller's to do; the methods return what it needs for that.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

Buffered = tuple[int, bytes, str | None]
"""A message buffered for a channel of this process: ``(expires_ms, payload, count_inbox)``.

``count_inbox`` is set for messages that ``send`` counted in Redis: receiving one gives the count back."""


class LocalChannels:
    """The buffers of this process's channels and their membership cache."""

    def __init__(self) -> None:
        self.buffers: dict[str, deque[Buffered]] = {}
        self.groups: dict[tuple[str, str], dict[str, int]] = {}  # (own inbox, group) -> {channel: joined_ms}

    # -- buffers -----------------------------------------------------------------------------
    def buffer(self, channel: str) -> deque[Buffered]:
        """``channel``'s buffer, made on first use."""
        buffer = self.buffers.get(channel)
        if buffer is None:
            buffer = self.buffers[channel] = deque()
        return buffer

    def get(self, channel: str) -> deque[Buffered] | None:
        return self.buffers.get(channel)

    def drop_if_empty(self, channel: str) -> None:
        """Forget an empty buffer (the caller knows that nobody waits on it)."""
        buffer = self.buffers.get(channel)
        if buffer is not None and not buffer:
            del self.buffers[channel]

    @staticmethod
    def expire(buffer: deque[Buffered], now: int) -> list[str | None]:
        """Remove the messages at the head of ``buffer`` that expired by ``now``; their
        ``count_inbox`` fields, one per message removed."""
        removed: list[str | None] = []
        while buffer and buffer[0][0] <= now:
            removed.append(buffer.popleft()[2])
        return removed

    def channels(self) -> list[tuple[str, deque[Buffered]]]:
        """A snapshot of every buffer, for a sweep that may remove some of them."""
        return list(self.buffers.items())

    # -- membership cache --------------------------------------------------------------------
    def remember(self, inbox: str, group: str, channel: str, joined: int) -> None:
        self.groups.setdefault((inbox, group), {})[channel] = joined

    def forget(self, inbox: str, group: str, channel: str) -> None:
        members = self.groups.get((inbox, group))
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self.groups[(inbox, group)]

    def members(self, inbox: str, group: str) -> dict[str, int] | None:
        """``{channel: joined_ms}`` of ``inbox``'s channels in ``group`` (the cache's own dict)."""
        return self.groups.get((inbox, group))

    def groups_of(self, inbox: str, channel: str) -> list[str]:
        return sorted(g for (box, g), members in self.groups.items() if box == inbox and channel in members)

    def memberships(self, boxes: list[str]) -> Iterator[tuple[str, str, dict[str, int]]]:
        """``(inbox, group, members)`` for every cached group of the inboxes in ``boxes``."""
        for (inbox, group), members in list(self.groups.items()):
            if inbox in boxes:
                yield inbox, group, members

    # -- flush -------------------------------------------------------------------------------
    def flush_inbox(self, inbox: str) -> list[str]:
        """Another process flushed the layer: drop ``inbox``'s memberships and buffered
        messages; the channels whose buffers were emptied."""
        for key in [k for k in self.groups if k[0] == inbox]:
            del self.groups[key]
        emptied = [c for c in self.buffers if c.startswith(inbox)]
        for channel in emptied:
            self.buffers[channel].clear()
        return emptied

    def clear(self) -> None:
        self.groups.clear()
        self.buffers.clear()
