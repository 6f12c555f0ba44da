"""The gateway's configuration: its schema, and building a runnable plan from a YAML file.

Loading happens in full before anything listens: YAML, interpolation and includes
(``yamlsource``), the top-level schema, every adapter's own schema, every route's schema,
every ``app:`` and ``middleware:`` import, and cross-checks (a route for a protocol with no
adapter, two listeners on one address). The first problem found becomes a ``ConfigError``
that names the file, the line and the key path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field, ValidationError, field_validator

from . import apps as app_loading
from . import bridges as bridge_config
from .bridges.config import build as build_bridges
from .bridges.inbound import InboundBridge
from .errors import PluginError
from .layers import BACKENDS
from .layers.base import BaseChannelLayer
from .origins import OriginCheck, Origins
from .plugins import Adapter, discover
from .routing import ProtocolTypeRouter, Route, Router
from .schema import KeyPath, PositiveFloat, Section, inner_model, parse_listen
from .yamlsource import Source, load_file, load_text

log = structlog.get_logger("gateway.config")


class LayerSection(BaseModel):
    """`layer:` — the channel layer. Keys other than `backend` are the backend's options."""

    model_config = {"extra": "allow", "frozen": True}
    backend: str = Field("memory", description="`memory`, `redis` (redis extra), or a `module:Class` import string.")


class DjangoSection(Section):
    settings: str | None = Field(
        None, description="Django settings module, e.g. `mysite.settings` (default: the `DJANGO_SETTINGS_MODULE` "
        "environment variable). Django is set up before any `app:` is imported; enables `app: django`.",
    )
    handler: Literal["asgi", "wsgi"] = Field(
        "asgi", description="Django's handler behind `app: django`: `asgi`, or `wsgi` (its WSGI handler in a worker "
        "thread: about 3x cheaper per request for projects of sync views; async views then lose their concurrency).",
    )
    static: Literal["auto", "off"] = Field(
        "auto", description="`app: django` serves static files: with `DEBUG` as `runserver` does, otherwise "
        "`STATIC_ROOT` at `STATIC_URL` (ServeStatic). `off`: Django's handler alone (a CDN or proxy serves them).",
    )


class PluginsSection(Section):
    paths: list[str] = Field(
        default_factory=lambda: ["plugins"],
        description="Folders whose `.py` files are searched for adapter plugins (relative to the config file; "
        "the default `plugins` is looked up in the working directory and may be absent).",
    )


class InstancesSection(Section):
    queue_size: int = Field(64, gt=0, description="Events queued for an application before the adapter waits (backpressure).")
    app_close_timeout: PositiveFloat = Field(
        10.0, description="Seconds an app gets to return after its disconnect event before it is cancelled.",
    )
    message_timeout: PositiveFloat = Field(60.0, description="Default seconds a message-scope instance (mqtt, email, sms) may run.")
    sync_threads: int = Field(
        16, gt=0, description="Threads that run synchronous code (sync consumers' handlers, sync auth hooks); "
        "more concurrent calls wait for a free one.",
    )


class ShutdownSection(Section):
    drain_timeout: float = Field(
        30.0, ge=0, description="On SIGTERM/SIGINT: seconds in-flight instances get to finish before they are cancelled.",
    )


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = Field("info", description="Lowest level logged.")
    format: Literal["auto", "console", "json"] = Field("auto", description="`console` on a terminal, `json` lines otherwise (`auto`).")


class MetricsSection(Section):
    path: str | None = Field("/metrics", description="HTTP path of the Prometheus metrics (on the http adapter); null to disable.")
    health_path: str | None = Field(
        "/healthz", description="HTTP path of the JSON health report (200 unless a part is down); null to disable.",
    )
    live_path: str | None = Field("/livez", description="HTTP path of the liveness probe (200 while the process answers); null to disable.")
    ready_path: str | None = Field(
        "/readyz", description="HTTP path of the readiness probe: 200 while serving with every part ok, else 503 naming the "
        "failing parts; null to disable.",
    )


