"""`gateway run --workers N`: processes share one port (reuse_port) and, through Redis, groups."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from .gateway_helpers import PLUGINS, ROOT, taken_port
from .test_layer_redis_helpers import RedisServer, free_port

TESTS = Path(__file__).resolve().parent


def run(cfg: Path, *args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(cfg), "--log-format", "json", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(TESTS)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )


def test_workers_refuse_the_in_memory_layer(write):
    cfg = write("gw.yaml", "adapters:\n  http: {listen: '127.0.0.1:8123'}\n")
    out, _ = run(cfg, "--workers", "2").communicate(timeout=60)
    assert "--workers 2 needs a channel layer all processes share" in out
    assert "layer.backend" in out


def test_workers_refuse_an_adapter_that_cannot_share_its_port(write):
    cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["redis://127.0.0.1:1/0"]}}
plugins: {{paths: ["{PLUGINS}"]}}
adapters:
  syslog: {{listen: "127.0.0.1:5514", transport: tcp}}
""")
    proc = run(cfg, "--workers", "2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "adapter 'syslog' cannot run under --workers 2: it listens on 127.0.0.1:5514 and cannot share" in out


def read_until(proc: subprocess.Popen[str], needle: str, count: int, timeout: float = 60) -> str:
    """Read the process's output until ``needle`` has appeared ``count`` times."""
    import time

    seen, lines, deadline = 0, [], time.monotonic() + timeout
    assert proc.stdout is not None
    while seen < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        seen += needle in line
    assert seen >= count, "".join(lines)
    return "".join(lines)


async def test_two_workers_share_a_port_and_groups_through_redis(write):
    redis = RedisServer().start()
    port = free_port()
    cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["{redis.url}"], prefix: workers}}
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
routes:
  websocket:
    - {{path: /room/, app: "testapps.rooms:PidRoom"}}
""")
    proc = run(cfg, "--workers", "2")
    try:
        url = f"ws://127.0.0.1:{port}/room/"
        # Both workers must listen before we count: a slow second start would get no connection.
        lines = await asyncio.to_thread(read_until, proc, '"adapter.started"', 2)
        by_pid, opened = await connect_until_n_processes(url, 2, limit=40)
        assert len(by_pid) == 2, f"all connections went to one process: {list(by_pid)}"
        (pid_a, [a, *_]), (pid_b, [b, *_]) = list(by_pid.items())
        await a.send("hello from A")
        for ws in (a, b):  # the group spans both processes
            assert await next_said(ws) == "said:hello from A"
        for ws in opened:
            await ws.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, lines + out
        assert out.count('"gateway.stopped"') == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        redis.stop()


async def test_four_workers_share_groups_and_deliver_each_outbound_message_once(write, tmp_path):
    """Four processes: a group spans all of them, and each message sent to the `mqtt.publish`
    layer channel from outside is published by exactly one of them."""
    from mqtt_helpers import Peer, mosquitto

    from gateway.layers.redis import RedisChannelLayer

    redis = RedisServer().start()
    port = free_port()
    with mosquitto(tmp_path) as mqtt_port:
        cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["{redis.url}"], prefix: four}}
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{mqtt_port}"}}
routes:
  websocket:
    - {{path: /room/, app: "testapps.rooms:PidRoom"}}
""")
        proc = run(cfg, "--workers", "4")
        subscriber = Peer(mqtt_port)
        layer = RedisChannelLayer(hosts=[redis.url], prefix="four")
        try:
            lines = await asyncio.to_thread(read_until, proc, '"adapter.started"', 8)  # 2 adapters x 4 workers
            by_pid, opened = await connect_until_n_processes(f"ws://127.0.0.1:{port}/room/", 4, limit=120)
            assert len(by_pid) == 4, f"connections reached only {len(by_pid)} processes"
            members = [sockets[0] for sockets in by_pid.values()]
            await members[0].send("to all four")
            for ws in members:
                assert await next_said(ws) == "said:to all four"

            subscriber.subscribe("out/#", qos=1)
            for n in range(40):
                await layer.send("mqtt.publish", {"type": "mqtt.publish", "topic": f"out/{n}", "payload": str(n), "qos": 1})
            got = [int((await subscriber.get(10)).payload) for _ in range(40)]
            assert sorted(got) == list(range(40))  # every message, each once
            with pytest.raises(queue.Empty):  # and no second copy arrives
                await asyncio.to_thread(subscriber.messages.get, True, 1.0)

            for ws in opened:
                await ws.close()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, lines + out
            assert out.count('"gateway.stopped"') == 4
        finally:
            subscriber.close()
            await layer.close()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            redis.stop()


async def next_said(ws) -> str:
    while (msg := await asyncio.wait_for(ws.recv(), 10)).startswith("pid:"):
        pass
    return msg


async def connect_until_n_processes(url: str, n: int, limit: int):
    by_pid: dict[str, list] = {}
    opened = []
    for _ in range(limit):
        ws = await websockets.connect(url, open_timeout=10)
        opened.append(ws)
        pid = (await asyncio.wait_for(ws.recv(), 10)).split(":", 1)[1]
        by_pid.setdefault(pid, []).append(ws)
        if len(by_pid) == n:
            break
    return by_pid, opened


