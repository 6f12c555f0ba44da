"""What an adapter declares to be the far end of a bridge (``to: {<adapter>: {...}}``).

The core knows no protocol: an adapter that can be a bridge's target names a ``BridgeTarget``
model as its ``bridge_target`` class attribute. The model is the YAML block (validated with
the rest of the file) and turns one group message into the events the adapter's outbound
channels already carry (``mqtt.publish``, ``sms.send``, ``email.send``), so a bridged message
gets exactly the rate limits, retries and opt-out checks of any other outbound message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .. import apps as app_loading
from .. import threads
from ..schema import Section

Message = dict[str, Any]
Outbound = list[tuple[str, Message]]
"""``(layer channel, event)`` pairs: what one group message becomes."""


class BridgeMessageError(ValueError):
    """This message cannot become an outbound event (a field its template names is missing, a
    callable it needs raised, the event would be invalid): it is dropped and counted."""


class BridgeTarget(Section):
    """Base of an adapter's ``to:`` block. Subclasses add their keys and implement ``outbound``."""

    async def outbound(self, message: Message) -> Outbound:
        """The ``(channel, event)`` pairs for one group message; ``BridgeMessageError`` when the
        message does not fit (missing field, bad value)."""
        raise NotImplementedError


def load_callable(spec: str) -> Callable[..., Any]:
    """Import a ``module:func`` named by a bridge key; ``ValueError`` (a config error) if it is not one."""
    try:
        func = app_loading.import_string(spec)
    except app_loading.AppLoadError as exc:
        raise ValueError(str(exc)) from None
    if not callable(func):
        raise ValueError(f"{spec!r} is not callable")
    return func


async def recipients(listed: list[str], source: Callable[..., Any] | None, spec: str | None, message: Message, what: str) -> list[str]:
    """The ``listed`` recipients, then those the ``source`` hook (named ``spec`` in the YAML)
    returns for this message that are not listed already."""
    found = list(listed)
    if source is not None:
        extra = await call(source, message)
        if isinstance(extra, str) or not all(isinstance(x, str) for x in extra or ()):
            raise BridgeMessageError(f"{spec} returned {extra!r}, not a list of {what}")
        found += [x for x in extra or () if x not in found]
    return found


async def call(func: Callable[..., Any], *args: Any) -> Any:
    """Call a user's hook, sync or async. Sync ones run in the gateway's thread pool, so they may
    use Django's ORM (which refuses to run on the event loop)."""
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__):
        result: Awaitable[Any] = func(*args)
        return await result
    return await threads.run_sync(func, *args)
