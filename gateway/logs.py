"""Structured logging: one setup for the gateway, its adapters and the libraries under them.

structlog renders readable lines on a terminal and JSON lines otherwise. The instance runner
sets the running instance in one context variable (``current_instance``) and a processor adds
its ``adapter``, ``route`` and ``instance`` to every line logged while it runs, by the gateway
or by the application. (One variable set per instance instead of structlog's
``bind_contextvars``, which sets one variable per key: a sixth of the runner's cost per HTTP
request or MQTT message.)
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["console", "json", "auto"]
LEVELS = ("debug", "info", "warning", "error", "critical")
# Whether debug lines are logged: lets hot paths skip building a line nobody will see. A module
# attribute rather than a function, so checking it on every instance costs no call. Until
# configured, structlog's defaults log everything.
debug = True

# ``(adapter, route, instance number)`` of the instance the current task runs. The runner sets
# and resets it itself (``set``/``reset``) on every instance, without a wrapper call around
# each; the number becomes the logged id (hex, as ``Instance.id``) only when a line is logged.
current_instance: ContextVar[tuple[str, str, int] | None] = ContextVar("gateway_instance", default=None)


def add_instance_context(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``adapter``, ``route``, ``instance`` of the running instance. Part of
    the gateway's own set-up; a project that configures structlog itself can add it too."""
    current = current_instance.get()
    if current is not None:
        event_dict.setdefault("adapter", current[0])
        event_dict.setdefault("route", current[1])
        event_dict.setdefault("instance", f"{current[2]:x}")
    return event_dict


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    global debug
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(LEVELS)})")
    debug = numeric <= logging.DEBUG
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_instance_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp, amqtt, ...) log through the standard library: same format, same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))  # libraries' own debug chatter stays off even at debug
    _one_line_per_record()


def _one_line_per_record() -> None:
    """A library logger with a console handler of its own that also propagates to the root would
    print every line twice, once unformatted (Django's default ``django`` logger does, and
    ``django.setup()`` installs it again each time it runs). Those console handlers go; other
    handlers (Django's ``mail_admins``, files) stay."""
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.handlers:
            consoles = [h for h in logger.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout)]
            for h in consoles:
                logger.removeHandler(h)
            if consoles:
                logger.propagate = True

