"""SIGHUP / `gateway reload`: the config is re-read and swapped while connections stay open."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from .django_helpers import GatewayProcess
from .gateway_helpers import ROOT, free_port

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(120)

BEFORE = """\
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
routes:
  http:
    - {{path: /old, app: "testapps.reloading:old"}}
    - {{path: /kept, app: "testapps.reloading:kept"}}
  websocket:
    - {{path: /ws, app: "testapps.reloading:echo"}}
"""
AFTER = BEFORE.replace('/old, app: "testapps.reloading:old"', '/new, app: "testapps.reloading:new"')


def reload_cli(pid_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "reload", "--pid-file", str(pid_file)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.fixture
def running(tmp_path):
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(BEFORE.format(port=port))
    trace = tmp_path / "trace"
    trace.write_text("")
    pid_file = tmp_path / "gw.pid"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "RELOAD_TRACE": str(trace)}
    gw = GatewayProcess(config, env, args=("--pid-file", str(pid_file)))
    gw.started()
    gw.port, gw.config, gw.trace, gw.pid_file = port, config, trace, pid_file
    yield gw
    gw.stop()


async def test_a_reload_swaps_routes_while_200_websockets_and_http_load_go_on(running):
    base = f"http://127.0.0.1:{running.port}"
    sockets = [await websockets.connect(f"ws://127.0.0.1:{running.port}/ws") for _ in range(200)]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=base) as client:
            while not stop.is_set():
                statuses.append((await client.get("/kept")).status_code)

    loaders = [asyncio.create_task(load()) for _ in range(4)]
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/old")).text == "old" and (await client.get("/new")).status_code == 404
            running.config.write_text(AFTER.format(port=running.port))
            done = reload_cli(running.pid_file)
            assert done.returncode == 0, done.stderr
            running.wait_for("gateway.reloaded")
            assert (await client.get("/new")).text == "new"  # served at once
            assert (await client.get("/old")).status_code == 404
        for i, ws in enumerate(sockets):  # every socket opened before the reload still works
            await ws.send(f"still {i}")
            assert await ws.recv() == f"still {i}"
    finally:
        stop.set()
        await asyncio.gather(*loaders)
        for ws in sockets:
            await ws.close()
    assert statuses and set(statuses) == {200}
    # lifespan: the new app started, the removed one shut down, the kept one untouched
    deadline = asyncio.get_running_loop().time() + 20
    while "old shutdown" not in running.trace.read_text():
        assert asyncio.get_running_loop().time() < deadline, running.trace.read_text()
        await asyncio.sleep(0.1)
    lines = running.trace.read_text().splitlines()
    assert lines.count("kept startup") == 1 and "kept shutdown" not in lines
    assert lines.index("new startup") < lines.index("old shutdown")


async def test_an_invalid_file_changes_nothing_and_says_why(running):
    base = f"http://127.0.0.1:{running.port}"
    running.config.write_text(BEFORE.format(port=running.port).replace("testapps.reloading:old", "testapps.reloading:nothere"))
    os.kill(running.p.pid, signal.SIGHUP)
    failed = running.wait_for("gateway.reload_failed")
    assert "has no attribute 'nothere'" in failed["error"] and f"{running.config}:5:" in failed["error"]
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/old")).text == "old"


async def test_sigterm_during_a_reload_stops_cleanly(running):
    running.config.write_text(AFTER.format(port=running.port))
    os.kill(running.p.pid, signal.SIGHUP)
    os.kill(running.p.pid, signal.SIGTERM)
    assert running.stop() == 0
    assert running.count("gateway.stopped") == 1


async def test_a_reload_asked_during_a_reload_runs_after_it(tmp_path, monkeypatch):
    from gateway import Gateway

    monkeypatch.setenv("RELOAD_TRACE", str(tmp_path / "trace"))
    config = tmp_path / "gw.yaml"
    config.write_text(BEFORE.format(port=0))
    async with Gateway.from_file(config) as gw:
        address = gw.addresses["http"][0]
        config.write_text(AFTER.format(port=0))
        first, second = await asyncio.gather(gw.reload(), gw.reload())
        assert first and second and gw.reloader.count == 2
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/new")).text == "new"
        assert gw.addresses["http"] == [address]  # unchanged settings: the listener was not touched


async def test_a_reload_adds_an_adapter_without_touching_the_others(running, tmp_path):
    ws = await websockets.connect(f"ws://127.0.0.1:{running.port}/ws")
    mqtt_port = free_port()
    text = BEFORE.format(port=running.port) + '  mqtt:\n    - {topic: "a/b", app: "testapps.reloading:kept"}\n'
    running.config.write_text(text.replace("adapters:\n", f'adapters:\n  mqtt: {{mode: broker, listen: "127.0.0.1:{mqtt_port}"}}\n'))
    reload_cli(running.pid_file)
    record = running.wait_for("gateway.reloaded")
    assert record["adapters_restarted"] == ["mqtt"]
    running.wait_for("adapter.started", adapter="mqtt")
    await ws.send("after")
    assert await ws.recv() == "after"
    await ws.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", mqtt_port)  # the broker listens
    writer.close()


def test_reload_without_a_running_gateway_is_a_clear_error(tmp_path):
    done = reload_cli(tmp_path / "nothere.pid")
    assert done.returncode == 1 and "no gateway pid there" in done.stderr


async def test_a_reload_subscribes_mqtt_client_mode_to_new_topic_routes(tmp_path, clean_apps):
    from mqtt_helpers import APPS, Peer, client_yaml, mosquitto, route  # the module app: strings name

    from gateway import Gateway

    got: asyncio.Queue[str] = asyncio.Queue()

    async def record(scope, receive, send):
        event = await receive()
        await got.put(f"{scope['route_name']} {event['topic']}")

    APPS["first"] = APPS["second"] = record
    with mosquitto(tmp_path) as port:
        config = tmp_path / "gw.yaml"
        config.write_text(client_yaml(port, route("a/one", "first")))
        async with Gateway.from_file(config) as gw:
            device = await asyncio.to_thread(Peer, port, "device")
            try:
                await asyncio.to_thread(device.publish, "a/one", b"1", 1)
                assert await asyncio.wait_for(got.get(), 10) == "first a/one"
                config.write_text(client_yaml(port, route("b/two", "second")))
                assert await gw.reload()
                await asyncio.sleep(0.5)  # the SUBACK / UNSUBACK round trip
                await asyncio.to_thread(device.publish, "a/one", b"2", 1)  # no route, no subscription now
                await asyncio.to_thread(device.publish, "b/two", b"3", 1)
                assert await asyncio.wait_for(got.get(), 10) == "second b/two"
                assert got.empty()
            finally:
                device.close()


SIGNALS_AS_THE_START_ENDS = """
import asyncio, os, signal, sys
from pathlib import Path
import uvloop
from gateway import Gateway

async def main():
    config = Path(sys.argv[1])
    gw = Gateway.from_file(config)
    serving = asyncio.ensure_future(gw.serve())
    while not gw.started:  # the first loop turn after start() ends, before serve() goes on
        await asyncio.sleep(0)
    config.write_text(sys.argv[2])
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 20)
    print("served to the end", gw.reloader.count)

uvloop.run(main())
"""


def test_sighup_and_sigterm_as_the_start_ends_reload_then_stop(tmp_path):
    """uvloop calls a signal's handler as it was when the signal arrived: the handler of the
    starting phase ran after serve() had moved on, and the stop was lost (the process hung)."""
    config = tmp_path / "gw.yaml"
    config.write_text(BEFORE.format(port=0))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "RELOAD_TRACE": str(tmp_path / "trace")}
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", SIGNALS_AS_THE_START_ENDS, str(config), AFTER.format(port=0)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "served to the end" in done.stdout
        config.write_text(BEFORE.format(port=0))
