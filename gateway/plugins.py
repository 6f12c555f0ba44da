"""The adapter contract, and finding the adapters that implement it.

An adapter owns its sockets and protocol library and nothing else. It declares, as class
attributes, what the core needs to know before anything starts:

* ``name``: the key under ``adapters:`` in YAML;
* ``config_model``: a pydantic ``Section`` for that block;
* ``scope_types``: the scope types it produces (the keys it serves under ``routes:``);
* ``route_models``: per scope type, the ``RouteConfig`` subclass of one route entry;
* ``send_events``: per scope type, what an application may ``send`` (``EventSpec`` tables);
* ``outbound_channels``: layer channels it delivers from (``mqtt.publish``, ``email.send``);
* ``bridge_target``: optionally, the ``BridgeTarget`` model of ``to: {<name>: ...}`` in a
  bridge from a layer group (docs/bridges.md): how a group message becomes its outbound events.

Adapters are found the same way whether built in or third party: the entry-point group
``asgi_gateway.adapters`` and ``.py`` files in the configured plugin folders.
"""

from __future__ import annotations

import abc
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from .bridges.target import BridgeTarget
from .errors import PluginError
from .events import EventSpec
from .routing import Router
from .schema import RouteConfig, Section

if TYPE_CHECKING:
    from .health import Health
    from .layers import BaseChannelLayer
    from .metrics import Metrics
    from .mounts import Mounts
    from .routing import Match, ProtocolTypeRouter
    from .runner import Runner

ENTRY_POINT_GROUP = "asgi_gateway.adapters"
PLUGIN_MODULE_PREFIX = "asgi_gateway_plugins"


class EmptySection(Section):
    """For adapters that take no configuration."""


@dataclass
class AdapterContext:
    """What the core lends an adapter: routing, the runner, the layer and the shared services."""

    name: str
    router: ProtocolTypeRouter
    runner: Runner
    layer: BaseChannelLayer
    metrics: Metrics
    mounts: Mounts
    health: Health
    log: Any

    def resolve(self, scope: Mapping[str, Any]) -> Match | None:
        """The route for ``scope`` (``None``: nothing matches)."""
        return self.router.resolve(scope)

    def router_for(self, scope_type: str) -> Router:
        """The routes of one scope type (empty when none are configured): for an adapter that
        lists its routes (to subscribe to them) or resolves on a hot path without the type lookup."""
        app = self.router.application_mapping.get(scope_type)
        return app if isinstance(app, Router) else Router([])


