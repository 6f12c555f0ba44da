"""The failed-login throttle that SMTP AUTH and MQTT CONNECT share."""

from __future__ import annotations

from gateway.throttle import LoginThrottle


def test_the_throttle_lifts_when_the_window_has_passed():
    now = [100.0]
    throttle = LoginThrottle(max_failures=3, window=60, clock=lambda: now[0])
    assert [throttle.failed("10.0.0.1") for _ in range(3)] == [False, False, True]
    assert throttle.blocked("10.0.0.1") and not throttle.blocked("10.0.0.2")
    now[0] += 59.9
    assert throttle.blocked("10.0.0.1")
    now[0] += 0.2
    assert not throttle.blocked("10.0.0.1")
    assert not throttle.failed("10.0.0.1")  # counting starts over


def test_the_throttle_forgets_a_failure_when_it_leaves_the_window() -> None:
    now = [100.0]
    throttle = LoginThrottle(max_failures=2, window=60, clock=lambda: now[0])
    throttle.failed("10.0.0.1")
    now[0] += 30
    throttle.failed("10.0.0.1")
    assert throttle.blocked("10.0.0.1") and not throttle.blocked("10.0.0.2")
    now[0] += 30  # the first failure leaves the window
    assert not throttle.blocked("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.blocked("10.0.0.1")
    now[0] += 61
    assert not throttle.blocked("10.0.0.1")


def test_memory_stays_bounded_and_the_oldest_address_is_forgotten_first() -> None:
    now = [0.0]
    throttle = LoginThrottle(max_failures=2, window=600, clock=lambda: now[0])
    throttle.max_tracked = 3
    for address in ("a", "b", "c", "d"):
        throttle.failed(address)
        throttle.failed(address)
        now[0] += 1
    assert len(throttle._failures) == 3
    assert not throttle.blocked("a")  # the oldest went to make room
    assert all(throttle.blocked(x) for x in ("b", "c", "d"))
    for _ in range(50):  # one address keeps at most max_failures timestamps
        throttle.failed("d")
    assert len(throttle._failures["d"]) == 2
