"""The ``bridges:`` section: its schema, and turning it into ``Bridge`` objects at load time.

A bridge has a source and a target, one of them a layer group:

* ``from: {group: NAME}`` with ``to: {<adapter>: {...}}``: every message sent to the group is
  handed to the adapter's outbound channel (the adapter's ``bridge_target`` model says how);
* ``from: {<protocol>: {...route keys...}}`` with ``to: {group: TEMPLATE}``: messages of that
  protocol matching the route keys are sent to a group, the template filled from the named
  captures and the event's fields; the bridge is a route placed before the protocol's own.

Everything is checked here, before anything starts: names, templates, the adapter being
configured, imports of ``transform`` and of an adapter's callables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, field_validator

from ..events import EventSpec
from ..layers.base import MAX_NAME_LENGTH
from ..schema import KeyPath, RouteConfig, Section
from .target import BridgeTarget, load_callable
from .template import Template

if TYPE_CHECKING:
    from ..plugins import Adapter
    from ..yamlsource import Source
    from .runtime import Runtime

GROUP = "group"
CHANNEL_PREFIX = "bridge."
_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")
_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")

Validate = Callable[[type[Any], Any, "Source", KeyPath], Any]


class BridgeConfig(Section):
    """One entry of `bridges:` (keyed by the bridge's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: dict[str, Any] = Field(
        alias="from", description="Where messages come from: `{group: NAME}` (every message sent to that layer group), or "
        "`{PROTOCOL: {route keys}}`, e.g. `{mqtt: {topic: \"sensors/+room/temp\"}}` (messages matching those keys, "
        "before the protocol's routes).",
    )
    to: dict[str, Any] = Field(
        description="Where they go: `{ADAPTER: {keys}}` for a bridge from a group (`mqtt`, `sms`, `email`: see each "
        "adapter's bridge keys below), or `{group: TEMPLATE}` / `{group: {name: TEMPLATE, type: TYPE}}` for one from a protocol.",
    )
    transform: str | None = Field(
        None, description="`module:func(message) -> message | None`, sync or async: reshapes each message before it is "
        "forwarded; `None` drops it on purpose (counted as `filtered`).",
    )

    @field_validator("source", "to")
    @classmethod
    def _one_end(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) != 1:
            kinds = ", ".join(value) or "nothing"
            raise ValueError(f"name exactly one end, e.g. {{group: alerts}} or {{mqtt: {{...}}}} (got {kinds})")
        return value


class GroupTarget(Section):
    """`to: {group: {...}}`, the long form."""

    name: str = Field(description="The group, a template filled from the captures and the event's fields: `room-{room}`.")
    type: str | None = Field(
        None, description="The `type` of the group message (a Channels consumer's handler name with `.` as `_`); "
        "default: the inbound event's type, e.g. `mqtt.message`.",
    )


@dataclass(eq=False)
class Bridge:
    """One validated bridge. ``runtime`` is set by the running gateway (layer, metrics)."""

    name: str
    source: str
    """``group``, or the protocol (scope type) a bridge from a protocol listens to."""
    target: str
    """The adapter name, or ``group``."""
    group: str | None = None
    """The source group (a bridge from a group)."""
    target_config: BridgeTarget | None = None
    specs: Mapping[str, EventSpec] = field(default_factory=dict)
    """Send-side specs of the target adapter's events, by event type: outbound events are checked
    against them before they are queued, so a bad one is counted here, not lost in the adapter."""
    group_template: Template | None = None
    message_type: str | None = None
    transform: Callable[..., Any] | None = None
    transform_spec: str | None = None
    route: RouteConfig | None = None
    runtime: Runtime | None = None

    @property
    def channel(self) -> str:
        """The layer channel a bridge from a group receives on: one name shared by every process,
        a normal channel, so each group message is taken by exactly one of them."""
        return CHANNEL_PREFIX + self.name

    @property
    def config_key(self) -> tuple[Any, ...]:
        """What makes two loads the same bridge (a reload leaves an unchanged one running)."""
        return (self.name, self.source, self.group, self.target, self.target_config, self.transform_spec)

    def describe_target(self) -> str:
        if self.group_template is not None:
            return f"group {self.group_template}"
        keys = self.target_config.model_dump(exclude_defaults=True) if self.target_config else {}
        shown = ", ".join(f"{k}={v}" for k, v in keys.items())
        return f"{self.target}({shown})" if shown else self.target


def build(
    data: Mapping[str, Any],
    source: Source,
    served: Mapping[str, type[Adapter]],
    known: Mapping[str, type[Adapter]],
    validate: Validate,
) -> list[Bridge]:
    """Validate ``bridges:``. ``served``: adapter name -> class of the configured adapters;
    ``known``: every adapter found (to tell 'not configured' from 'no such adapter')."""
    if not isinstance(data, Mapping):
        raise source.error(("bridges",), "must be a mapping of bridge names to bridges, e.g. 'bridges: {alerts-to-mqtt: {...}}'")
    bridges = []
    for name, entry in data.items():
        where: KeyPath = ("bridges", name)
        if not isinstance(name, str) or not _NAME.match(name) or len(CHANNEL_PREFIX + name) >= MAX_NAME_LENGTH:
            raise source.error(where, f"bridge name {name!r} may only hold ASCII letters, digits, '-', '_' and '.' "
                               f"(at most {MAX_NAME_LENGTH - 1 - len(CHANNEL_PREFIX)} characters)")
        cfg = validate(BridgeConfig, entry, source, where)
        bridges.append(_bridge(name, cfg, source, where, served, known, validate))
    return bridges


