"""Small ASGI applications of every shape the app loader must accept."""

from __future__ import annotations

import asyncio
from typing import Any

RECORD: list[Any] = []


async def hello(scope, receive, send):
    body = f"hello {scope['url_route']['kwargs']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


class Asgi3Class:
    async def __call__(self, scope, receive, send):
        await hello(scope, receive, send)


asgi3_instance = Asgi3Class()


class Asgi2App:
    """ASGI 2: instantiated with the scope, then awaited with receive/send."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2"})


def asgi2_function(scope):
    async def instance(receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2-fn"})

    return instance


class WithAsAsgi:
    """A consumer-like class: the loader must call as_asgi()."""

    @classmethod
    def as_asgi(cls):
        async def app(scope, receive, send):
            RECORD.append(("as_asgi", scope["type"]))
            await hello(scope, receive, send)

        app.consumer_class = cls
        return app


not_callable = 42


def sync_three_args(scope, receive, send):
    return None


async def record_syslog(scope, receive, send):
    event = await receive()
    RECORD.append((scope["route_name"], scope["url_route"]["kwargs"], event["line"]))
    assert (await receive())["type"] == "syslog.disconnect"


async def failing(scope, receive, send):
    raise RuntimeError("boom")


async def slow(scope, receive, send):
    if scope["type"] == "lifespan":
        raise ValueError("no lifespan here")
    await asyncio.sleep(30)


def tag(label):
    """Middleware factory factory: records the order middleware run in."""

    def factory(app):
        async def middleware(scope, receive, send):
            scope = dict(scope)
            scope.setdefault("trail", []).append(label)
            await app(scope, receive, send)

        return middleware

    return factory


outer = tag("outer")
inner = tag("inner")
