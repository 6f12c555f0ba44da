"""The instance runner: the one place where an adapter's scope meets an application.

Every adapter hands its scopes here, so queues, send-side validation, exception isolation,
timeouts, the application-close timeout, cancellation, the per-instance log line and metrics
behave the same for an HTTP request, a WebSocket connection, an MQTT message or an e-mail.

Two styles, one per kind of scope:

* connection scopes (``websocket``, ``http``): the adapter creates an ``Instance``, runs it
  (``run()`` in its own task, or ``start()`` for a new task), feeds events with ``put()`` and
  ends it with ``close(disconnect_event)``;
* message scopes (``mqtt``, ``email``, ``sms``, ...): ``run_message()`` delivers the message,
  then ``<kind>.disconnect``, bounded by the route's timeout. ``Result.ok`` is the
  acknowledgement: only a normal return counts as handled.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from . import logs
from .errors import InvalidEvent
from .events import EventTable
from .metrics import CounterChild, HistogramChild, Metrics
from .routing import Match
from .types import Message, Scope, Send

log = structlog.get_logger("gateway.runner")

# What an adapter gives the runner to deliver an app's events (see ``Runner.instance``).
AdapterSend = Callable[[Message], Awaitable[None] | None]


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


# An attribute of an enum class is looked up through its metaclass on every read, unspecialised
# (several times a global's cost): what every instance reads as it ends reads this name instead.
_OK = Outcome.OK


@dataclass(slots=True)
class Result:
    outcome: Outcome
    duration: float
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is _OK


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    queue_size: int = 64
    app_close_timeout: float = 10.0
    message_timeout: float = 60.0


class Runner:
    """Creates and tracks instances for every adapter."""

    def __init__(self, events: EventTable, metrics: Metrics, settings: RunnerSettings | None = None) -> None:
        self.events = events
        self.settings = settings or RunnerSettings()
        self.active: set[Instance] = set()
        self._ids = itertools.count(1)
        self._idle: asyncio.Event | None = None  # made only while someone waits for no instance to run
        self._finished = metrics.loop_counter(
            "gateway_instances_total", "Application instances finished, by outcome.",
            ("adapter", "scope_type", "route", "outcome"),
        )
        self._duration = metrics.loop_histogram(
            "gateway_instance_duration_seconds", "Wall time of application instances.",
            ("adapter", "scope_type", "route"),
        )
        self._gauge = metrics.gauge("gateway_instances_active", "Application instances running now.", ("adapter",))
        self._running: dict[str, int] = {}  # read by the gauge when scraped: no lock per instance
        # (adapter, scope_type, route, outcome) -> that series' counter and duration histogram
        self._series: dict[tuple[str, str, str, Outcome], tuple[CounterChild, HistogramChild]] = {}
        self._deadlines = _Deadlines()

    def instance(
        self,
        match: Match,
        scope: Scope,
        send: AdapterSend,
        *,
        adapter: str,
        receive: Callable[[], Awaitable[Message]] | None = None,
        timeout: float | None = None,
        fresh_scope: bool = False,
    ) -> Instance:
        """A new instance for ``scope`` routed by ``match``.

        ``send`` takes each validated event: an async function, or a plain one that returns
        ``None`` once the event is out, or an awaitable when the app must wait before the next
        (flow control). The plain kind spares a coroutine per event on a hot path.

        ``receive`` lets an adapter that can pull events on demand (an HTTP request body)
        skip the queue; otherwise events arrive through ``put``. ``timeout`` bounds the
        whole run (message scopes); ``None`` means unbounded (connection scopes).

        The app gets a copy of ``scope`` with ``url_route``, ``route_name`` (and the route's
        lifespan ``state``) added, so the adapter's dict stays as it was. An adapter that builds
        a new scope for every instance and does not read it afterwards says ``fresh_scope=True``:
        those keys then go into ``scope`` itself, sparing a copy per request or message.
        """
        return Instance(self, match, scope, send, adapter, receive, timeout, next(self._ids), fresh_scope)

    async def run_message(
        self, match: Match, scope: Scope, message: Message, send: Send, *, adapter: str
    ) -> Result:
        """Run one message scope to the end; ``result.ok`` means "handled, acknowledge it"."""
        timeout = match.route.timeout or self.settings.message_timeout
        events = _MessageEvents(message, {"type": f"{scope['type']}.disconnect"})
        return await self.instance(match, scope, send, adapter=adapter, receive=events.next, timeout=timeout).run()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for running instances to finish, then cancel the rest.

        Returns how many had to be cancelled.
        """
        if self.active:
            try:
                async with asyncio.timeout(timeout):
                    await self._until_idle()
            except TimeoutError:
                pass
        return await self.cancel_all()

    async def cancel_all(self) -> int:
        """Cancel every running instance and wait (briefly) until they have all ended.

        Waits on the instances, not their tasks: an inline instance's task is the adapter's
        connection task, which may go on after the instance ended.
        """
        left = [task for task in (i.task for i in self.active) if task is not None and not task.done()]
        for task in left:
            task.cancel()
        if self.active:
            try:
                async with asyncio.timeout(5):
                    await self._until_idle()
            except TimeoutError:
                log.warning("runner.cancel_incomplete", still_running=len(self.active))
        self._deadlines.clear()  # nothing left to time out; a later start may run on another loop
        self._idle = None  # an event left from a timed-out wait belongs to this loop: not to be waited on from another
        return len(left)

    async def _until_idle(self) -> None:
        """Return once no instance runs. The event exists only while someone waits, so an
        instance's start and end (every request, every message) never touch it."""
        if self.active:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    # -- bookkeeping, called by Instance ---------------------------------------------------
    # ``Instance.run`` and ``Instance._finish`` update ``active``, ``_running`` and ``_series``
    # themselves: that spares two calls per instance, i.e. per HTTP request or MQTT message.
    def _first_of(self, adapter: str) -> None:
        """The first instance of ``adapter`` starts: its running count and the gauge reading it."""
        running = self._running
        running[adapter] = 1
        self._gauge.labels(adapter).set_function(lambda: running[adapter])

    def _new_series(self, adapter: str, scope_type: str, route: str, outcome: Outcome) -> tuple[CounterChild, HistogramChild]:
        """The metric children one kind of instance ending updates, looked up once rather than per instance."""
        return (
            self._finished.labels(adapter, scope_type, route, outcome.value),
            self._duration.labels(adapter, scope_type, route),
        )


