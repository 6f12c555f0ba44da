"""From an inbound MQTT message to a finished instance, with a bound per route.

Both modes hand every accepted message to ``Dispatcher.submit`` together with a ``done``
callback that receives ``True`` when the message may be acknowledged and ``False`` when it must
stay unacknowledged. Each route has a lane: at most ``concurrency`` instances run at once; a
message that finds its lane full waits in the lane's queue, up to the route's ``backlog``.

A message that finds its route's backlog full joins it anyway and the lane becomes *blocked*,
the signal for the mode to stop reading (``blocked``); ``on_unblocked`` tells it to read again
once every blocked lane has come down to half its backlog (resuming at the first free slot
would pause and resume the socket for every message under steady load). So memory stays bounded
by the routes' backlogs plus what one network read can deliver, never by the publishers' rate,
and a burst that the application can absorb is absorbed without loss.

A lane blocked by QoS 0 messages alone stays blocked for at most the route's ``drop_after``
seconds: then it *overflows*, stops blocking, and drops the QoS 0 messages for it (counted,
logged once per overflow) until its backlog is half empty. QoS 0 is "at most once", and
holding the connection for a route that cannot keep up would hold back every other route's
messages, and the PINGREQs behind them. A QoS 1/2 message is never dropped: a lane it blocked
stays blocked until it is half empty.

A QoS 1/2 message whose instance failed is run again by the gateway itself (``retry``: a
delay that doubles, a bound on the attempts), holding its unacknowledged slot at the peer but
no lane slot while it waits. After the last attempt ``give_up`` decides: dead-letter and
acknowledge, or leave it unacknowledged and end the connection so the peer sends it again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.plugins import AdapterContext
from gateway.routing import Match
from gateway.types import Message, Scope

from .config import RetrySection

log = structlog.get_logger("gateway.adapters.mqtt")

Done = Callable[[bool], None]
SendFactory = Callable[[Scope], Callable[[Message], Awaitable[None]]]


@dataclass(eq=False, slots=True)
class Pending:
    """One message on its way through a lane, with what the mode needs to settle it."""

    match: Match
    scope: Scope
    event: Message
    done: Done
    disconnect: Callable[[], None] | None
    attempt: int = 1
    error: BaseException | None = None


@dataclass(eq=False)
class Lane:
    name: str
    limit: int
    backlog: int
    drop_after: float
    running: int = 0
    waiting: deque[Pending] = field(default_factory=deque)
    firm: bool = False  # blocked by a QoS 1/2 message: stays blocked until half empty
    timer: asyncio.TimerHandle | None = None  # blocked by QoS 0 only: when to start dropping
    dropping: bool = False  # overflow: QoS 0 messages for the route are dropped
    dropped: int = 0  # QoS 0 messages dropped in the current overflow


# what the mode does with a message whose attempts are used up
GiveUp = Callable[[Pending], None]


class Dispatcher:
    def __init__(
        self,
        context: AdapterContext,
        send_for: SendFactory,
        on_unblocked: Callable[[], None] | None = None,
        *,
        retry: RetrySection | None = None,
        give_up: GiveUp | None = None,
    ) -> None:
        self.context = context
        self.send_for = send_for
        self.on_unblocked = on_unblocked
        self.retry = retry or RetrySection()
        self.give_up = give_up
        self.lanes: dict[int, Lane] = {}
        self.backlog = 0
        self.blocked_lanes: set[Lane] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.retrying: dict[asyncio.TimerHandle, Pending] = {}
        self.closed = False
        metrics = context.metrics
        self._messages = metrics.loop_counter(
            "gateway_mqtt_messages_total", "Inbound MQTT messages, by what became of them.", ("outcome",)
        )
        self._outcomes = {name: self._messages.labels(name) for name in (
            "handled", "failed", "unmatched", "oversized", "invalid", "duplicate", "dropped", "denied",
            "dead_lettered", "gave_up", "session_lost", "shutdown_dropped",
        )}
        self._backlog_gauge = metrics.gauge("gateway_mqtt_backlog", "Inbound MQTT messages waiting for a free route slot.")

    def count(self, outcome: str, amount: int = 1) -> None:
        self._outcomes[outcome].inc(amount)

    @property
    def blocked(self) -> bool:
        """A route's backlog is full (and not overflowing): stop reading until it has room."""
        return bool(self.blocked_lanes)

    def submit(self, scope: Scope, event: Message, done: Done, disconnect: Callable[[], None] | None = None) -> None:
        """Route and run one message; ``done(ok)`` is called once, in the event loop.

        ``disconnect`` ends the connection the message came on (used when its retries are
        exhausted and the policy is to have it sent again)."""
        match = self.context.resolve(scope)
        if match is None:
            self.count("unmatched")
            log.debug("mqtt.unmatched", topic=scope["topic"])
            done(True)  # nothing will ever handle it: holding it back would only block the session
            return
        key = id(match.route)
        lane = self.lanes.get(key)
        if lane is None:
            config = match.route.config
            lane = self.lanes[key] = Lane(
                match.route.name or str(match.route.target), getattr(config, "concurrency", 16) or 16,
                getattr(config, "backlog", 1000) or 1000, getattr(config, "drop_after", 1.0),
            )
        pending = Pending(match, scope, event, done, disconnect)
        if lane.running < lane.limit and not lane.waiting:
            self._start(lane, pending)
        elif lane.dropping and not scope.get("qos") and len(lane.waiting) >= lane.backlog:
            self.count("dropped")
            lane.dropped += 1
        else:
            self._enqueue(lane, pending)

    def _enqueue(self, lane: Lane, pending: Pending) -> None:
        lane.waiting.append(pending)
        self.backlog += 1
        self._backlog_gauge.set(self.backlog)
        if len(lane.waiting) < lane.backlog:
            return
        if pending.scope.get("qos"):
            lane.firm = True
        elif lane.dropping:
            return  # overflowing: the next QoS 0 message is dropped, reading goes on
        elif lane.timer is None and not lane.firm:
            lane.timer = asyncio.get_running_loop().call_later(lane.drop_after, self._overflow, lane)
        self.blocked_lanes.add(lane)

    def _overflow(self, lane: Lane) -> None:
        """A lane blocked by QoS 0 messages for ``drop_after`` seconds: drop them instead."""
        lane.timer = None
        if lane not in self.blocked_lanes or lane.firm:
            return
        lane.dropping = True
        log.warning(
            "mqtt.route_overflow", route=lane.name, backlog=lane.backlog, drop_after=lane.drop_after,
            why="the route's backlog stayed full: QoS 0 messages for it are dropped until it is half empty",
        )
        self._unblock(lane)

    def _unblock(self, lane: Lane) -> None:
        self.blocked_lanes.discard(lane)
        if not self.blocked_lanes and self.on_unblocked is not None:
            self.on_unblocked()

    def _start(self, lane: Lane, pending: Pending) -> None:
        lane.running += 1
        task = asyncio.get_running_loop().create_task(self._run(lane, pending))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, lane: Lane, pending: Pending) -> None:
        ok = False
        scope = pending.scope
        try:
            result = await self.context.runner.run_message(pending.match, scope, pending.event, self.send_for(scope), adapter="mqtt")
            ok = result.ok
            pending.error = result.error
        finally:
            self.count("handled" if ok else "failed")
            try:
                if ok:
                    pending.done(True)
                else:
                    self._failed(lane, pending)
            except Exception:
                log.exception("mqtt.ack_failed", topic=scope["topic"])
            lane.running -= 1
            self._next(lane)

    def _next(self, lane: Lane) -> None:
        if lane.waiting and not self.closed:
            nxt = lane.waiting.popleft()
            self.backlog -= 1
            self._backlog_gauge.set(self.backlog)
            self._start(lane, nxt)
        if len(lane.waiting) > lane.backlog // 2:
            return
        if lane.dropping:
            log.info("mqtt.route_overflow_ended", route=lane.name, dropped=lane.dropped)
            lane.dropping, lane.dropped = False, 0
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        lane.firm = False
        if lane in self.blocked_lanes:
            self._unblock(lane)

    def _failed(self, lane: Lane, pending: Pending) -> None:
        scope = pending.scope
        qos = scope.get("qos")
        route = lane.name
        if not qos:
            log.warning("mqtt.not_acknowledged", topic=scope["topic"], qos=0, route=route,
                        why="the application did not return normally (QoS 0: not retried)")
            pending.done(False)
            return
        if self.closed:
            log.warning("mqtt.not_acknowledged", topic=scope["topic"], qos=qos, route=route,
                        why="the application did not return normally; shutting down: left unacknowledged for the next session")
            pending.done(False)
            return
        retry = self.retry
        if pending.attempt < retry.attempts:
            delay = min(retry.delay * 2 ** (pending.attempt - 1), retry.max_delay)
            log.warning(
                "mqtt.not_acknowledged", topic=scope["topic"], qos=qos, route=route, attempt=pending.attempt, retry_in=delay,
                why=f"the application did not return normally; attempt {pending.attempt + 1} of {retry.attempts} in {delay:g} s",
            )
            pending.attempt += 1
            loop = asyncio.get_running_loop()
            handle: asyncio.TimerHandle | None = None

            def again() -> None:
                self.retrying.pop(handle, None)  # type: ignore[arg-type]
                if self.closed:
                    pending.done(False)
                    return
                if lane.running < lane.limit and not lane.waiting:
                    self._start(lane, pending)
                else:
                    self._enqueue(lane, pending)

            handle = loop.call_later(delay, again)
            self.retrying[handle] = pending
            return
        if self.give_up is not None:
            self.give_up(pending)
        else:
            pending.done(False)

    def drop_waiting(self) -> tuple[int, int]:
        """Forget queued (never started) messages and pending retries: QoS 1/2 ones stay
        unacknowledged for the peer; QoS 0 ones are lost. Returns (QoS 0, QoS 1/2) counts."""
        qos0 = unacked = 0
        for lane in self.lanes.values():
            for pending in lane.waiting:
                if pending.scope.get("qos"):
                    unacked += 1
                    pending.done(False)
                else:
                    qos0 += 1
            lane.waiting.clear()
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
        for handle, pending in list(self.retrying.items()):
            handle.cancel()
            unacked += 1
            pending.done(False)
        self.retrying.clear()
        self.backlog = 0
        self.blocked_lanes.clear()
        self._backlog_gauge.set(0)
        return qos0, unacked

    async def drain(self, timeout: float) -> None:
        """Stop starting instances and wait up to ``timeout`` for the running ones."""
        self.closed = True
        qos0, unacked = self.drop_waiting()
        if qos0 or unacked:
            self.count("shutdown_dropped", qos0 + unacked)
            log.warning(
                "mqtt.drain_dropped", qos0=qos0, unacknowledged=unacked,
                why="shutting down: messages still waiting for a route slot were not started (QoS 0 ones are lost; "
                "QoS 1/2 ones stay unacknowledged and are sent again to the next session)",
            )
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


def message_event(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool = False, properties: dict[str, Any] | None = None
) -> Message:
    event: Message = {"type": "mqtt.message", "topic": topic, "payload": payload, "qos": qos, "retain": retain, "dup": dup}
    if properties:
        event["properties"] = properties
    return event
