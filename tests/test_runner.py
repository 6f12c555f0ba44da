"""The instance runner: queues, validation, isolation, timeouts, cancellation, logs, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import structlog

from gateway.errors import InvalidEvent
from gateway.events import HTTP_SEND, EventSpec, core_table
from gateway.metrics import Metrics
from gateway.routing import Match, MatchAll, Route
from gateway.runner import Outcome, Runner, RunnerSettings


def make_runner(**settings) -> tuple[Runner, Metrics]:
    table = core_table()
    table.register("mqtt", {"mqtt.publish": EventSpec({"topic": (str,), "payload": (bytes, str)}, frozenset({"topic"}))})
    metrics = Metrics()
    return Runner(table, metrics, RunnerSettings(**settings)), metrics


def match_for(app, name="r", timeout=None) -> Match:
    return Match(Route(MatchAll(), app, name=name, timeout=timeout), (), {"k": 1})


def metric(metrics: Metrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


class Sink:
    def __init__(self):
        self.events = []

    async def __call__(self, event):
        self.events.append(event)


async def test_message_scope_ok_is_the_acknowledgement():
    runner, metrics = make_runner()
    got = []

    async def app(scope, receive, send):
        got.append(await receive())
        got.append(await receive())
        got.append(scope["url_route"])
        await send({"type": "mqtt.publish", "topic": "out", "payload": b"x"})

    sink = Sink()
    result = await runner.run_message(match_for(app), {"type": "mqtt"}, {"type": "mqtt.message", "payload": b"1"}, sink, adapter="mqtt")
    assert result.ok and result.outcome is Outcome.OK
    assert got == [{"type": "mqtt.message", "payload": b"1"}, {"type": "mqtt.disconnect"}, {"args": (), "kwargs": {"k": 1}}]
    assert sink.events == [{"type": "mqtt.publish", "topic": "out", "payload": b"x"}]
    assert metric(metrics, "gateway_instances_total", adapter="mqtt", scope_type="mqtt", route="r", outcome="ok") == 1
    assert metric(metrics, "gateway_instance_duration_seconds_count", adapter="mqtt", scope_type="mqtt", route="r") == 1
    assert metric(metrics, "gateway_instances_active", adapter="mqtt") == 0


@pytest.mark.parametrize("fresh", [False, True])
async def test_the_app_sees_its_route_whether_or_not_the_scope_is_copied(fresh):
    """``fresh_scope=True``: the adapter's own dict gets ``url_route``/``route_name`` (no copy);
    without it the adapter's scope stays as it was and the app gets a copy."""
    runner, _ = make_runner()
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    scope = {"type": "http", "path": "/"}
    route = Route(MatchAll(), app, name="r", state={"pool": 1})
    result = await runner.instance(Match(route, (), {"k": 1}), scope, Sink(), adapter="http", fresh_scope=fresh).run()
    assert result.ok
    (got,) = seen
    assert got["url_route"] == {"args": (), "kwargs": {"k": 1}} and got["route_name"] == "r"
    assert got["state"] == {"pool": 1} and got["state"] is not route.state  # lifespan state: a copy per instance either way
    assert (got is scope) is fresh
    if not fresh:
        assert scope == {"type": "http", "path": "/"}


