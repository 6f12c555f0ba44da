"""Setting Django up once, before any ``app:`` is imported, whatever the order of routes.

A Channels consumer module imports models at the top, so Django must be ready before the first
``app:`` import; ``gateway.config`` calls ``setup`` right after ``python_path`` is applied.
"""

from __future__ import annotations

import importlib
import os

from ..apps import summarise_exception

ENV = "DJANGO_SETTINGS_MODULE"


class DjangoSetupError(Exception):
    """Django could not be set up; the message says why in a user's words."""


def requested(section: bool, settings_key: str | None) -> tuple[str | None, str] | None:
    """``(settings module, where it came from)`` when Django is wanted: the YAML key wins over
    the environment; a ``django:`` block without a module accepts a Django that the embedding
    program configured itself (``settings.configure()``)."""
    if settings_key:
        return settings_key, "django.settings"
    from_env = os.environ.get(ENV)
    if from_env:
        return from_env, f"the {ENV} environment variable"
    if section:
        return None, "django"
    return None


def setup(module: str | None, origin: str) -> None:
    """Import the settings module and run ``django.setup()``; idempotent for the same module.

    Under ``manage.py rungateway`` Django is already set up: the YAML may then only name the
    same settings module (or none)."""
    try:
        import django
        from django.conf import settings
    except ImportError:
        raise DjangoSetupError(
            f"{origin} names {module!r} but Django is not installed: pip install 'asgi-gateway[django]'"
        ) from None
    if module is None:
        if not settings.configured:
            raise DjangoSetupError(
                "DJANGO_SETTINGS_MODULE is not set: name the project's settings, e.g. django: {settings: mysite.settings}"
            )
        _setup(django)
        return
    if settings.configured:
        current = getattr(settings, "SETTINGS_MODULE", None)
        if current and current != module:
            raise DjangoSetupError(
                f"{origin} names {module!r} but Django is already set up with {current!r} in this process"
            )
        _setup(django)
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise DjangoSetupError(
                f"cannot import the settings module {module!r} (from {origin}): no module named {exc.name!r}; "
                "run the gateway from the project's folder or add it to python_path"
            ) from None
        raise DjangoSetupError(f"the settings module {module!r} failed to import: {summarise_exception(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the settings module itself raised
        raise DjangoSetupError(f"the settings module {module!r} failed to import: {summarise_exception(exc)}") from None
    os.environ[ENV] = module
    _setup(django)


def _setup(django: object) -> None:
    from django.apps import apps

    if not apps.ready:
        try:
            django.setup(set_prefix=False)  # type: ignore[attr-defined]  # the ASGI handler sets the prefix per request
        except Exception as exc:  # noqa: BLE001 - ImproperlyConfigured, an INSTALLED_APPS entry that does not import, ...
            raise DjangoSetupError(f"Django set-up failed: {summarise_exception(exc)}") from None
