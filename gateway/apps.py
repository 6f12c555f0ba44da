"""Turning ``app:`` and ``middleware:`` strings from YAML into ASGI 3 callables.

Everything is imported once, at start, and cached per import string, so the same application
named by several routes is one object (lifespan runs once for it).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .types import ASGIApp, Receive, Scope, Send

DJANGO = "django"


class AppLoadError(Exception):
    """An ``app:`` or ``middleware:`` import string that does not give a usable object."""


def import_string(spec: str) -> Any:
    """Import ``module:attr`` (or ``module.attr``), with an error a user can act on."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    elif "." in spec:
        module_name, _, attr = spec.rpartition(".")
    else:
        raise AppLoadError(f"{spec!r} is not an import string (write 'package.module:attribute')")
    if not module_name or not attr:
        raise AppLoadError(f"{spec!r} is not an import string (write 'package.module:attribute')")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(f"cannot import {spec!r}: no module named {exc.name!r}") from None
        raise AppLoadError(f"cannot import {spec!r}: {summarise_exception(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the module raised while importing: show where
        raise AppLoadError(f"cannot import {spec!r}: {summarise_exception(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"cannot import {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def summarise_exception(exc: BaseException) -> str:
    """The exception line plus the innermost frames: enough to find the bug without a dump."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-3:] if "importlib" not in f.filename)
    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{head} (at {where})" if where else head


class AppLoader:
    """Loads and caches applications and middleware factories."""

    def __init__(self, *, django: bool = False, django_static: str = "auto", django_handler: str = "asgi") -> None:
        self.django = django
        self.django_static = django_static
        self.django_handler = django_handler
        self._apps: dict[str, ASGIApp] = {}
        self._middleware: dict[str, Callable[[ASGIApp], ASGIApp]] = {}

    def app(self, spec: str) -> ASGIApp:
        cached = self._apps.get(spec)
        if cached is None:
            cached = self._apps[spec] = self._load_app(spec)
        return cached

    def _load_app(self, spec: str) -> ASGIApp:
        if spec == DJANGO:
            return self._django()
        return as_asgi3(import_string(spec), spec)

    def _django(self) -> ASGIApp:
        if not self.django:
            try:
                import django  # noqa: F401
            except ImportError:
                raise AppLoadError("'app: django' needs Django: pip install 'asgi-gateway[django]'") from None
            raise AppLoadError(
                "'app: django' needs Django set up: add 'django: {settings: yourproject.settings}' "
                "(or set DJANGO_SETTINGS_MODULE)"
            )
        from .django.asgi import application

        return application(self.django_static, self.django_handler)  # type: ignore[arg-type]

    def wrap(self, app: ASGIApp, middleware: list[str]) -> ASGIApp:
        """Apply middleware factories; the first listed is outermost, the last innermost."""
        for spec in reversed(middleware):
            factory = self._middleware.get(spec)
            if factory is None:
                factory = import_string(spec)
                if not callable(factory):
                    raise AppLoadError(f"middleware {spec!r} is not callable")
                self._middleware[spec] = factory
            app = factory(app)
            if not callable(app):
                raise AppLoadError(f"middleware {spec!r} did not return an ASGI application")
        return app


def as_asgi3(obj: Any, spec: str = "") -> ASGIApp:
    """Normalise an application object to an ASGI 3 callable."""
    name = spec or repr(obj)
    if inspect.isclass(obj):
        if hasattr(obj, "as_asgi"):
            return obj.as_asgi()
        if hasattr(obj, "__await__"):
            return obj  # type: ignore[return-value]
        return _Asgi2(obj)  # a class instantiated with the scope: ASGI 2 style
    if not callable(obj):
        raise AppLoadError(f"{name} is not callable (an ASGI app is 'async def app(scope, receive, send)')")
    if _is_async(obj):
        return obj
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if len([p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 1:
        return _Asgi2(obj)
    raise AppLoadError(
        f"{name} is neither an ASGI 3 application (async def app(scope, receive, send)) "
        "nor an ASGI 2 one (def app(scope) returning an async callable)"
    )


def _is_async(obj: Any) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - the method itself, to ask if it is a coroutine function
    return inspect.iscoroutinefunction(call)


class _Asgi2:
    """Wraps an ASGI 2 double-callable ``app(scope)`` -> ``instance(receive, send)``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.consumer_class = getattr(app, "consumer_class", app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def add_to_path(paths: list[str]) -> None:
    """Make the config's ``python_path`` entries importable (front of ``sys.path``)."""
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
