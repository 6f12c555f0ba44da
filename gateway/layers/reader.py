"""Reading one layer channel message by message, for the gateway's own consumers: the relays of
the outbound channels (gateway/outbound.py) and the bridges from a group (gateway/bridges).

A message belongs to its reader from the moment the layer gave it up: no other process will
see it. So a stop must not cut it short: stopping first interrupts only the wait for the next
message, then gives the message in hand the drain to finish; one still running when the drain
ends is cancelled and reported abandoned, never lost without a word.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import BaseChannelLayer

Message = dict[str, Any]

RECEIVE_RETRY = 1.0
"""Seconds between attempts to receive while the layer is unreachable."""
CANCEL_GRACE = 1.0
"""Seconds a cancelled message gets to end before the stop goes on without it."""


class ChannelReader:
    """Subclasses say what becomes of a message (``handle``) and how each outcome is reported;
    ``start`` once the subclass is ready, ``stop`` once."""

    def __init__(self, layer: BaseChannelLayer, channel: str, *, name: str) -> None:
        self.layer = layer
        self.channel = channel
        self.name = name
        self._stopping = False
        self._receiving: asyncio.Future[Message] | None = None
        self._message: Message | None = None  # taken from the channel, not yet handled
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    # -- what subclasses say --------------------------------------------------------------------
    async def handle(self, message: Message) -> None:
        raise NotImplementedError

    def handled(self, message: Message) -> None:
        """``handle`` returned."""

    def failed(self, message: Message, exc: Exception) -> None:
        """``handle`` raised: the message goes no further, the reader goes on."""

    def abandoned(self, message: Message) -> None:
        """The message was still being handled when the drain ended."""

    def receive_failed(self, exc: Exception) -> None:
        """The layer could not be read (e.g. Redis away); the reader tries again."""

    # -- the loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            self._receiving = asyncio.ensure_future(self.layer.receive(self.channel))
            try:
                message = await self._receiving
            except asyncio.CancelledError:
                if self._stopping and self._receiving.cancelled():
                    return  # stop() interrupted the wait: nothing was taken
                if not self._receiving.done():
                    self._receiving.cancel()  # no orphan receive that would take a message nobody handles
                if self._receiving.done() and not self._receiving.cancelled() and self._receiving.exception() is None:
                    self._message = self._receiving.result()  # taken, then cancelled before it was handed over
                    self._abandon()
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. Redis away: reported, and the reader tries again
                self.receive_failed(exc)
                await asyncio.sleep(RECEIVE_RETRY)
                continue
            self._message = message
            try:
                await self.handle(message)
            except asyncio.CancelledError:
                self._abandon()
                raise
            except Exception as exc:  # noqa: BLE001 - reported by the subclass, and the reader goes on
                self.failed(message, exc)
            else:
                if self._message is not None:  # None: stop() gave up on it and reported it abandoned
                    self.handled(message)
            self._message = None

    def _abandon(self) -> None:
        message, self._message = self._message, None
        if message is not None:  # reported once
            self.abandoned(message)

    async def stop(self, drain: float) -> None:
        """Take no more messages; let the one in hand finish within ``drain`` seconds."""
        self._stopping = True
        if self.task is None:
            return
        if self._receiving is not None and not self._receiving.done():
            self._receiving.cancel()
        await asyncio.wait([self.task], timeout=max(drain, 0.0))
        if self.task.done():
            return
        self.task.cancel()
        await asyncio.wait([self.task], timeout=CANCEL_GRACE)
        if not self.task.done():  # a library swallowed the cancellation (aiosmtplib can) and waits on
            self._abandon()  # its peer: give up on it rather than hang the stop