class Adapter(abc.ABC):
    """Base class of every protocol adapter. See the module docstring and docs/adapters.md."""

    name: ClassVar[str]
    config_model: ClassVar[type[Section]] = EmptySection
    scope_types: ClassVar[tuple[str, ...]] = ()
    route_models: ClassVar[Mapping[str, type[RouteConfig]]] = {}
    send_events: ClassVar[Mapping[str, Mapping[str, EventSpec]]] = {}
    outbound_channels: ClassVar[tuple[str, ...]] = ()
    bridge_target: ClassVar[type[BridgeTarget] | None] = None

    def __init__(self, config: Any, context: AdapterContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def listen_addresses(cls, config: Any) -> list[str]:
        """The addresses this config would bind (``tcp:host:port``, ``unix:path``), for the
        check that refuses a config that listens twice on one address. Port 0 is never a clash."""
        return []

    @classmethod
    def for_workers(cls, config: Any) -> Any:
        """The config this adapter runs with under ``--workers N``: its listeners shared between the
        processes with ``SO_REUSEPORT``. Raise ``ValueError`` saying why when it cannot run in
        several processes. The default: an adapter without TCP listeners is fine as it is; one with
        them needs a ``reuse_port`` key."""
        addresses = [a for a in cls.listen_addresses(config) if a.startswith(("tcp:", "udp:"))]
        if not addresses:
            return config
        if "reuse_port" not in type(config).model_fields:
            raise ValueError(f"it listens on {', '.join(a.split(':', 1)[1] for a in addresses)} and cannot share "
                             "that between --workers processes (it has no reuse_port); run it in one process")
        return config.model_copy(update={"reuse_port": True})

    @classmethod
    def mount_paths(cls, config: Any) -> list[tuple[str, tuple[str, ...]]]:
        """``(path, scope types)`` this config will mount on the http listener at start (a
        webhook, a WebSocket endpoint), so ``gateway routes`` can list them without starting."""
        return []

    @classmethod
    def connection_limit(cls, config: Any) -> int:
        """How many client connections this config lets the adapter hold open at once (0: it
        does not bound them or does not say), for the start-up check of the process's open-file
        limit (``gateway.fdlimit``)."""
        return 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind or connect. Raise ``StartupError`` with a clear message when that fails."""

    @abc.abstractmethod
    async def stop(self, drain: float) -> None:
        """Stop accepting new work, let in-flight work finish for up to ``drain`` seconds,
        then release every socket and task. Must be safe to call after a failed ``start``."""

    async def handle_outbound(self, channel: str, message: dict[str, Any]) -> None:
        """Deliver one message received on one of ``outbound_channels``."""
        raise NotImplementedError(f"adapter {self.name!r} declares outbound channels but does not handle them")

    @property
    def addresses(self) -> list[str]:
        """What the adapter actually bound once started (port 0 resolved), for logs and tests."""
        return []

    async def routes_changed(self) -> None:  # noqa: B027 - optional: most adapters derive nothing from routes
        """A reload replaced the routes (the settings are unchanged): an adapter that derives
        something from them at start (MQTT client mode: its subscriptions) updates it here."""


def check_contract(cls: Any, source: str) -> None:
    """Refuse an adapter class that breaks the contract, naming what is wrong."""
    def fail(why: str) -> None:
        raise PluginError(f"adapter plugin {source}: {why}")

    if not (inspect.isclass(cls) and issubclass(cls, Adapter)):
        fail(f"{cls!r} is not a subclass of gateway.plugins.Adapter")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        fail("class attribute 'name' must be an identifier-like string (the key under 'adapters:')")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        fail(f"{cls.__qualname__} does not implement {missing}")
    if not (inspect.isclass(cls.config_model) and issubclass(cls.config_model, BaseModel)):
        fail("'config_model' must be a pydantic model (subclass gateway.schema.Section)")
    for scope_type in cls.scope_types:
        model = cls.route_models.get(scope_type)
        if not (inspect.isclass(model) and issubclass(model, RouteConfig)):
            fail(f"scope type {scope_type!r} has no route model in 'route_models' (a RouteConfig subclass)")
    for scope_type, table in cls.send_events.items():
        if not all(isinstance(spec, EventSpec) for spec in table.values()):
            fail(f"'send_events[{scope_type!r}]' must map event types to EventSpec objects")
    if cls.outbound_channels and cls.handle_outbound is Adapter.handle_outbound:
        fail("it declares 'outbound_channels' but does not override handle_outbound()")
    target = cls.bridge_target
    if target is not None:
        if not (inspect.isclass(target) and issubclass(target, BridgeTarget)):
            fail("'bridge_target' must be a gateway.bridges.BridgeTarget subclass")
        if target.outbound is BridgeTarget.outbound:
            fail(f"its bridge_target {target.__qualname__} does not implement outbound()")
        if not cls.outbound_channels:
            fail("it declares a 'bridge_target' but no 'outbound_channels' for the bridge to send to")


def discover(plugin_dirs: Iterable[Path], *, required_dirs: Iterable[Path] = ()) -> dict[str, tuple[type[Adapter], str]]:
    """All adapters: ``name -> (class, where it came from)``."""
    found: dict[str, tuple[type[Adapter], str]] = {}

    def add(cls: Any, source: str) -> None:
        check_contract(cls, source)
        if cls.name in found:
            other = found[cls.name][1]
            if found[cls.name][0] is cls:
                return
            raise PluginError(f"two adapters are named {cls.name!r}: {other} and {source}")
        found[cls.name] = (cls, source)

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        source = f"entry point {ep.name!r} ({ep.value})"
        try:
            cls = ep.load()
        except Exception as exc:
            raise PluginError(f"adapter plugin {source} failed to import: {type(exc).__name__}: {exc}") from exc
        add(cls, source)
    required = {Path(p).resolve() for p in required_dirs}
    for folder in plugin_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            if folder.resolve() in required:
                raise PluginError(f"plugin folder {folder} does not exist")
            continue
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith(("_", "test_")) or file.name == "conftest.py":
                continue
            for cls in _adapters_in_file(file):
                add(cls, str(file))
    return found


def _adapters_in_file(file: Path) -> list[type[Adapter]]:
    module_name = f"{PLUGIN_MODULE_PREFIX}.{file.stem}"
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(file):
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise PluginError(f"adapter plugin {file}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise PluginError(f"adapter plugin {file} failed to import: {type(exc).__name__}: {exc}") from exc
    return [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Adapter) and obj.__module__ == module_name
    ]
