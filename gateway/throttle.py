"""Failed logins per client address, shared by every adapter that checks credentials (SMTP AUTH,
MQTT CONNECT): past the bound an address is refused without its credentials being checked, so a
password guesser costs neither a hook call nor a database query."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class LoginThrottle:
    """A sliding window of failures per address. Memory stays bounded: at most ``max_tracked``
    addresses are remembered, and each keeps at most ``max_failures`` timestamps."""

    max_tracked = 10_000

    def __init__(self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures  # 0: never throttle
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def blocked(self, address: str) -> bool:
        if self.max_failures == 0:
            return False
        times = self._recent(address)
        return times is not None and len(times) >= self.max_failures

    def failed(self, address: str) -> bool:
        """Record a failure; True when it is the one that starts the block."""
        if self.max_failures == 0:
            return False
        times = self._recent(address)
        if times is None:
            if len(self._failures) >= self.max_tracked:
                self._make_room()
            times = self._failures[address] = deque(maxlen=self.max_failures)
        times.append(self.clock())
        return len(times) == self.max_failures

    def _make_room(self) -> None:
        """Forget expired addresses, then the oldest (the dict keeps insertion order) until one fits."""
        for stale in list(self._failures):
            if self._recent(stale) is not None and len(self._failures) >= self.max_tracked:
                del self._failures[stale]