class AdminSection(Section):
    listen: str = Field(
        description="`host:port` of an internal listener that serves the metrics and health paths instead of the http "
        "adapter (which then does not serve them); keep it off the public network.",
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _one_address(cls, value: object) -> object:
        if parse_listen(value).kind != "tcp":  # type: ignore[arg-type]  # parse_listen explains a non-string
            raise ValueError("the admin listener binds TCP only: write host:port")
        return value


class LifespanSection(Section):
    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="`auto`: apps that do not support lifespan are skipped quietly; `on`: such apps are an error; "
        "`off`: never send lifespan."
    )
    startup_timeout: PositiveFloat = Field(30.0, description="Seconds every app gets to complete `lifespan.startup`.")
    shutdown_timeout: PositiveFloat = Field(30.0, description="Seconds every app gets to complete `lifespan.shutdown`.")


class GatewayConfig(Section):
    """The top level of a gateway config file."""

    layer: LayerSection = Field(default_factory=LayerSection, description="The channel layer.")
    django: DjangoSection | None = Field(None, description="Django integration.")
    python_path: list[str] = Field(
        default_factory=list, description="Folders put in front of `sys.path` (relative to the config file) so `app:` strings "
        "import. The config file's own folder is always importable, as `manage.py` makes a Django project's folder.",
    )
    plugins: PluginsSection = Field(
        default_factory=PluginsSection, description="Where adapter plugins are found besides installed entry points.",
    )
    adapters: dict[str, Any] = Field(
        default_factory=dict, description="One block per adapter, keyed by adapter name; see each adapter's keys below.",
    )
    routes: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="Per scope type an ordered list of routes; first match wins.",
    )
    bridges: dict[str, Any] = Field(
        default_factory=dict, description="Bridges between layer groups and adapters, keyed by bridge name (docs/bridges.md); "
        "see `bridges.<name>` below.",
    )
    instances: InstancesSection = Field(default_factory=InstancesSection, description="The instance runner.")
    shutdown: ShutdownSection = Field(default_factory=ShutdownSection, description="Graceful shutdown.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Logging.")
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Metrics and health endpoints.")
    admin: AdminSection | None = Field(None, description="A separate internal listener for the metrics and health endpoints.")
    lifespan: LifespanSection = Field(default_factory=LifespanSection, description="ASGI lifespan.")


@dataclass
class AdapterPlan:
    name: str
    cls: type[Adapter]
    config: Any


@dataclass
class Plan:
    """Everything validated and imported: ready to start."""

    config: GatewayConfig
    source: Source
    adapters: list[AdapterPlan]
    routers: dict[str, Router]
    layer_class: type[BaseChannelLayer]
    layer_options: dict[str, Any]
    django: bool = False
    """Django is set up: the gateway's layer is also Channels' ``get_channel_layer()``."""
    loader: app_loading.AppLoader | None = None
    bridges: list[bridge_config.Bridge] = field(default_factory=list)
    """Every bridge; those from a protocol are also routes (first in their protocol's list)."""

    @property
    def router(self) -> ProtocolTypeRouter:
        return ProtocolTypeRouter(self.routers)

    def mounts(self) -> list[tuple[str, str, str]]:
        """``(scope types, path, owner)`` of what is mounted on the http listener, in the order a
        request is matched against them (longest prefix first), all before the routes."""
        metrics = self.config.metrics
        found: list[tuple[str, str, str]] = []
        if self.config.admin is None:
            core = (metrics.path, "metrics"), (metrics.health_path, "health"), (metrics.live_path, "health"), (metrics.ready_path, "health")
            found += [("http", path, owner) for path, owner in core if path]
        for ap in self.adapters:
            found += [(",".join(types), path, ap.name) for path, types in ap.cls.mount_paths(ap.config)]
        return sorted(found, key=lambda m: len(m[1]), reverse=True)

    def routes(self) -> Iterator[tuple[str, Route]]:
        for protocol, router in self.routers.items():
            for route in router.routes:
                yield protocol, route


def load(path: str | Path, *, loader: app_loading.AppLoader | None = None) -> Plan:
    """Load and validate a config file into a ``Plan``; raises ``ConfigError``.

    ``loader``: the running plan's, on reload, so an ``app:`` named before is the same object
    (its lifespan goes on) and only new ones are imported."""
    path = Path(path)
    return build(load_file(path), path.parent, loader=loader)


def loads(text: str, name: str = "<string>", base_dir: Path | None = None) -> Plan:
    return build(load_text(text, name), base_dir or Path.cwd())


