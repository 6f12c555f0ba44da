"""Structured logging: one setup for the gateway, its adapters and the libraries under them.

structlog renders readable lines on a terminal and JSON lines otherwise. The instance runner
sets the running instance in one context variable (``instance_context``) and a processor adds
its ``adapter``, ``route`` and ``instance`` to every line logged while it runs, by the gateway
or by the application. (One variable set per instance instead of structlog's
``bind_contextvars``, which sets one variable per key: a sixth of the runner's cost per HTTP
request or MQTT message.)
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["console", "json", "auto"]
LEVELS = ("debug", "info", "warning", "error", "critical")
_debug = True  # until configured, structlog's defaults log everything


_instance: ContextVar[tuple[str, str, str] | None] = ContextVar("gateway_instance", default=None)


def instance_context(adapter: str, route: str, instance: str) -> Token[tuple[str, str, str] | None]:
    """Mark the current task as running this instance (until ``reset_instance_context``)."""
    return _instance.set((adapter, route, instance))


def reset_instance_context(token: Token[tuple[str, str, str] | None]) -> None:
    _instance.reset(token)


def add_instance_context(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``adapter``, ``route``, ``instance`` of the running instance. Part of
    the gateway's own set-up; a project that configures structlog itself can add it too."""
    current = _instance.get()
    if current is not None:
        event_dict.setdefault("adapter", current[0])
        event_dict.setdefault("route", current[1])
        event_dict.setdefault("instance", current[2])
    return event_dict


def debug_enabled() -> bool:
    """Whether debug lines are logged: lets hot paths skip building a line nobody will see."""
    return _debug


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    global _debug
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(LEVELS)})")
    _debug = numeric <= logging.DEBUG
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

