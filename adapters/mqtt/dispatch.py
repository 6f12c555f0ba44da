"""From an inbound MQTT message to a finished instance, with a bound per route.

Both modes hand every accepted message to ``Dispatcher.submit`` together with a ``done``
callback that receives ``True`` when the routed application returned normally (acknowledge) and
``False`` otherwise (leave it unacknowledged). Each route has a lane: at most ``concurrency``
instances run at once; a message that finds its lane full waits in the lane's queue and
``backlog`` becomes non-zero, which is the signal for the mode to stop reading from the
network (backpressure). ``on_backlog_empty`` tells it to read again once the backlog is empty
and the lane that emptied it has come down to half its bound: resuming at the first free slot
would pause and resume the socket for every message under steady load, and those two system
calls cost more than the message. So memory stays bounded by the routes' bounds plus what one
network read can deliver, never by the publishers' rate.
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

log = structlog.get_logger("gateway.adapters.mqtt")

Done = Callable[[bool], None]
SendFactory = Callable[[Scope], Callable[[Message], Awaitable[None]]]


@dataclass(eq=False)
class Lane:
    limit: int
    running: int = 0
    waiting: deque[tuple[Match, Scope, Message, Done]] = field(default_factory=deque)


class Dispatcher:
    def __init__(
        self,
        context: AdapterContext,
        send_for: SendFactory,
        on_backlog_empty: Callable[[], None] | None = None,
    ) -> None:
        self.context = context
        self.send_for = send_for
        self.on_backlog_empty = on_backlog_empty
        self.lanes: dict[int, Lane] = {}
        self.backlog = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        metrics = context.metrics
        self._messages = metrics.loop_counter(
            "gateway_mqtt_messages_total", "Inbound MQTT messages, by what became of them.", ("outcome",)
        )
        self._outcomes = {name: self._messages.labels(name) for name in (
            "handled", "failed", "unmatched", "oversized", "invalid", "duplicate",
        )}
        self._backlog_gauge = metrics.gauge("gateway_mqtt_backlog", "Inbound MQTT messages waiting for a free route slot.")

    def count(self, outcome: str) -> None:
        self._outcomes[outcome].inc()

    def submit(self, scope: Scope, event: Message, done: Done) -> None:
        """Route and run one message; ``done(ok)`` is called once, in the event loop."""
        match = self.context.resolve(scope)
        if match is None:
            self.count("unmatched")
            log.debug("mqtt.unmatched", topic=scope["topic"])
            done(True)  # nothing will ever handle it: holding it back would only block the session
            return
        key = id(match.route)
        lane = self.lanes.get(key)
        if lane is None:
            limit = getattr(match.route.config, "concurrency", 16) or 16
            lane = self.lanes[key] = Lane(limit)
        if lane.running < lane.limit and not lane.waiting:
            self._start(lane, match, scope, event, done)
        else:
            lane.waiting.append((match, scope, event, done))
            self.backlog += 1
            self._backlog_gauge.set(self.backlog)

    def _start(self, lane: Lane, match: Match, scope: Scope, event: Message, done: Done) -> None:
        lane.running += 1
        task = asyncio.get_running_loop().create_task(self._run(lane, match, scope, event, done))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, lane: Lane, match: Match, scope: Scope, event: Message, done: Done) -> None:
        ok = False
        try:
            result = await self.context.runner.run_message(match, scope, event, self.send_for(scope), adapter="mqtt")
            ok = result.ok
        finally:
            self.count("handled" if ok else "failed")
            if not ok:
                log.warning(
                    "mqtt.not_acknowledged", topic=scope["topic"], qos=scope.get("qos"),
                    route=match.route.name or match.route.target,
                    why="the application did not return normally; the broker will redeliver it" if scope.get("qos") else
                    "the application did not return normally (QoS 0: not redelivered)",
                )
            try:
                done(ok)
            except Exception:  # noqa: BLE001
                log.exception("mqtt.ack_failed", topic=scope["topic"])
            lane.running -= 1
            if lane.waiting and not self.closed:
                nxt = lane.waiting.popleft()
                self.backlog -= 1
                self._backlog_gauge.set(self.backlog)
                self._start(lane, *nxt)
            if self.backlog == 0 and lane.running <= lane.limit // 2 and self.on_backlog_empty is not None:
                self.on_backlog_empty()

    def drop_waiting(self) -> int:
        """Forget queued (never started) messages: they stay unacknowledged for the broker."""
        dropped = 0
        for lane in self.lanes.values():
            dropped += len(lane.waiting)
            lane.waiting.clear()
        self.backlog = 0
        self._backlog_gauge.set(0)
        return dropped

    async def drain(self, timeout: float) -> None:
        """Stop starting instances and wait up to ``timeout`` for the running ones."""
        self.closed = True
        self.drop_waiting()
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
