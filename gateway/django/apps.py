from __future__ import annotations

from django.apps import AppConfig


class GatewayAppConfig(AppConfig):
    """``INSTALLED_APPS = [..., "gateway.django"]`` brings ``manage.py rungateway``.

    The label is not the default ``django`` (the last part of the module path), which would read
    as Django's own."""

    name = "gateway.django"
    label = "asgi_gateway"
    verbose_name = "asgi-gateway"

    def ready(self) -> None:
        from .layers import LayerSettingsError, share_outside_the_gateway

        try:
            share_outside_the_gateway()
        except LayerSettingsError:
            pass  # reported, with the settings' location, when the gateway loads its config
