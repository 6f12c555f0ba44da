"""MQTT benchmark: messages/s and round-trip latency through the gateway's mqtt adapter, against
Mosquitto -> paho (the ceiling), side by side in one run.

    python bench/mqtt.py [--messages 50000] [--publishers 2] [--roundtrips 2000]

Phases, each at QoS 0 and QoS 1:

* ``mosquitto->paho``: paho publishers -> Mosquitto -> one paho subscriber (the ceiling);
* ``gateway client``: paho publishers -> Mosquitto -> gateway (client mode) -> trivial app;
* ``gateway broker``: paho publishers -> gateway (embedded broker) -> trivial app.

Plus the publish -> consume -> publish round trip (one request at a time, p50/p99), through a
paho echo client on Mosquitto (the ceiling) and through the gateway in both modes.

Every party runs in its own process (publishers, the subscriber, the gateway, Mosquitto), all on
free loopback ports. The trivial app counts messages and publishes ``bench/done/<phase>`` when
it has seen them all; throughput is messages / (done - start). Targets: QoS 0 into
apps >= 0.5x the ceiling; QoS 1 >= 5,000 msgs/s.
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here] + [_here]

import argparse
import multiprocessing as mp
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _common as common
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

APPS = '''
import time

_counts = {}
_expected = {}


async def counter(scope, receive, send):
    message = await receive()
    phase = scope["url_route"]["kwargs"]["phase"]
    if phase not in _expected:
        _expected[phase] = int(phase.rsplit("-", 1)[1])
    n = _counts[phase] = _counts.get(phase, 0) + 1
    if n == _expected[phase]:
        await send({"type": "mqtt.publish", "topic": f"bench/done/{phase}", "payload": repr(time.time()), "qos": 1})


async def echo(scope, receive, send):
    message = await receive()
    await send({"type": "mqtt.publish", "topic": "bench/rt/resp", "payload": message["payload"], "qos": message["qos"]})
'''


@contextmanager
def mosquitto(tmp: Path) -> Iterator[int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = common.free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
        "max_queued_messages 1000000\nmax_inflight_messages 1000\nset_tcp_nodelay true\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        common.wait_listening(port, proc, "mosquitto", lambda: "")
        yield port
    finally:
        common.stop(proc, signal.SIGTERM)


@contextmanager
def gateway(tmp: Path, adapter: str) -> Iterator[subprocess.Popen[bytes]]:
    (tmp / "mqtt_bench_apps.py").write_text(APPS)
    cfg = tmp / f"gateway-{abs(hash(adapter))}.yaml"
    cfg.write_text(f"""
python_path: [{str(tmp)!r}]
logging: {{level: warning}}
metrics: {{path: null, health_path: null}}
shutdown: {{drain_timeout: 1}}
adapters:
  mqtt: {adapter}
routes:
  mqtt:
    - {{topic: "bench/load/+phase/#", app: "mqtt_bench_apps:counter", concurrency: 64}}
    - {{topic: "bench/rt/req", app: "mqtt_bench_apps:echo"}}
