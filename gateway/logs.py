"""Structured logging: one setup for the gateway, its adapters and the libraries under them.

structlog renders readable lines on a terminal and JSON lines otherwise. The instance runner
binds ``adapter``, ``route`` and ``instance`` in context variables, so every line logged while an
instance runs, by the gateway or by the application, carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["console", "json", "auto"]
LEVELS = ("debug", "info", "warning", "error", "critical")
_debug = True  # until configured, structlog's defaults log everything


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