class _MessageEvents:
    """The two events of a message scope, without a queue: the message, then its disconnect
    (repeated if the app asks again, as a server answers receive() after a disconnect)."""

    __slots__ = ("message", "disconnect")

    def __init__(self, message: Message, disconnect: Message) -> None:
        self.message: Message | None = message
        self.disconnect = disconnect

    async def next(self) -> Message:
        message, self.message = self.message, None
        return message if message is not None else self.disconnect


class Instance:
    """One application instance: its scope, its receive queue and its outcome."""

    __slots__ = (
        "runner", "match", "scope", "adapter", "scope_type", "route_label", "number", "_queue",
        "timeout", "task", "result", "_send", "_receive", "_invalid", "expired",
    )

    def __init__(
        self,
        runner: Runner,
        match: Match,
        scope: Scope,
        send: AdapterSend,
        adapter: str,
        receive: Callable[[], Awaitable[Message]] | None,
        timeout: float | None,
        number: int,
        fresh_scope: bool,
    ) -> None:
        self.runner = runner
        self.match = match
        self.scope = match.scope_for(scope, in_place=fresh_scope)
        self.adapter = adapter
        self.scope_type: str = scope["type"]
        route = match.route
        self.route_label = route.name or route.target
        self.number = number
        self._queue: asyncio.Queue[Message] | None = None  # made on first use: HTTP pulls its body
        self.timeout = timeout
        # the task to cancel at the deadline: start()'s own, or the adapter's when run() is awaited inline
        self.task: asyncio.Task[Any] | None = None
        self.result: Result | None = None
        self._send = send
        self._receive = receive or self._get
        self._invalid: InvalidEvent | None = None
        self.expired = False

    @property
    def id(self) -> str:
        """The instance's id in logs (hex): formatted when a line is logged, not for every instance."""
        return f"{self.number:x}"

    @property
    def queue(self) -> asyncio.Queue[Message]:
        """The bounded receive queue (``instances.queue_size``)."""
        if self._queue is None:
            self._queue = asyncio.Queue(self.runner.settings.queue_size)
        return self._queue

    # -- the adapter's side ----------------------------------------------------------------
    async def put(self, event: Message) -> None:
        """Queue an event for the app; waits while the queue is full (backpressure)."""
        await self.queue.put(event)

    def start(self) -> asyncio.Task[Result]:
        """Run the app in a task of its own (connection scopes)."""
        task = self.task = asyncio.get_running_loop().create_task(self.run())
        return task

    async def close(self, disconnect: Message) -> Result:
        """The peer went away: tell the app, wait the app-close timeout, then cancel it."""
        task = self.task
        assert task is not None, "close() is for instances started with start()"
        if not task.done():
            grace = self.runner.settings.app_close_timeout
            deadline = time.monotonic() + grace
            try:
                await asyncio.wait_for(self.queue.put(disconnect), grace)
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning(
                    "instance.close_timeout", adapter=self.adapter, route=self.route_label,
                    instance=self.id, seconds=grace,
                )
                task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            assert self.result is not None
            return self.result

    # -- the application's side ------------------------------------------------------------
    async def _get(self) -> Message:
        return await self.queue.get()

    async def send(self, event: Message) -> None:
        if self._invalid is not None:
            raise self._invalid
        try:
            self.runner.events.validate(self.scope_type, event)
        except InvalidEvent as exc:
            self._invalid = InvalidEvent(f"application {self.match.route.target} sent an invalid event: {exc}")
            raise self._invalid from None
        pending = self._send(event)
        if pending is not None:
            await pending

    async def run(self) -> Result:
        """Run the app in the current task and return how it ended (never raises but cancel)."""
        runner = self.runner
        task = self.task
        if task is None:  # run inline in the adapter's task (if it did not say which): that is the task to cancel
            task = self.task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Instance.run() must be awaited in an asyncio task")
        adapter = self.adapter
        runner.active.add(self)
        running = runner._running
        if adapter in running:
            running[adapter] += 1
        else:
            runner._first_of(adapter)
        token = logs.current_instance.set((adapter, self.route_label, self.number))
        start = time.perf_counter()
        outcome: Outcome = _OK
        error: BaseException | None = None
        # Only the deadline sets ``expired`` and cancels, and only an instance with a timeout has
        # one: the task's count of pending cancels is needed, and read, only then.
        cancelling = 0
        if self.timeout is not None:
            cancelling = task.cancelling()
            runner._deadlines.add(self, self.timeout)
        try:
            await self.match.route.app(self.scope, self._receive, self.send)
            if self._invalid is not None:
                outcome, error = Outcome.FAILED, self._invalid
        except asyncio.CancelledError as exc:
            # our deadline's cancel is taken back; one from elsewhere (shutdown) goes on
            only_ours = self.expired and task.uncancel() <= cancelling
            self.expired = False
            if not only_ours:
                outcome, error = Outcome.CANCELLED, exc
                self._finish(outcome, error, start)
                logs.current_instance.reset(token)
                raise
            outcome, error = Outcome.TIMEOUT, self._timeout_error()
        except Exception as exc:  # noqa: BLE001 - the app's failure is the instance's outcome, logged by _finish
            outcome, error = Outcome.FAILED, exc
        if self.expired:  # the app swallowed the cancellation: it still timed out
            task.uncancel()
            outcome, error = Outcome.TIMEOUT, self._timeout_error()
        result = self._finish(outcome, error, start)
        logs.current_instance.reset(token)
        return result

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(f"the route's timeout of {self.timeout} s expired")

    def _expire(self) -> None:
        """Called by the deadline watcher: cancel the app; ``run`` turns it into a timeout."""
        if self.task is not None and not self.task.done():
            self.expired = True
            self.task.cancel()

    def _finish(self, outcome: Outcome, error: BaseException | None, start: float) -> Result:
        """Record how the instance ended: its deadline released, no longer active, metrics
        counted, a log line if due."""
        duration = time.perf_counter() - start
        runner = self.runner
        if self.timeout is not None:
            runner._deadlines.discard(self)
        result = self.result = Result(outcome, duration, error)
        active = runner.active
        active.discard(self)
        if not active and runner._idle is not None:
            runner._idle.set()
            runner._idle = None
        runner._running[self.adapter] -= 1
        key = (self.adapter, self.scope_type, self.route_label, outcome)
        series = runner._series.get(key)
        if series is None:
            series = runner._series[key] = runner._new_series(*key)
        series[0].inc()
        series[1].observe(duration)
        if outcome is _OK:
            # At debug: one line per MQTT message or HTTP request is an access log, not news.
            # Checked first because even a filtered call costs more than the rest of an instance.
            if logs.debug:
                log.debug("instance.finished", outcome=outcome.value, duration_ms=round(duration * 1000, 3), scope_type=self.scope_type)
            return result
        ms = round(duration * 1000, 3)
        if outcome is Outcome.FAILED:
            log.error(
                "instance.finished", outcome=outcome.value, duration_ms=ms, scope_type=self.scope_type,
                error=f"{type(error).__name__}: {error}", exc_info=error if not isinstance(error, InvalidEvent) else None,
            )
        else:
            log.warning("instance.finished", outcome=outcome.value, duration_ms=ms, scope_type=self.scope_type)
        return result


class _Deadlines:
    """Timeouts of message instances, with one timer for all of them.

    ``asyncio.timeout`` starts and stops an event-loop timer per instance; on uvloop that was
    over half of the runner's cost per MQTT message. Here a single timer is set for the
    earliest deadline; when it fires, every instance past its deadline is cancelled and the
    timer is set again for the next one. Deadlines are in ``loop.time()``, so they are exact
    to the event loop's resolution."""

    __slots__ = ("_at", "_handle", "_pending")

    def __init__(self) -> None:
        self._pending: dict[Instance, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def add(self, inst: Instance, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._pending[inst] = deadline
        if self._handle is None or deadline < self._at:
            self._schedule(loop, deadline)

    def discard(self, inst: Instance) -> None:
        self._pending.pop(inst, None)

    def clear(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._pending.clear()

    def _schedule(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        self._handle = loop.call_at(deadline, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = loop.time()
        expired = [inst for inst, deadline in self._pending.items() if deadline <= now]
        for inst in expired:
            del self._pending[inst]
            inst._expire()
        if self._pending:
            self._schedule(loop, min(self._pending.values()))