async def test_exception_is_isolated_and_reported_as_failed():
    runner, metrics = make_runner()

    async def bad(scope, receive, send):
        raise RuntimeError("kaput")

    async def good(scope, receive, send):
        await asyncio.sleep(0.01)

    results = await asyncio.gather(
        runner.run_message(match_for(bad, "bad"), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt"),
        runner.run_message(match_for(good, "good"), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt"),
    )
    assert results[0].outcome is Outcome.FAILED and "kaput" in str(results[0].error)
    assert results[1].ok
    assert metric(metrics, "gateway_instances_total", adapter="mqtt", scope_type="mqtt", route="bad", outcome="failed") == 1


async def test_route_timeout_for_message_scopes():
    runner, _ = make_runner()

    async def slow(scope, receive, send):
        await asyncio.sleep(10)

    result = await runner.run_message(match_for(slow, timeout=0.05), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt")
    assert result.outcome is Outcome.TIMEOUT


async def test_default_message_timeout_applies_without_route_timeout():
    runner, _ = make_runner(message_timeout=0.05)

    async def slow(scope, receive, send):
        await asyncio.sleep(10)

    result = await runner.run_message(match_for(slow), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt")
    assert result.outcome is Outcome.TIMEOUT


async def test_timeouts_of_many_instances_each_fire_at_their_own_deadline():
    """One timer serves every deadline: a shorter timeout registered after a longer one still
    fires first, and instances that finish in time are not touched."""
    runner, metrics = make_runner()
    ended: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def slow(scope, receive, send):
        await asyncio.sleep(10)

    async def quick(scope, receive, send):
        await asyncio.sleep(0.01)

    async def run(name, app, timeout):
        result = await runner.run_message(match_for(app, name=name, timeout=timeout), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt")
        ended[name] = loop.time() - start
        return result.outcome

    start = loop.time()
    long, short, fine = await asyncio.gather(run("long", slow, 0.6), run("short", slow, 0.1), run("fine", quick, 0.3))
    assert (long, short, fine) == (Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.OK)
    assert ended["short"] < ended["long"]  # order, not speed: the later deadline fired later
    assert ended["long"] >= 0.6 and ended["short"] >= 0.1
    assert metric(metrics, "gateway_instances_total", adapter="mqtt", scope_type="mqtt", route="short", outcome="timeout") == 1
    assert not runner._deadlines._pending


async def test_an_app_that_swallows_the_timeout_still_timed_out():
    runner, _ = make_runner()

    async def stubborn(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass

    result = await runner.run_message(match_for(stubborn, timeout=0.05), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt")
    assert result.outcome is Outcome.TIMEOUT
    assert asyncio.current_task().cancelling() == 0  # the runner took its cancel back


@pytest.mark.parametrize("with_deadline", [False, True])
async def test_a_shutdown_cancel_is_not_swallowed_even_when_the_deadline_fires_with_it(with_deadline):
    runner, metrics = make_runner()

    async def slow(scope, receive, send):
        await asyncio.sleep(10)

    task = asyncio.ensure_future(runner.run_message(match_for(slow, timeout=30), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt"))
    await asyncio.sleep(0.01)
    task.cancel()  # e.g. the end of the drain
    if with_deadline:
        (inst,) = runner.active
        inst._expire()  # what the deadline timer does, in the same loop turn
    with pytest.raises(asyncio.CancelledError):
        await task
    assert metric(metrics, "gateway_instances_total", adapter="mqtt", scope_type="mqtt", route="r", outcome="cancelled") == 1
    assert not runner._deadlines._pending


async def test_app_raising_its_own_timeout_error_is_a_failure_not_a_timeout():
    runner, _ = make_runner()

    async def app(scope, receive, send):
        raise TimeoutError("my own")

    result = await runner.run_message(match_for(app, timeout=5), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt")
    assert result.outcome is Outcome.FAILED


@pytest.mark.parametrize(
    "event, problem",
    [
        ({"type": "mqtt.publsh", "topic": "x"}, "unknown event type 'mqtt.publsh'"),
        ({"type": "mqtt.publish"}, "missing required field 'topic'"),
        ({"type": "mqtt.publish", "topic": 5}, "field 'topic' must be str, not int"),
        ("not a dict", "event must be a dict"),
    ],
)
async def test_invalid_events_fail_the_instance_with_a_clear_error(event, problem):
    runner, _ = make_runner()
    caught = []

    async def app(scope, receive, send):
        try:
            await send(event)
        except InvalidEvent as exc:
            caught.append(str(exc))
            raise

    sink = Sink()
    result = await runner.run_message(match_for(app), {"type": "mqtt"}, {"type": "mqtt.message"}, sink, adapter="mqtt")
    assert result.outcome is Outcome.FAILED
    assert problem in caught[0]
    assert "application" in caught[0]  # names the app
    assert sink.events == []  # nothing invalid reaches the adapter


async def test_swallowed_invalid_event_still_fails_and_blocks_later_sends():
    runner, _ = make_runner()

    async def app(scope, receive, send):
        try:
            await send({"type": "nope"})
        except InvalidEvent:
            pass
        with pytest.raises(InvalidEvent):
            await send({"type": "mqtt.publish", "topic": "ok"})

    sink = Sink()
    result = await runner.run_message(match_for(app), {"type": "mqtt"}, {"type": "mqtt.message"}, sink, adapter="mqtt")
    assert result.outcome is Outcome.FAILED and sink.events == []


@pytest.mark.parametrize(
    "event",
    [
        {"type": "http.response.start", "status": 42},
        {"type": "http.response.start", "status": None},
        {"type": "http.response.start", "status": 200, "headers": [("a", "b")]},
        {"type": "http.response.body", "body": "text"},
    ],
)
async def test_http_event_validation(event):
    with pytest.raises(InvalidEvent):
        core_table().validate("http", event)


_HTTP_SHAPES = [
    {"type": "http.response.start", "status": 200},
    {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")], "trailers": True},
    {"type": "http.response.start", "status": 200, "headers": ((b"a", b"b"),), "extra": object()},
    {"type": "http.response.start", "status": 200, "headers": [[b"a", b"b"]]},
    {"type": "http.response.start", "status": 200, "headers": [(b"a", bytearray(b"b"))]},
    {"type": "http.response.start", "status": 200, "headers": [(b"a", "b")]},
    {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b", b"c")]},
    {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b"), (b"c",)]},
    {"type": "http.response.start", "status": 200, "headers": [()]},
    {"type": "http.response.start", "status": 200, "headers": [b"ab"]},
    {"type": "http.response.start", "status": 200, "headers": {b"a": b"b"}},
    {"type": "http.response.start", "status": 200, "trailers": 1},
    {"type": "http.response.start", "status": True},
    {"type": "http.response.start", "status": 99},
    {"type": "http.response.start", "status": 1000},
    {"type": "http.response.start", "status": "200"},
    {"type": "http.response.start", "status": None},
    {"type": "http.response.start"},
    {"type": "http.response.body"},
    {"type": "http.response.body", "body": None},
    {"type": "http.response.body", "body": b"x", "more_body": True},
    {"type": "http.response.body", "body": memoryview(b"x"), "more_body": False},
    {"type": "http.response.body", "body": "x"},
    {"type": "http.response.body", "body": b"x", "more_body": 0},
    {"type": "http.response.trailers", "headers": [(b"a", b"b")]},
    {"type": "http.response.bodyy", "body": b"x"},
    {"body": b"x"},
]


@pytest.mark.parametrize("event", _HTTP_SHAPES)
def test_http_shortcut_gives_the_full_checks_verdict(event):
    """The usual HTTP response events skip the spec walk; the answer must not change."""
    fast = core_table()
    full = core_table()
    full.register("http", {kind: replace(spec) for kind, spec in HTTP_SEND.items()})  # equal specs: no shortcut

    def verdict(table):
        try:
            table.validate("http", event)
        except InvalidEvent as exc:
            return str(exc)
        return None

    assert verdict(fast) == verdict(full)


def test_http_shortcut_steps_aside_for_replaced_specs():
    table = core_table()
    table.register("http", {"http.response.body": EventSpec({"body": (str,)})})
    table.validate("http", {"type": "http.response.body", "body": "text"})
    with pytest.raises(InvalidEvent, match="must be str"):
        table.validate("http", {"type": "http.response.body", "body": b"bytes"})


def test_websocket_event_validation():
    table = core_table()
    table.validate("websocket", {"type": "websocket.send", "text": "x"})
    with pytest.raises(InvalidEvent, match="exactly one of 'bytes' and 'text'"):
        table.validate("websocket", {"type": "websocket.send", "text": "x", "bytes": b"y"})
    with pytest.raises(InvalidEvent, match="not a valid WebSocket close code"):
        table.validate("websocket", {"type": "websocket.close", "code": 1005})


async def test_connection_scope_queue_is_bounded_and_applies_backpressure():
    runner, _ = make_runner(queue_size=2)
    release = asyncio.Event()
    received = []

    async def app(scope, receive, send):
        await release.wait()
        while True:
            event = await receive()
            received.append(event["n"] if "n" in event else event["type"])
            if event["type"] == "websocket.disconnect":
                return

    inst = runner.instance(match_for(app), {"type": "websocket"}, Sink(), adapter="t")
    inst.start()
    await inst.put({"type": "websocket.receive", "n": 1})
    await inst.put({"type": "websocket.receive", "n": 2})
    third = asyncio.ensure_future(inst.put({"type": "websocket.receive", "n": 3}))
    await asyncio.sleep(0.02)
    assert not third.done()  # queue full: the adapter waits instead of growing memory
    release.set()
    await third
    result = await inst.close({"type": "websocket.disconnect", "code": 1000})
    assert result.ok
    assert received == [1, 2, 3, "websocket.disconnect"]


async def test_close_cancels_an_app_that_ignores_disconnect_after_the_close_timeout():
    runner, metrics = make_runner(app_close_timeout=0.05)

    async def stubborn(scope, receive, send):
        await receive()
        await asyncio.sleep(30)

    inst = runner.instance(match_for(stubborn, "stubborn"), {"type": "websocket"}, Sink(), adapter="t")
    inst.start()
    await inst.put({"type": "websocket.connect"})
    result = await inst.close({"type": "websocket.disconnect", "code": 1001})
    assert result.outcome is Outcome.CANCELLED
    assert metric(metrics, "gateway_instances_total", adapter="t", scope_type="websocket", route="stubborn", outcome="cancelled") == 1
    assert not runner.active


async def test_drain_waits_for_running_then_cancels_the_rest():
    runner, _ = make_runner()
    done = []

    async def quick(scope, receive, send):
        await asyncio.sleep(0.02)
        done.append("quick")

    async def forever(scope, receive, send):
        await asyncio.sleep(30)

    a = runner.instance(match_for(quick), {"type": "websocket"}, Sink(), adapter="t")
    b = runner.instance(match_for(forever), {"type": "websocket"}, Sink(), adapter="t")
    a.start()
    b.start()
    await asyncio.sleep(0)
    cancelled = await runner.drain(0.2)
    assert done == ["quick"] and cancelled == 1
    assert b.result.outcome is Outcome.CANCELLED


async def test_one_log_line_per_finished_instance_with_context():
    import io
    import json
    import logging

    from gateway import logs as gateway_logs

    runner, _ = make_runner()
    stream = io.StringIO()

    async def app(scope, receive, send):
        structlog.get_logger("user").info("inside")
        logging.getLogger("some.library").warning("stdlib too")

    gateway_logs.configure("debug", "json", stream=stream)  # a successful instance reports at debug
    try:
        await runner.run_message(match_for(app, "named"), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt")
        structlog.get_logger("user").info("after")
    finally:
        gateway_logs.configure("info", "json")
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = [e for e in logs if e["event"] in ("inside", "stdlib too")]
    finished = [e for e in logs if e["event"] == "instance.finished"]
    after = [e for e in logs if e["event"] == "after"]
    assert len(inside) == 2 and inside[1]["adapter"] == "mqtt" and inside[1]["logger"] == "some.library"
    assert "instance" not in after[0]  # the context ends with the instance
    assert len(finished) == 1
    assert finished[0]["outcome"] == "ok" and finished[0]["route"] == "named" and "duration_ms" in finished[0]
    # lines the application logs while it runs carry the adapter, route and instance id
    assert inside[0]["adapter"] == "mqtt" and inside[0]["route"] == "named" and inside[0]["instance"] == finished[0]["instance"]


def test_a_runner_times_out_instances_again_after_a_drain_on_another_event_loop():
    """A gateway stopped and started again (a new loop) must not wait on the old loop's timer."""
    runner, _ = make_runner()

    async def slow(scope, receive, send):
        await asyncio.sleep(10)

    async def one_run(timeout):
        task = asyncio.ensure_future(runner.run_message(match_for(slow, timeout=timeout), {"type": "mqtt"}, {"type": "mqtt.message"}, Sink(), adapter="mqtt"))
        await asyncio.sleep(0.01)
        return task

    async def first():
        await one_run(0.05)  # its timer is set on this loop, then the drain cancels the instance
        await runner.drain(0)

    async def second():
        return await (await one_run(0.5))  # would wait for the first loop's timer without the reset

    asyncio.run(first())
    started = asyncio.run(asyncio.wait_for(second(), 5))
    assert started.outcome is Outcome.TIMEOUT
