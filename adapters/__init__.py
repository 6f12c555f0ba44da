"""The built-in protocol adapters (installed as ``gateway_adapters``).

Each subpackage is a plugin like any third-party one: it registers through the
``asgi_gateway.adapters`` entry point group and talks to the core only through
``gateway.plugins.AdapterContext``.
"""
