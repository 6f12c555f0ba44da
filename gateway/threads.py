"""The bounded thread pool that runs synchronous application code.

Sync consumers' handlers (and the Django auth hooks) block: they run here, not on the event
loop. The pool is bounded (``instances.sync_threads``) so a burst of slow handlers queues
instead of growing threads without limit. A handler is not interrupted when its instance times
out (a thread cannot be stopped from outside): its slot is held until it returns, which is
logged. Around each call Django's stale database connections are closed, as Channels'
``database_sync_to_async`` does, so a long-running gateway never reuses a dead connection.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from asgiref.sync import SyncToAsync

log = structlog.get_logger("gateway.threads")

T = TypeVar("T")
DEFAULT_SIZE = 16
_pool: ThreadPoolExecutor | None = None
_size = DEFAULT_SIZE


def configure(size: int) -> None:
    """Set the pool's size; takes effect for the next pool made (at gateway start)."""
    global _size, _pool
    if size != _size and _pool is not None:
        _pool.shutdown(wait=False)
        _pool = None
    _size = size


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_size, thread_name_prefix="gateway-sync")
    return _pool


async def run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``func`` in the pool. Inside it, ``async_to_sync`` reaches back to this event loop
    (asgiref's ``SyncToAsync`` records it), so a sync handler can ``send`` and use the layer."""
    call = functools.partial(_with_fresh_connections, func, *args, **kwargs)
    task = asyncio.ensure_future(SyncToAsync(call, thread_sensitive=False, executor=pool())())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            log.warning("sync.still_running", function=_name(func),
                        detail="the instance ended (timeout or disconnect) while its handler runs in a thread; "
                        "its pool slot is free again when the handler returns")
            task.add_done_callback(_finished_late)
        raise


def _name(func: Callable[..., Any]) -> str:
    owner = getattr(func, "__self__", None)
    name = getattr(func, "__name__", repr(func))
    return f"{type(owner).__qualname__}.{name}" if owner is not None else getattr(func, "__qualname__", name)


def _finished_late(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("sync.failed_after_end", error=repr(task.exception()))


def fresh_connections(func: Callable[..., T]) -> Callable[..., T]:
    """Decorate a sync function that the adapters call in a thread (an auth hook): Django's
    stale database connections are closed around it."""

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> T:
        return _with_fresh_connections(func, *args, **kwargs)

    return call


def _with_fresh_connections(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    close = _close_old_connections()
    if close is None:
        return func(*args, **kwargs)
    close()
    try:
        return func(*args, **kwargs)
    finally:
        close()


def _close_old_connections() -> Callable[[], None] | None:
    try:
        from django.apps import apps
    except ImportError:
        return None
    if not apps.ready:
        return None
    from django.db import close_old_connections

    return close_old_connections
