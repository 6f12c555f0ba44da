"""What becomes of a QoS 1/2 message whose application failed on every attempt (``retry.exhausted``).

Both modes share it: ``dead_letter`` publishes the message to the dead-letter topic and/or sends
it on the dead-letter channel, and only then acknowledges it (a dead-letter that cannot be
delivered falls back to ``disconnect``: nothing is acknowledged that was not handed somewhere);
``disconnect`` leaves it unacknowledged and ends the connection it came on, so that the peer
(device or broker) sends it again on the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from gateway.plugins import AdapterContext

from .config import RetrySection
from .dispatch import Dispatcher, Pending
from .events import Outgoing

log = structlog.get_logger("gateway.adapters.mqtt")

Publish = Callable[[Outgoing, bool], Awaitable[None]]


class Exhausted:
    def __init__(self, context: AdapterContext, retry: RetrySection, publish: Publish, disconnect_why: str) -> None:
        self.context = context
        self.retry = retry
        self.publish = publish
        self.disconnect_why = disconnect_why
        self.dispatcher: Dispatcher | None = None  # set by the mode once both exist
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, pending: Pending) -> None:
        if self.retry.exhausted == "dead_letter":
            task = asyncio.get_running_loop().create_task(self._dead_letter(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._disconnect(pending, self.disconnect_why)

    def _facts(self, pending: Pending) -> dict[str, Any]:
        scope = pending.scope
        return {
            "topic": scope["topic"], "qos": scope.get("qos"), "route": pending.match.route.name or str(pending.match.route.target),
            "attempts": pending.attempt, "client_id": scope.get("client_id"),
            "error": f"{type(pending.error).__name__}: {pending.error}" if pending.error is not None else "did not return normally",
        }

    def _disconnect(self, pending: Pending, why: str) -> None:
        assert self.dispatcher is not None
        self.dispatcher.count("gave_up")
        log.warning("mqtt.retries_exhausted", **self._facts(pending), why=why)
        pending.done(False)
        if pending.disconnect is not None:
            pending.disconnect()

    async def _dead_letter(self, pending: Pending) -> None:
        assert self.dispatcher is not None
        retry = self.retry
        facts = self._facts(pending)
        payload = pending.event["payload"]
        try:
            if retry.dead_letter_topic:
                await self.publish(Outgoing(f"{retry.dead_letter_topic}/{facts['topic']}", payload, 1, False, None), True)
            if retry.dead_letter_channel:
                await self.context.layer.send(retry.dead_letter_channel, {"type": "mqtt.dead_letter", **facts, "payload": payload})
        except Exception as exc:  # noqa: BLE001
            self._disconnect(pending, f"the dead-letter could not be delivered ({type(exc).__name__}: {exc}); {self.disconnect_why}")
            return
        self.dispatcher.count("dead_lettered")
        log.warning(
            "mqtt.dead_lettered", **facts, dead_letter_topic=retry.dead_letter_topic, dead_letter_channel=retry.dead_letter_channel,
            why="the application failed on every attempt: handed to the dead-letter destination and acknowledged",
        )
        pending.done(True)
