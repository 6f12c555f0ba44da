"""The backend interface every channel layer implements, and the shared name rules.

The method set and semantics are Channels' (``channels.layers.BaseChannelLayer``), so a
Channels consumer can use a gateway layer unchanged and code moves between the two.
"""

from __future__ import annotations

import abc
import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict, Field

from .incidents import DROP_REASONS, DropHook, Incidents

log = structlog.get_logger("gateway.layers")

MAX_NAME_LENGTH = 100
_CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")
_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")


# ``channel_capacity``: glob strings, or compiled regexes as channels_redis also takes them.
ChannelCapacities = Mapping[str, int] | Mapping[str | re.Pattern[str], int]


try:  # Channels code catches channels.exceptions.ChannelFull: raise something both catch.
    from channels.exceptions import ChannelFull as _ChannelsFull
except ImportError:  # channels is optional
    _ChannelsFull = Exception


class ChannelFull(_ChannelsFull):
    """The channel is at capacity; the message was not queued.

    Also a ``channels.exceptions.ChannelFull`` when Channels is installed, so Channels code that
    catches its own exception works with every gateway layer.
    """


class LayerUnavailable(ConnectionError):
    """The layer's backing service could not be reached; nothing was queued by this call."""


FullHook = Callable[[str, str | None], None]
"""``on_full(channel, group)``: a message was refused because ``channel`` is full."""
HealthHook = Callable[[str, str], None]
"""``on_health(status, detail)``: the layer's state changed: ``"ok"``, ``"degraded"`` (part of it
works), or ``"down"`` (not ready: its service is unreachable, or it is restoring state)."""


class InvalidChannelName(TypeError):
    """A channel or group name breaks the naming rules (Channels raises TypeError too)."""