def build(source: Source, base_dir: Path, *, loader: app_loading.AppLoader | None = None) -> Plan:
    config = _validate(GatewayConfig, source.data, source, ())
    assert isinstance(config, GatewayConfig)
    app_loading.add_to_path([str((base_dir / p).resolve()) for p in config.python_path] + [str(base_dir.resolve())])
    django = _django(config, source)
    adapters = _discover(config, source, base_dir)
    plans = _adapter_plans(config, source, adapters)
    _check_listeners(plans, source)
    if loader is None:
        loader = app_loading.AppLoader(
            django=django, django_static=config.django.static if config.django else "auto",
            django_handler=config.django.handler if config.django else "asgi",
        )
    routers = _routers(config, source, plans, adapters, loader, django)
    bridges = build_bridges(
        config.bridges, source, {p.name: p.cls for p in plans}, {name: cls for name, (cls, _) in adapters.items()}, _validate,
    )
    _bridge_routes(bridges, routers)
    for ap in plans:  # every protocol served has a router, empty or not, so a reload can fill it
        for scope_type in ap.cls.scope_types:
            routers.setdefault(scope_type, Router([]))
    layer_class, options = _layer(config, source, django)
    return Plan(config, source, plans, routers, layer_class, options, django=django, loader=loader, bridges=bridges)


def _bridge_routes(bridges: list[bridge_config.Bridge], routers: dict[str, Router]) -> None:
    """A bridge from a protocol is a route, ahead of the protocol's own routes (in file order)."""
    ahead: dict[str, list[Route]] = {}
    for bridge in bridges:
        if bridge.route is None:
            continue
        app = InboundBridge(bridge)
        ahead.setdefault(bridge.source, []).append(Route(
            bridge.route.matcher(), app, name=bridge.name, timeout=bridge.route.timeout,
            target=f"bridge -> {bridge.describe_target()}", endpoint=app, config=bridge.route,
        ))
    for protocol, routes in ahead.items():
        current = routers.get(protocol)
        routers[protocol] = Router([*routes, *(current.routes if current else [])])


def _django(config: GatewayConfig, source: Source) -> bool:
    """Set Django up (before any app import) when the YAML or the environment asks for it."""
    from .django import setup as django_setup

    wanted = django_setup.requested(config.django is not None, config.django.settings if config.django else None)
    if wanted is None:
        return False
    module, origin = wanted
    try:
        django_setup.setup(module, origin)
    except django_setup.DjangoSetupError as exc:
        key: KeyPath = ("django", "settings") if origin == "django.settings" else ("django",) if origin == "django" else ()
        raise source.error(key, str(exc)) from None
    return True


def _discover(config: GatewayConfig, source: Source, base_dir: Path) -> dict[str, tuple[type[Adapter], str]]:
    explicit = "paths" in source.data.get("plugins", {})
    dirs = [base_dir / p for p in config.plugins.paths] if explicit else [Path.cwd() / p for p in config.plugins.paths]
    try:
        return discover(dirs, required_dirs=dirs if explicit else ())
    except PluginError as exc:
        key: KeyPath = ("plugins", "paths") if explicit else ()
        raise source.error(key, str(exc)) from None


def _adapter_plans(config: GatewayConfig, source: Source, adapters: dict[str, tuple[type[Adapter], str]]) -> list[AdapterPlan]:
    plans = []
    for name, block in config.adapters.items():
        found = adapters.get(name)
        if found is None:
            known = ", ".join(sorted(adapters)) or "none"
            owners = [a for a, (cls, _) in adapters.items() if name in getattr(cls.config_model, "model_fields", {})]
            hint = f"; {name!r} is a key of adapters.{owners[0]}: indent it under that adapter" if owners else ""
            raise source.error(("adapters", name), f"unknown adapter {name!r} (available: {known}){hint}")
        cls = found[0]
        plans.append(AdapterPlan(name, cls, _validate(cls.config_model, block or {}, source, ("adapters", name))))
    return plans


def _check_listeners(plans: list[AdapterPlan], source: Source) -> None:
    seen: dict[str, str] = {}
    for plan in plans:
        for addr in plan.cls.listen_addresses(plan.config):
            if addr.endswith(":0"):
                continue
            if addr in seen:
                raise source.error(
                    ("adapters", plan.name),
                    f"{addr} is already used by adapters.{seen[addr]}: one address can only be listened on once",
                )
            seen[addr] = plan.name


