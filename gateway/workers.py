"""``gateway run --workers N``: N gateway processes on one machine, sharing listeners and a layer.

Each worker is a full gateway. Listeners are shared through ``SO_REUSEPORT`` (the kernel spreads
connections), so only adapters whose config has ``reuse_port`` can run under several workers;
the channel layer must be one all processes reach (Redis), because the in-memory layer would
split groups per process. Both are checked before any process starts.

The parent only supervises: it forwards SIGTERM/SIGINT, and if one worker dies it stops the
others, so a half-running gateway never goes unnoticed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from . import logs
from .config import AdminSection, Plan, load
from .errors import GatewayError, StartupError
from .workers_admin import WORKER_ADMIN, WorkersAdmin

log = structlog.get_logger("gateway.workers")


def check_shareable(plan: Plan, workers: int) -> None:
    """Refuse, before anything starts, a config that several processes cannot share."""
    if workers < 2:
        return
    from .layers.memory import InMemoryChannelLayer

    if issubclass(plan.layer_class, InMemoryChannelLayer):  # from `layer:` or from Django's CHANNEL_LAYERS
        raise plan.source.error(
            ("layer", "backend"),
            f"--workers {workers} needs a channel layer all processes share: the in-memory layer "
            "would split groups per process; set 'layer: {backend: redis, hosts: [...]}'",
        )
    for ap in plan.adapters:
        try:
            ap.cls.for_workers(ap.config)
        except ValueError as exc:
            raise plan.source.error(("adapters", ap.name), f"adapter {ap.name!r} cannot run under --workers {workers}: {exc}") from None
        if any(a.endswith(":0") for a in ap.cls.listen_addresses(ap.config)):
            raise plan.source.error(("adapters", ap.name), "--workers needs fixed ports: port 0 would give each worker its own")


def _for_worker(plan: Plan) -> Plan:
    """Listeners shared through reuse_port; the admin listener is the supervisor's, so a
    worker serves its own on a loopback port the supervisor asks (gateway/workers_admin.py)."""
    for ap in plan.adapters:
        ap.config = ap.cls.for_workers(ap.config)
    if plan.config.admin is not None:
        plan.config = plan.config.model_copy(update={"admin": AdminSection(listen=WORKER_ADMIN)})
    return plan


def _worker(config: str, level: str, fmt: logs.LogFormat, loop: str, number: int, reports: Any) -> None:
    import asyncio

    from .cli import install_loop
    from .server import Gateway

    logs.configure(level, fmt)
    structlog.contextvars.bind_contextvars(worker=number)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM drains
    install_loop(loop)
    gateway = Gateway(_for_worker(load(config)), config_path=config, adjust=_for_worker)

    async def serve() -> None:
        serving = asyncio.ensure_future(gateway.serve(signals=(signal.SIGTERM,)))
        if reports is not None:  # the admin listener starts first; tell the supervisor where it is
            while not serving.done() and not (gateway.admin and gateway.admin.addresses):
                await asyncio.wait([serving], timeout=0.02)
            if gateway.admin and gateway.admin.addresses:
                reports.put((number, gateway.admin.addresses[0]))
        await serving

    try:
        asyncio.run(serve())
    except GatewayError:  # logged by the gateway as gateway.start_failed: one line, not a traceback
        raise SystemExit(1) from None


def run_workers(config: str | Path, workers: int, level: str, fmt: logs.LogFormat, loop: str) -> int:
    """Start ``workers`` processes and supervise them; returns the exit status."""
    plan = load(config)
    check_shareable(plan, workers)
    ctx = multiprocessing.get_context("spawn")
    admin: WorkersAdmin | None = None
    reports = None
    if plan.config.admin is not None:
        reports = ctx.Queue()
        admin = WorkersAdmin(plan, workers, alive=lambda n: procs[n].is_alive())
        try:
            admin.start(reports)
        except OSError as exc:
            raise StartupError(f"admin.listen {plan.config.admin.listen}: {exc}") from exc
    procs = [
        ctx.Process(target=_worker, args=(str(config), level, fmt, loop, n, reports), name=f"gateway-worker-{n}")
        for n in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)  # a second signal reaches them as a second SIGTERM
        stopping = True

    def reload(signum: int, frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGHUP)  # every worker re-reads the file itself

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    for p in procs:
        p.start()
    log.info("workers.started", count=workers, pids=[p.pid for p in procs])
    status = 0
    while any(p.is_alive() for p in procs):
        for p in procs:
            if not p.is_alive() and p.exitcode not in (0, None) and not stopping:
                log.error("workers.worker_died", pid=p.pid, exit_code=p.exitcode)
                status = 1
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    for p in procs:
        p.join()
        if p.exitcode not in (0, None) and not stopping:
            status = 1
    if admin is not None:
        admin.stop()
    log.info("workers.stopped", exit_status=status)
    return status

