"""The app loader: every application shape becomes an ASGI 3 callable, imported once."""

from __future__ import annotations

import pytest

from gateway.apps import AppLoader, AppLoadError, as_asgi3, import_string

from .test_routing import call


def scope():
    return {"type": "http", "path": "/", "headers": [], "url_route": {"args": (), "kwargs": {}}}


@pytest.mark.parametrize(
    "spec, body",
    [
        ("testapps.basic:hello", b"hello {}"),
        ("testapps.basic:asgi3_instance", b"hello {}"),
        ("testapps.basic:Asgi2App", b"asgi2"),
        ("testapps.basic:asgi2_function", b"asgi2-fn"),
        ("testapps.basic:WithAsAsgi", b"hello {}"),
        ("testapps.basic.hello", b"hello {}"),  # dotted form, as Channels writes it
    ],
)
async def test_application_shapes(spec, body):
    app = AppLoader().app(spec)
    sent = await call(app, scope())
    assert sent[-1]["body"] == body


def test_apps_are_imported_once_and_shared():
    loader = AppLoader()
    assert loader.app("testapps.basic:WithAsAsgi") is loader.app("testapps.basic:WithAsAsgi")


def test_channels_consumer_goes_through_as_asgi():
    from channels.generic.websocket import AsyncWebsocketConsumer

    app = as_asgi3(AsyncWebsocketConsumer)
    assert app.consumer_class is AsyncWebsocketConsumer


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nocolon", "is not an import string"),
        ("testapps.basic:", "is not an import string"),
        ("testapps.nothing:app", "no module named 'testapps.nothing'"),
        ("testapps.basic:nothing", "has no attribute 'nothing'"),
        ("testapps.basic:not_callable", "is not callable"),
        ("testapps.basic:sync_three_args", "neither an ASGI 3 application"),
        ("django", "needs Django set up"),
    ],
)
def test_load_errors(spec, message):
    with pytest.raises(AppLoadError, match=message):
        AppLoader().app(spec)


def test_import_string_reports_a_module_that_raises():
    with pytest.raises(AppLoadError) as info:
        import_string("testapps.broken:app")
    assert "ZeroDivisionError" in str(info.value) and "broken.py:4 in _helper" in str(info.value)
