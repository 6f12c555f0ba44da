"""Django as a first-class application behind the gateway.

``django: {settings: ...}`` in YAML (or ``DJANGO_SETTINGS_MODULE``) sets Django up before any
``app:`` is imported; ``app: django`` is the project's ASGI handler with its static files; the
gateway's channel layer is the one Channels' ``get_channel_layer()`` returns. Add
``"gateway.django"`` to ``INSTALLED_APPS`` for ``manage.py rungateway``. See docs/django.md.
"""
