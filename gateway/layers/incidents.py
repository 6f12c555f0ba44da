"""Drop accounting shared by every layer: a count per reason, and one warning per incident.

A consumer that stops reading makes every later ``group_send`` drop a message for it; a log
line per message would bury the one that matters. So every dropped message is counted (and
passed to the ``on_drop`` hook, which the gateway turns into a Prometheus counter), while the
log gets one warning when an incident starts: the first drop for a subject, or the first after
``quiet`` seconds without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

DROP_REASONS = ("full", "expired", "restore_window", "dead_member")
"""Why a layer dropped a message: the member's channel was full; nobody received it within
``expiry``; Redis lost its data and the memberships were not restored in time; the member's
process died."""

DropHook = Callable[[str, int], None]
"""``on_drop(reason, count)``: ``count`` messages were dropped for ``reason`` (one of ``DROP_REASONS``)."""


class Incidents:
    """Tells a drop that starts an incident from one that continues it."""

    def __init__(self, quiet: float = 60.0, limit: int = 10_000) -> None:
        self.quiet = quiet
        self.limit = limit
        self._last: dict[Hashable, float] = {}

    def opens(self, key: Hashable) -> bool:
        """Record a drop for ``key``; True when it starts a new incident (log it), False when it continues one."""
        now = time.monotonic()
        last = self._last.get(key)
        self._last[key] = now
        if last is not None and now - last < self.quiet:
            return False
        if len(self._last) > self.limit:  # bound memory: forget incidents that are over
            for old in [k for k, t in self._last.items() if now - t >= self.quiet]:
                del self._last[old]
        return True