""")
    cmd = [sys.executable, "-m", "gateway", "run", "-c", str(cfg), "--log-level", "warning"]
    try:
        import uvloop  # noqa: F401

        cmd += ["--loop", "uvloop"]
    except ImportError:
        pass
    log = open(tmp / "gateway.log", "ab")
    proc = subprocess.Popen(cmd, cwd=str(common.ROOT), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        common.stop(proc, signal.SIGTERM)
        log.close()


def connect(port: int, client_id: str = "") -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot connect to 127.0.0.1:{port}")
        time.sleep(0.01)
    return client


def subscribe(client: paho.Client, topic: str, qos: int) -> None:
    got: queue.Queue[int] = queue.Queue()
    client.on_subscribe = lambda c, u, mid, rc, p: got.put(mid)
    _, mid = client.subscribe(topic, qos)
    while got.get(timeout=10) != mid:
        pass


def publisher(port: int, topic: str, count: int, qos: int, go: mp.Event, ready: mp.Queue) -> None:  # type: ignore[type-arg]
    client = connect(port)
    ready.put(1)
    go.wait()
    payload = b"x" * 64
    info = None
    for _ in range(count):
        while True:
            info = client.publish(topic, payload, qos)
            if info.rc == paho.MQTT_ERR_SUCCESS:
                break
            time.sleep(0.001)
    if info is not None:
        info.wait_for_publish(60)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


def ceiling_subscriber(port: int, topic: str, expected: int, qos: int, ready: mp.Queue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    client = connect(port)
    n = 0

    def on_message(c: object, u: object, m: object) -> None:
        nonlocal n
        n += 1
        if n == expected:
            out.put(time.time())

    client.on_message = on_message
    subscribe(client, topic, qos)
    ready.put(1)
    time.sleep(120)


def throughput(pub_port: int, done_port: int, topic_prefix: str, phase: str, total: int, publishers: int, qos: int,
               ceiling: bool) -> float:
    """Messages/s from publishers until the receiving side reports the last one."""
    ctx = mp.get_context("fork")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    go = ctx.Event()
    procs = []
    watcher = None
    topic = f"{topic_prefix}/{phase}/x"
    if ceiling:
        sub = ctx.Process(target=ceiling_subscriber, args=(done_port, f"{topic_prefix}/{phase}/#", total, qos, ready, out), daemon=True)
        sub.start()
        procs.append(sub)
        ready.get(timeout=20)
    else:
        watcher = connect(done_port)
        watcher.on_message = lambda c, u, m: out.put(float(m.payload))
        subscribe(watcher, f"bench/done/{phase}", 1)
    per = total // publishers
    for _ in range(publishers):
        p = ctx.Process(target=publisher, args=(pub_port, topic, per, qos, go, ready), daemon=True)
        p.start()
        procs.append(p)
    for _ in range(publishers):
        ready.get(timeout=20)
    start = time.time()
    go.set()
    try:
        end = out.get(timeout=120)
        rate = total / (end - start)
    except queue.Empty:
        rate = float("nan")
    for p in procs:
        p.terminate()
        p.join()
    if watcher is not None:
        watcher.disconnect()
        watcher.loop_stop()
    return rate


def roundtrip(port: int, rounds: int, qos: int) -> tuple[float, float]:
    client = connect(port)
    replies: queue.Queue[bytes] = queue.Queue()
    client.on_message = lambda c, u, m: replies.put(m.payload)
    subscribe(client, "bench/rt/resp", qos)
    times = []
    for i in range(rounds + 50):
        t0 = time.perf_counter()
        client.publish("bench/rt/req", str(i).encode(), qos)
        while replies.get(timeout=10) != str(i).encode():
            pass
        if i >= 50:
            times.append(time.perf_counter() - t0)
    client.disconnect()
    client.loop_stop()
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


def echo_client(port: int, qos: int, ready: mp.Queue) -> None:  # type: ignore[type-arg]
    client = connect(port)
    client.on_message = lambda c, u, m: c.publish("bench/rt/resp", m.payload, qos)
    subscribe(client, "bench/rt/req", qos)
    ready.put(1)
    time.sleep(300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--roundtrips", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    rows: list[tuple[str, int, float]] = []
    lat: list[tuple[str, int, float, float]] = []
    n = args.messages - args.messages % args.publishers
    ctx = mp.get_context("fork")
    with mosquitto(tmp) as mport:
        for qos in (0, 1):
            rows.append(("mosquitto->paho", qos, throughput(mport, mport, "bench/load", f"ceil{qos}-{n}", n, args.publishers, qos, True)))
        for qos in (0, 1):
            ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
            echo = ctx.Process(target=echo_client, args=(mport, qos, ready), daemon=True)
            echo.start()
            ready.get(timeout=20)
            lat.append(("mosquitto+paho echo", qos, *roundtrip(mport, args.roundtrips, qos)))
            echo.terminate()
            echo.join()
        with gateway(tmp, f'{{mode: client, url: "mqtt://127.0.0.1:{mport}", client_id: bench-gw}}'):
            time.sleep(2.5)
            for qos in (0, 1):
                rows.append(("gateway client mode", qos, throughput(mport, mport, "bench/load", f"client{qos}-{n}", n, args.publishers, qos, False)))
            for qos in (0, 1):
                lat.append(("gateway client mode", qos, *roundtrip(mport, args.roundtrips, qos)))
    bport = common.free_port()
    with gateway(tmp, f'{{mode: broker, listen: ["127.0.0.1:{bport}"]}}') as proc:
        common.wait_listening(bport, proc, "gateway", lambda: (tmp / "gateway.log").read_text(errors="replace"))
        time.sleep(0.5)
        for qos in (0, 1):
            rows.append(("gateway broker mode", qos, throughput(bport, bport, "bench/load", f"broker{qos}-{n}", n, args.publishers, qos, False)))
        for qos in (0, 1):
            lat.append(("gateway broker mode", qos, *roundtrip(bport, args.roundtrips, qos)))

    ceiling = {qos: rate for name, qos, rate in rows if name == "mosquitto->paho"}
    print(f"\nMQTT throughput, {n} messages of 64 bytes from {args.publishers} paho publishers")
    print(f"{'path':<24}{'QoS':>4}{'msgs/s':>12}{'x ceiling':>11}")
    for name, qos, rate in rows:
        print(f"{name:<24}{qos:>4}{rate:>12,.0f}{rate / ceiling[qos]:>11.2f}")
    print(f"\nRound trip publish -> app -> publish, {args.roundtrips} sequential requests")
    print(f"{'path':<24}{'QoS':>4}{'p50 ms':>9}{'p99 ms':>9}")
    for name, qos, p50, p99 in lat:
        print(f"{name:<24}{qos:>4}{p50:>9.3f}{p99:>9.3f}")


if __name__ == "__main__":
    main()