class LayerOptions(BaseModel):
    """Options common to every backend; a backend extends this model with its own keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expiry: float = Field(60, gt=0, description="Seconds an unread message lives in a channel.")
    group_expiry: float = Field(86400, gt=0, description="Seconds a group membership lives unless renewed by group_add.")
    capacity: int = Field(100, ge=1, description="Messages a channel holds before `send` raises ChannelFull.")
    channel_capacity: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="Per-channel capacity by glob pattern, e.g. `{\"mqtt.*\": 1000}`; first match wins.")


class BaseChannelLayer(abc.ABC):
    """Channels' layer API. Subclasses implement the abstract methods."""

    options_model: ClassVar[type[LayerOptions]] = LayerOptions
    extensions: ClassVar[list[str]] = ["groups", "flush"]
    on_full: FullHook | None
    """Set by the gateway to count refused messages in its metrics."""
    on_health: HealthHook | None
    """Set by the gateway to report the layer's state on the health endpoint."""
    on_drop: DropHook | None
    """Set by the gateway to count dropped messages by reason in its metrics."""
    health: tuple[str, str] = ("ok", "")
    """The layer's current ``(status, detail)``."""

    def __str__(self) -> str:
        return type(self).__name__

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: ChannelCapacities | None = None,
        on_full: FullHook | None = None,
        on_health: HealthHook | None = None,
        on_drop: DropHook | None = None,
        **kwargs: Any,
    ) -> None:
        self.on_full = on_full
        self.on_health = on_health
        self.on_drop = on_drop
        self.drops: Counter[str] = Counter(dict.fromkeys(DROP_REASONS, 0))
        """Messages dropped so far, by reason (``DROP_REASONS``)."""
        self._incidents = Incidents()
        self.expiry = expiry
        self.group_expiry = group_expiry
        self.capacity = capacity
        self.channel_capacity = [
            (re.compile(fnmatch.translate(pattern)) if isinstance(pattern, str) else pattern, cap)
            for pattern, cap in (channel_capacity or {}).items()
        ]

    @property
    def full_drops(self) -> int:
        """Messages ``group_send`` could not queue for a member because its channel was full."""
        return self.drops["full"]

    @property
    def expired_drops(self) -> int:
        """Messages dropped because nobody received them within ``expiry`` seconds."""
        return self.drops["expired"]

    def _count_drops(self, reason: str, number: int) -> None:
        """``number`` messages were dropped for ``reason``: counted, and passed to ``on_drop``."""
        self.drops[reason] += number
        if self.on_drop is not None:
            try:
                self.on_drop(reason, number)
            except Exception as exc:  # a broken hook must not break the layer
                log.error("layer.drop_hook_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def _drop(self, reason: str, number: int, event: str, subject: Any, /, **fields: Any) -> None:
        """``number`` messages were dropped: counted and reported always, logged once per incident."""
        self._count_drops(reason, number)
        if self._incidents.opens((event, subject)):
            log.warning(event, **fields)

    def _count_full(self, channel: str, group: str | None, **fields: Any) -> None:
        """A message was not queued because ``channel`` is full: counted, reported, logged once per incident."""
        fields = fields or {"capacity": self.get_capacity(channel)}
        self._drop("full", 1, "layer.channel_full", channel, channel=channel, group=group, **fields)
        if self.on_full is not None:
            self.on_full(channel, group)

    def get_capacity(self, channel: str) -> int:
        """Capacity of ``channel``: the first matching ``channel_capacity`` glob, else ``capacity``."""
        for pattern, cap in self.channel_capacity:
            if pattern.match(channel):
                return cap
        return self.capacity

    @staticmethod
    def require_valid_channel_name(name: str, receive: bool = False) -> bool:
        if not isinstance(name, str):
            raise InvalidChannelName(f"channel name must be a str, not {type(name).__name__}")
        if len(name) >= MAX_NAME_LENGTH:
            raise InvalidChannelName(f"channel name {name[:40]!r}... is {len(name)} characters; the limit is {MAX_NAME_LENGTH - 1}")
        if not _CHANNEL_NAME.match(name):
            raise InvalidChannelName(
                f"channel name {name!r} may only hold ASCII letters, digits, '-', '_', '.' "
                "and one '!' separating a process-specific part"
            )
        return True

    @staticmethod
    def require_valid_group_name(name: str) -> bool:
        if not isinstance(name, str):
            raise InvalidChannelName(f"group name must be a str, not {type(name).__name__}")
        if len(name) >= MAX_NAME_LENGTH:
            raise InvalidChannelName(f"group name {name[:40]!r}... is {len(name)} characters; the limit is {MAX_NAME_LENGTH - 1}")
        if not _GROUP_NAME.match(name):
            raise InvalidChannelName(f"group name {name!r} may only hold ASCII letters, digits, '-', '_' and '.'")
        return True

    # Channels 3 spelled them without ``require_``; both names work.
    valid_channel_name = require_valid_channel_name
    valid_group_name = require_valid_group_name

    @staticmethod
    def non_local_name(name: str) -> str:
        """The part of a process-specific channel name before the ``!`` (Channels' helper)."""
        return name[: name.find("!") + 1] if "!" in name else name

    @abc.abstractmethod
    async def send(self, channel: str, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def receive(self, channel: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def new_channel(self, prefix: str = "specific") -> str: ...

    @abc.abstractmethod
    async def group_add(self, group: str, channel: str) -> None: ...

    @abc.abstractmethod
    async def group_discard(self, group: str, channel: str) -> None: ...

    @abc.abstractmethod
    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def flush(self) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional: a layer with nothing to release keeps it
        """Release connections and tasks; called once when the gateway stops."""

    async def probe(self) -> None:  # noqa: B027 - optional: a layer without a service has nothing to reach
        """Reach the backing service once and update ``health``; raises ``LayerUnavailable`` when
        it cannot be reached. The gateway calls it at start and every few seconds, so readiness
        says the truth before any traffic has used the layer."""


_current: BaseChannelLayer | None = None


def set_channel_layer(layer: BaseChannelLayer | None) -> None:
    global _current
    _current = layer


def get_channel_layer() -> BaseChannelLayer | None:
    """The running gateway's layer (``None`` before a gateway has started in this process)."""
    return _current