def _bridge(
    name: str, cfg: BridgeConfig, source: Source, where: KeyPath,
    served: Mapping[str, type[Adapter]], known: Mapping[str, type[Adapter]], validate: Validate,
) -> Bridge:
    (from_kind, from_block), = cfg.source.items()
    (to_kind, to_block), = cfg.to.items()
    transform = None
    if cfg.transform is not None:
        try:
            transform = load_callable(cfg.transform)
        except ValueError as exc:
            raise source.error((*where, "transform"), f"bridge {name!r}: {exc}") from None
    if from_kind == GROUP:
        if to_kind == GROUP:
            raise source.error((*where, "to"), f"bridge {name!r}: a bridge from a group goes to an adapter "
                               "(mqtt, sms, email...); to reach another group, send to it from a consumer")
        if not isinstance(from_block, str) or not _GROUP_NAME.match(from_block) or len(from_block) >= MAX_NAME_LENGTH:
            raise source.error((*where, "from", GROUP), f"bridge {name!r}: a group name of ASCII letters, digits, '-', '_' "
                               f"and '.' (got {from_block!r})")
        cls = _adapter(name, to_kind, served, known, source, (*where, "to", to_kind), "to")
        model = getattr(cls, "bridge_target", None)
        if model is None:
            raise source.error((*where, "to", to_kind), f"bridge {name!r}: the {to_kind!r} adapter cannot be a bridge's "
                               f"target (it declares no bridge_target)")
        target = validate(model, to_block, source, (*where, "to", to_kind))
        specs = {kind: spec for table in cls.send_events.values() for kind, spec in table.items()}
        return Bridge(name, GROUP, to_kind, group=from_block, target_config=target, specs=specs,
                      transform=transform, transform_spec=cfg.transform)
    if to_kind != GROUP:
        raise source.error((*where, "to"), f"bridge {name!r}: a bridge from {from_kind!r} messages goes to a layer group "
                           "('to: {group: NAME}'); to reach an adapter, bridge from a group")
    owner = {t: cls for cls in served.values() for t in cls.scope_types}.get(from_kind)
    if owner is None:
        every = {t: cls for cls in known.values() for t in cls.scope_types}
        if from_kind in every:
            raise source.error((*where, "from", from_kind), f"bridge {name!r}: 'from: {from_kind}' needs the "
                               f"{every[from_kind].name!r} adapter: add 'adapters: {{{every[from_kind].name}: ...}}'")
        raise source.error((*where, "from", from_kind), f"bridge {name!r}: unknown source {from_kind!r} (a bridge comes from "
                           f"'group' or a protocol: {', '.join(sorted(every)) or 'none'})")
    block = from_block or {}
    if not isinstance(block, dict):
        raise source.error((*where, "from", from_kind), f"bridge {name!r}: the route keys of {from_kind} messages, as a mapping")
    for key in ("app", "name", "middleware", "include"):
        if key in block:
            raise source.error((*where, "from", from_kind, key), f"bridge {name!r}: a bridge is its own application; "
                               f"'{key}' belongs on a route, not on a bridge")
    route = validate(owner.route_models[from_kind], {**block, "app": f"bridge:{name}", "name": name},
                     source, (*where, "from", from_kind))
    group = validate(GroupTarget, to_block if isinstance(to_block, dict) else {"name": to_block}, source, (*where, "to", GROUP))
    try:
        template = Template(group.name)
    except ValueError as exc:
        raise source.error((*where, "to", GROUP), f"bridge {name!r}: {exc}") from None
    if not _GROUP_NAME.match(re.sub(r"\{[^}]*\}", "x", group.name)):
        raise source.error((*where, "to", GROUP), f"bridge {name!r}: group {group.name!r} may only hold ASCII letters, "
                           "digits, '-', '_', '.' besides its {fields}")
    return Bridge(name, from_kind, GROUP, group_template=template, message_type=group.type, transform=transform,
                  transform_spec=cfg.transform, route=route)


def _adapter(
    name: str, kind: str, served: Mapping[str, type[Adapter]], known: Mapping[str, type[Adapter]],
    source: Source, where: KeyPath, side: str,
) -> type[Adapter]:
    cls = served.get(kind)
    if cls is not None:
        return cls
    if kind in known:
        raise source.error(where, f"bridge {name!r}: '{side}: {kind}' needs the {kind!r} adapter configured: "
                           f"add 'adapters: {{{kind}: ...}}'")
    targets = sorted(n for n, c in known.items() if getattr(c, "bridge_target", None) is not None)
    raise source.error(where, f"bridge {name!r}: unknown adapter {kind!r} (adapters that can be a bridge's target: "
                       f"{', '.join(targets) or 'none'}; or 'group')")
