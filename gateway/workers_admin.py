"""The admin listener of ``gateway run --workers N``: one address that speaks for every worker.

Each worker binding the configured admin port would fail (or, with ``SO_REUSEPORT``, answer for
whichever process the kernel picked: a readiness probe and a scrape that see one worker in N).
So the supervisor binds the configured address, each worker serves its own admin endpoints on
an ephemeral loopback port and reports it, and the supervisor asks every worker and answers for
all: ready only when each is ready, metrics with each sample labelled by its ``worker``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from .admin import AdminListener
from .config import Plan
from .health import send_json
from .types import Receive, Scope, Send

log = structlog.get_logger("gateway.workers")

WORKER_ADMIN = "127.0.0.1:0"
"""Where a worker serves its own admin endpoints: loopback only, a port of the kernel's choice."""
ASK_TIMEOUT = 5.0
"""Seconds the supervisor waits for one worker's answer before calling it unreachable."""


class WorkersAdmin:
    """Runs in a thread of the supervisor with an event loop of its own (the supervisor itself
    is a plain loop of ``time.sleep``)."""

    def __init__(self, plan: Plan, workers: int, alive: Callable[[int], bool]) -> None:
        assert plan.config.admin is not None
        self.listen = plan.config.admin.listen
        self.workers = workers
        self.alive = alive
        self.reports: Any = None  # a multiprocessing queue the workers put (number, address) on
        self.addresses: dict[int, str] = {}
        m = plan.config.metrics
        apps: dict[str | None, Callable[[Scope, Receive, Send], Any]] = {
            m.path: self._metrics, m.health_path: self._health, m.live_path: self._live, m.ready_path: self._ready,
        }
        self.endpoints = {path: app for path, app in apps.items() if path}
        self.paths = {"metrics": m.path, "health": m.health_path, "ready": m.ready_path}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: AdminListener | None = None
        self._thread: threading.Thread | None = None

    def start(self, reports: Any) -> None:
        """Bind the admin address before any worker starts, so a taken port fails the start at once."""
        self.reports = reports
        started: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(started,), name="gateway-workers-admin", daemon=True)
        self._thread.start()
        failure = started.get()
        if failure is not None:
            raise failure

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def _run(self, started: queue.Queue[BaseException | None]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._listener = AdminListener(self.listen, self.endpoints)
        try:
            loop.run_until_complete(self._listener.start())
        except OSError as exc:
            started.put(exc)
            loop.close()
            return
        started.put(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._listener.stop())
            loop.close()

    # -- asking the workers ---------------------------------------------------------------------
    def _collect_reports(self) -> None:
        while True:
            try:
                number, address = self.reports.get_nowait()
            except queue.Empty:
                return
            self.addresses[number] = address

    async def _ask_all(self, path: str) -> dict[int, tuple[int, bytes] | str]:
        """Each worker's answer (status, body), or why there is none."""
        self._collect_reports()
        answers: dict[int, tuple[int, bytes] | str] = {}
        timeout = aiohttp.ClientTimeout(total=ASK_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def ask(number: int) -> None:
                address = self.addresses.get(number)
                if not self.alive(number):
                    answers[number] = "not running"
                elif address is None:
                    answers[number] = "starting (no admin address reported yet)"
                else:
                    try:
                        async with session.get(f"http://{address}{path}") as response:
                            answers[number] = (response.status, await response.read())
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        answers[number] = f"unreachable: {type(exc).__name__}: {exc}"

            await asyncio.gather(*(ask(n) for n in range(self.workers)))
        return dict(sorted(answers.items()))

    # -- endpoints ------------------------------------------------------------------------------
    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        states = {str(n): "alive" if self.alive(n) else "dead" for n in range(self.workers)}
        ok = all(s == "alive" for s in states.values())
        await send_json(send, 200 if ok else 503, {"status": "live" if ok else "not live", "workers": states})

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.paths["ready"] is not None
        failing: dict[str, object] = {}
        for number, answer in (await self._ask_all(self.paths["ready"])).items():
            if isinstance(answer, str):
                failing[f"worker {number}"] = answer
            elif answer[0] != 200:
                failing[f"worker {number}"] = _decoded(answer[1]).get("failing", answer[1].decode(errors="replace"))
        if failing:
            await send_json(send, 503, {"status": "not ready", "failing": failing})
        else:
            await send_json(send, 200, {"status": "ready", "workers": self.workers})

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.paths["health"] is not None
        reports: dict[str, object] = {}
        down = False
        for number, answer in (await self._ask_all(self.paths["health"])).items():
            if isinstance(answer, str):
                reports[str(number)], down = {"status": "down", "detail": answer}, True
            else:
                reports[str(number)] = _decoded(answer[1])
                down = down or answer[0] != 200
        await send_json(send, 503 if down else 200, {"status": "down" if down else "ok", "workers": reports})

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.paths["metrics"] is not None
        merged: dict[str, Metric] = {}
        unanswered = []
        for number, answer in (await self._ask_all(self.paths["metrics"])).items():
            if isinstance(answer, str) or answer[0] != 200:
                unanswered.append(number)
                continue
            for family in text_string_to_metric_families(answer[1].decode()):
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": str(number)}, sample.value, sample.timestamp)
        up = Metric("gateway_worker_up", "1 while the worker answered the supervisor's scrape, else 0.", "gauge")
        for number in range(self.workers):
            up.add_sample("gateway_worker_up", {"worker": str(number)}, 0.0 if number in unanswered else 1.0)
        merged[up.name] = up
        if unanswered:
            log.warning("workers.metrics_missing", workers=unanswered, why="these workers did not answer the scrape")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(list(merged.values())))
        body = generate_latest(registry)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})


class _Fixed:
    """A collector that yields families gathered elsewhere (the workers' scrapes)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _decoded(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