def _routers(
    config: GatewayConfig,
    source: Source,
    plans: list[AdapterPlan],
    adapters: dict[str, tuple[type[Adapter], str]],
    loader: app_loading.AppLoader,
    django: bool,
) -> dict[str, Router]:
    served = {t: p.cls for p in plans for t in p.cls.scope_types}
    known = {t: cls for cls, _ in adapters.values() for t in cls.scope_types}
    routers: dict[str, Router] = {}
    for protocol, entries in config.routes.items():
        where: KeyPath = ("routes", protocol)
        cls = served.get(protocol)
        if cls is None:
            if protocol in known:
                name = known[protocol].name
                raise source.error(where, f"routes for {protocol!r} need the {name!r} adapter: add 'adapters: {{{name}: ...}}'")
            raise source.error(where, f"unknown protocol {protocol!r} (no adapter serves it; known: {', '.join(sorted(known)) or 'none'})")
        model = cls.route_models[protocol]
        routes: list[Route] = []
        for i, entry in enumerate(entries):
            route_cfg = _validate(model, entry, source, (*where, i))
            path = getattr(route_cfg, "path", None)
            if isinstance(path, str) and not path.startswith("/"):
                # Django's path() patterns have no leading slash; a request path always has one
                route_cfg = route_cfg.model_copy(update={"path": "/" + path})
            try:
                leaves = list(route_cfg.expand())
            except ValueError as exc:
                raise source.error((*where, i), str(exc)) from None
            for matcher, leaf, middleware, sub in leaves:
                leaf_key = (*where, i, *sub)
                assert leaf.app is not None
                if leaf.app == app_loading.DJANGO and protocol != "http":
                    raise source.error((*leaf_key, "app"), f"'app: django' serves http routes only (Django's handler "
                                       f"does not speak {protocol}); route {protocol} to a consumer")
                try:
                    endpoint = loader.app(leaf.app)
                except app_loading.AppLoadError as exc:
                    raise source.error((*leaf_key, "app"), str(exc)) from None
                try:
                    wrapped = loader.wrap(endpoint, middleware)
                except app_loading.AppLoadError as exc:
                    raise source.error((*leaf_key, "middleware"), str(exc)) from None
                origins = _origins(protocol, route_cfg, leaf, django, source, (*where, i))
                if origins is not None:
                    wrapped = OriginCheck(wrapped, origins)
                routes.append(Route(
                    matcher, wrapped, name=leaf.name, timeout=leaf.timeout, middleware=tuple(middleware),
                    target=leaf.app, endpoint=endpoint, config=leaf,
                ))
        routers[protocol] = Router(routes)
    return routers


def _origins(protocol: str, route: Any, leaf: Any, django: bool, source: Source, where: KeyPath) -> Origins | None:
    """The Origin check a websocket route gets: its own ``origins:`` (an ``include``'s leaf may
    set its own), else, with Django, ``ALLOWED_HOSTS`` as Channels' ``AllowedHostsOriginValidator``."""
    given = getattr(leaf, "origins", None) or getattr(route, "origins", None)
    if protocol != "websocket":
        if given is not None:
            raise source.error((*where, "origins"), "'origins' checks WebSocket handshakes: use it on websocket routes")
        return None
    if given is not None:
        return Origins.parse(given)
    if django:
        from .django.origins import allowed_hosts

        try:
            return Origins.parse(allowed_hosts(), source_name="ALLOWED_HOSTS")
        except ValueError as exc:
            raise source.error(("django", "settings") if "django" in source.data else (), str(exc)) from None
    return None