@pytest.mark.parametrize(("backend", "shareable"), [
    ("channels_redis.core.RedisChannelLayer", True),
    ("channels.layers.InMemoryChannelLayer", False),
])
def test_workers_judge_the_layer_django_gives_not_the_layer_key(write, backend, shareable):
    import json

    from .django_helpers import PROJECT

    cfg = write("gw.yaml", f"django: {{settings: mysite.settings}}\npython_path: ['{PROJECT}']\n"
                           "adapters:\n  http: {listen: '127.0.0.1:8123'}\n")
    layers = json.dumps({"default": {"BACKEND": backend, "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}
                                     if "redis" in backend else {}}})
    script = ("import sys; from gateway.config import load; from gateway.workers import check_shareable\n"
              "try:\n    check_shareable(load(sys.argv[1]), 2)\nexcept Exception as exc:\n    print('refused:', exc)\n"
              "else:\n    print('shareable')\n")
    done = subprocess.run([sys.executable, "-c", script, str(cfg)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DJANGO_CHANNEL_LAYERS": layers, "DJANGO_DB": str(cfg.parent / "db.sqlite3")})
    assert done.returncode == 0, done.stderr
    if shareable:
        assert done.stdout.strip() == "shareable"
    else:
        assert "needs a channel layer all processes share" in done.stdout


async def test_two_workers_share_the_smtp_port(write, tmp_path):
    import smtplib

    redis = RedisServer().start()
    port = free_port()
    trace = tmp_path / "pids"
    cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["{redis.url}"], prefix: smtpworkers}}
adapters:
  email: {{smtp: {{listen: "127.0.0.1:{port}", domains: [example.com]}}}}
routes:
  email:
    - {{to: "*@example.com", app: "testapps.pidmail:app"}}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(cfg), "--log-format", "json", "--workers", "2"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(TESTS), "PID_TRACE": str(trace)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await asyncio.to_thread(read_until, proc, '"adapter.started"', 2)

        def send_all() -> None:
            for n in range(40):  # a new connection each: the kernel spreads them over the workers
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                    assert smtp.sendmail("a@example.org", [f"n{n}@example.com"], f"Subject: {n}\r\n\r\nx\r\n") == {}

        await asyncio.to_thread(send_all)
        pids = trace.read_text().split()
        assert len(pids) == 40 and len(set(pids)) == 2, pids
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        redis.stop()


def test_workers_refuse_broker_mode_mqtt_and_say_why(write):
    cfg = write("gw.yaml", "layer: {backend: redis, hosts: ['redis://127.0.0.1:1/0']}\n"
                           "adapters:\n  mqtt: {mode: broker, listen: '127.0.0.1:18830'}\n")
    proc = run(cfg, "--workers", "2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "adapter 'mqtt' cannot run under --workers 2: the embedded broker keeps its sessions" in out
    assert "mode: client" in out


async def test_workers_share_one_admin_listener_that_speaks_for_all_of_them(write):
    """`admin:` with --workers: the supervisor serves the admin address; /readyz is ready only when
    every worker is, and /metrics carries each worker's samples under a `worker` label."""
    import time

    import httpx

    redis = RedisServer().start()
    port, admin = free_port(), free_port()
    cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["{redis.url}"], prefix: adm}}
admin: {{listen: "127.0.0.1:{admin}"}}
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
routes:
  websocket:
    - {{path: /room/, app: "testapps.rooms:PidRoom"}}
""")
    proc = run(cfg, "--workers", "2")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}") as client:
            deadline, answer = time.monotonic() + 60, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    answer = await client.get("/readyz")
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            assert proc.poll() is None, proc.communicate()[0]
            assert answer is not None and answer.status_code == 200, answer and answer.text
            assert answer.json() == {"status": "ready", "workers": 2}
            assert (await client.get("/livez")).json()["workers"] == {"0": "alive", "1": "alive"}
            metrics = (await client.get("/metrics")).text
            for n in (0, 1):
                assert f'gateway_layer_dropped_total{{reason="full",worker="{n}"}} 0.0' in metrics, metrics
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert out.count('"gateway.stopped"') == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        redis.stop()


def test_workers_say_when_the_admin_port_is_taken_before_any_worker_starts(write):
    with taken_port() as admin:
        cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["redis://127.0.0.1:1/0"]}}
admin: {{listen: "127.0.0.1:{admin}"}}
adapters:
  http: {{listen: "127.0.0.1:{free_port()}"}}
""")
        proc = run(cfg, "--workers", "2")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert f"admin.listen 127.0.0.1:{admin}" in out and "in use" in out, out
    assert "workers.started" not in out


def test_a_worker_that_cannot_start_says_why_in_one_line_not_a_traceback(write):
    with taken_port() as port:  # a foreign program on the http port
        cfg = write("gw.yaml", f"""\
layer: {{backend: redis, hosts: ["redis://127.0.0.1:1/0"]}}
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
""")
        proc = run(cfg, "--workers", "2")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert f"127.0.0.1:{port}" in out and "gateway.start_failed" in out, out
    assert "Traceback" not in out, out
