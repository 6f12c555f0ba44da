"""Exceptions that cross module boundaries.

A ``ConfigError`` always knows where the bad input is (file, line, key path), because a user who
edits YAML needs the location more than the traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base class for errors the gateway reports to a user (no traceback needed)."""


class ConfigError(GatewayError):
    """A configuration problem, pinned to the place in the YAML that caused it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        path: Sequence[str | int] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.path = tuple(path)

    @property
    def dotted_path(self) -> str:
        out = ""
        for part in self.path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += f".{part}" if out else str(part)
        return out

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.dotted_path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class StartupError(GatewayError):
    """Something stopped the gateway from starting (a port taken, a lifespan failure, ...)."""


class InvalidEvent(GatewayError):
    """An application sent an event its scope does not allow, or with a wrong field."""


class PluginError(GatewayError):
    """An adapter plugin could not be loaded or breaks the adapter contract."""