def _layer(config: GatewayConfig, source: Source, django: bool) -> tuple[type[BaseChannelLayer], dict[str, Any]]:
    backend, options = config.layer.backend, dict(config.layer.model_extra or {})
    if django:
        backend, options = _shared_with_channels(backend, options, source)
    spec = BACKENDS.get(backend, backend)
    try:
        cls = app_loading.import_string(spec)
    except app_loading.AppLoadError as exc:
        hint = " (install the redis extra: pip install 'asgi-gateway[redis]')" if backend == "redis" else ""
        raise source.error(("layer", "backend"), f"{exc}{hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseChannelLayer)):
        raise source.error(("layer", "backend"), f"{spec!r} is not a channel layer (subclass gateway.layers.BaseChannelLayer)")
    validated = _validate(cls.options_model, options, source, ("layer",))
    return cls, validated.model_dump()


def _shared_with_channels(backend: str, options: dict[str, Any], source: Source) -> tuple[str, dict[str, Any]]:
    """One layer for the gateway and Channels: ``CHANNEL_LAYERS["default"]`` when the YAML has no
    ``layer:``; when both are given they must describe the same layer."""
    from .django import layers as django_layers

    try:
        shared = django_layers.from_settings()
    except django_layers.LayerSettingsError as exc:
        raise source.error(("django", "settings") if "django" in source.data else (), str(exc)) from None
    if shared is None:
        return backend, options
    warning = django_layers.outside_processes_warning()
    if warning:
        log.warning("django.layer_not_shared_outside", detail=warning)
    if "layer" not in source.data:
        return shared
    ours = (django_layers.EQUIVALENT.get(BACKENDS.get(backend, backend), backend), _layer_identity(options))
    theirs = (shared[0], _layer_identity(shared[1]))
    if ours != theirs:
        raise source.error(("layer", "backend"), (
            f"'layer:' ({django_layers.describe(backend, options)}) and Django's CHANNEL_LAYERS['default'] "
            f"({django_layers.describe(*shared)}) describe different layers: Channels code and the gateway would not "
            "see each other's messages. Remove one of them (the gateway then uses the other) or make them agree"
        ))
    return backend, options


def _layer_identity(options: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two layer configurations the same layer: where it lives and its key prefix."""
    hosts = [options["url"]] if options.get("url") else options.get("hosts") or []
    return tuple(str(list(h) if isinstance(h, tuple) else h) for h in hosts), options.get("prefix", "asgi")


def _validate(model: type[BaseModel], data: Any, source: Source, where: KeyPath) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise source.error(where, f"must be a mapping, not {_kind(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, model)
        loc, message = problems[0]
        error = source.error((*where, *loc), message)
        for other_loc, other in problems[1:]:
            also = source.error((*where, *other_loc), other)
            error.message += f"\n  and {also}"
            error.args = (error.message,)
        raise error from None


def _problems(exc: ValidationError, model: type[BaseModel]) -> list[tuple[tuple[Any, ...], str]]:
    """Every problem once, in file order, in a user's words: pydantic reports one error per
    member of a union (``str``, ``list[str]``) at the same key; those become one line."""
    grouped: dict[tuple[Any, ...], list[Any]] = {}
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        grouped.setdefault(loc, []).append(error)
    out = []
    for loc, errors in grouped.items():
        values = [e for e in errors if e["type"] in ("value_error", "assertion_error")]
        if values:
            out.append((loc, _message(values[0], model, loc)))
        elif len(errors) > 1 and all(e["type"] in _KINDS for e in errors):
            kinds = " or ".join(dict.fromkeys(_KINDS[e["type"]] for e in errors))
            out.append((loc, f"must be {kinds} (got {_shown(errors[0].get('input'))})"))
        else:
            out.append((loc, _message(errors[0], model, loc)))
    return out


_KINDS = {
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "int_type": "a whole number",
    "int_parsing": "a whole number", "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "model_type": "a mapping", "literal_error": "one of the listed values",
}


def _is_union_tag(part: Any) -> bool:
    """Loc parts pydantic adds for a union member or a validator, not keys of the file."""
    if not isinstance(part, str):
        return False
    return "[" in part or part.startswith("function-") or part in ("str", "int", "float", "bool", "list", "dict", "none")


def _shown(value: Any) -> str:
    if value is None:
        return "nothing (an empty value: is the block below it indented?)"
    return repr(value)


def _message(error: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key {loc[-1]!r}{hint}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}" if loc else "missing required key"
    msg: str = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be "):]
    if kind in _KINDS and kind != "literal_error":
        return f"must be {_KINDS[kind]} (got {_shown(error.get('input'))})"
    if "input" in error and kind not in ("value_error", "assertion_error") and not isinstance(error["input"], (dict, list)):
        msg += f" (got {_shown(error['input'])})"
    return msg


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field_info = getattr(current, "model_fields", {}).get(part)
        if field_info is None:
            return []
        current = inner_model(field_info.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
