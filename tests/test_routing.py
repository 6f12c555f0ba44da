"""The router machinery and the http/websocket path matcher, used from Python without YAML."""

from __future__ import annotations

import uuid

import pytest

from gateway.paths import PathMatcher, PatternError
from gateway.routing import NoRouteMatched, ProtocolTypeRouter, Route, Router, path, re_path
from gateway.schema import PathRoute


def http_scope(p: str, host: str | None = None) -> dict:
    headers = [(b"host", host.encode())] if host else []
    return {"type": "http", "path": p, "headers": headers, "method": "GET"}


async def call(app, scope, events=({"type": "http.request"},)):
    inbox = list(events)
    sent = []

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def captured():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    return app, seen


@pytest.mark.parametrize(
    "pattern, p, kwargs",
    [
        ("/ws/chat/<room>/", "/ws/chat/lobby/", {"room": "lobby"}),
        ("/items/<int:id>/", "/items/42/", {"id": 42}),
        ("/blog/<slug:s>/", "/blog/hello-world_2/", {"s": "hello-world_2"}),
        ("/u/<uuid:u>/", "/u/12345678-1234-5678-1234-567812345678/", {"u": uuid.UUID("12345678-1234-5678-1234-567812345678")}),
        ("/files/<path:rest>", "/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
        ("/caf\u00e9/<name>/", "/caf\u00e9/x/", {"name": "x"}),
    ],
)
def test_converters(pattern, p, kwargs):
    assert PathMatcher.build(path=pattern).match(http_scope(p)) == ((), kwargs)


@pytest.mark.parametrize(
    "pattern, p",
    [
        ("/items/<int:id>/", "/items/x/"),
        ("/items/<int:id>/", "/items/42"),  # trailing slash is significant
        ("/blog/<slug:s>/", "/blog/a b/"),
        ("/u/<uuid:u>/", "/u/not-a-uuid/"),
        ("/ws/chat/<room>/", "/ws/chat/a/b/"),  # str does not cross '/'
        ("/static/", "/static/x"),  # full match, not prefix
    ],
)
def test_converters_refuse(pattern, p):
    assert PathMatcher.build(path=pattern).match(http_scope(p)) is None


def test_regex_routes_named_and_positional():
    assert PathMatcher.build(regex=r"^/r/(?P<year>\d{4})/$").match(http_scope("/r/2024/")) == ((), {"year": "2024"})
    assert PathMatcher.build(regex=r"^/p/(\d+)/(\w+)$").match(http_scope("/p/7/x")) == (("7", "x"), {})
    assert PathMatcher.build(regex=r"/p/\d+").match(http_scope("/p/7/x")) is None  # anchored both ends


def test_host_matching():
    m = PathMatcher.build(path="/", host="<tenant>.example.com")
    assert m.match(http_scope("/", "acme.example.com:8000")) == ((), {"tenant": "acme"})
    assert m.match(http_scope("/", "a.b.example.com")) is None
    assert m.match(http_scope("/", "other.org")) is None
    exact = PathMatcher.build(path="/", host="api.example.com")
    assert exact.match(http_scope("/", "API.example.com")) == ((), {})


def test_patterns_without_groups_capture_nothing():
    plain = PathMatcher.build(path="/health")
    first = plain.match(http_scope("/health"))
    assert first == ((), {})
    assert plain.match(http_scope("/healthz")) is None
    first[1]["mutated"] = True  # an app may change its url_route kwargs: the next match gets its own
    assert plain.match(http_scope("/health")) == ((), {})
    assert PathMatcher.build(regex=".*").match(http_scope("/any/thing")) == ((), {})
    # no groups in the path, but a host: the host still has to match, and its captures count
    hosted = PathMatcher.build(path="/", host="<tenant>.example.com")
    assert hosted.match(http_scope("/", "other.org")) is None
    # no groups in the route, but in its include prefix
    nested = PathMatcher.build(path="/items").under(PathMatcher.build(path="/<version>"))
    assert nested.match(http_scope("/v2/items")) == ((), {"version": "v2"})


def test_pattern_errors():
    with pytest.raises(PatternError, match="unknown converter"):
        PathMatcher.build(path="/<float:x>/")
    with pytest.raises(PatternError, match="appears twice"):
        PathMatcher.build(path="/<a>/<a>/")
    with pytest.raises(PatternError, match="malformed"):
        PathMatcher.build(path="/<a/")


async def test_router_first_match_wins_and_sets_url_route():
    first, seen_first = captured()
    second, seen_second = captured()
    router = Router([path("/a/<int:n>/", first, name="ints"), path("/a/<x>/", second, name="any")])
    await call(router, http_scope("/a/5/"))
    await call(router, http_scope("/a/b/"))
    assert seen_first[0]["url_route"] == {"args": (), "kwargs": {"n": 5}}
    assert seen_first[0]["route_name"] == "ints"
    assert seen_second[0]["url_route"]["kwargs"] == {"x": "b"}


async def test_unmatched_http_is_404():
    sent = await call(Router([]), http_scope("/nothing"))
    assert sent[0]["status"] == 404
    assert sent[1]["body"] == b"Not Found\n"


async def test_unmatched_websocket_handshake_is_refused():
    sent = await call(Router([]), {"type": "websocket", "path": "/x", "headers": []}, [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1000}]  # close before accept: the server answers 403


async def test_unmatched_message_scope_raises():
    with pytest.raises(NoRouteMatched):
        await call(Router([]), {"type": "mqtt", "topic": "x"})


async def test_protocol_type_router():
    http_app, seen = captured()
    ws_app, ws_seen = captured()
    router = ProtocolTypeRouter({"http": Router([re_path(r".*", http_app)]), "websocket": ws_app})
    await call(router, http_scope("/x"))
    await call(router, {"type": "websocket", "path": "/", "headers": []})
    assert len(seen) == 1 and len(ws_seen) == 1
    assert router.resolve(http_scope("/x")).route.app is http_app
    with pytest.raises(ValueError, match="no application configured for scope type 'mqtt'"):
        await call(router, {"type": "mqtt"})


def test_include_prefixes_are_flattened():
    cfg = PathRoute.model_validate({
        "path": "/api/<version>/",
        "middleware": ["outer"],
        "include": [
            {"path": "items/<int:id>/", "app": "a:b", "name": "item"},
            {"regex": r"^search/(?P<q>\w+)$", "app": "a:c", "middleware": ["inner"]},
        ],
    })
    leaves = list(cfg.expand())
    assert [leaf.name for _, leaf, _, _ in leaves] == ["item", None]
    assert leaves[0][0].match(http_scope("/api/v2/items/9/")) == ((), {"version": "v2", "id": 9})
    assert leaves[0][0].match(http_scope("/items/9/")) is None
    assert leaves[1][0].match(http_scope("/api/v1/search/cats")) == ((), {"version": "v1", "q": "cats"})
    assert leaves[1][2] == ["outer", "inner"]
    assert leaves[1][3] == ("include", 1)


def test_include_capture_clash_is_an_error():
    with pytest.raises(ValueError, match="captured by both"):
        list(PathRoute.model_validate({"path": "/<id>/", "include": [{"path": "<id>/", "app": "a:b"}]}).expand())


async def test_middleware_order_first_listed_is_outermost():
    from gateway.apps import AppLoader

    inner_app, seen = captured()
    wrapped = AppLoader().wrap(inner_app, ["testapps.basic:outer", "testapps.basic:inner"])
    await call(Router([Route(PathMatcher.build(path="/"), wrapped)]), http_scope("/"))
    assert seen[0]["trail"] == ["outer", "inner"]
