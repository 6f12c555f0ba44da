"""Django speed: one project (bench/djangoapp) served by the gateway, uvicorn and Daphne in the same run.

    .venv/bin/python bench/django.py [--seconds 5] [--repeat 3] [--connections 64] [--servers ...]

The project is production-shaped: DEBUG off, Django's startproject middleware, SQLite. Measured:

* the view: ``GET /item/42/``, a sync view that reads one row with the ORM and renders a small
  template; requests/s and p99 latency (wrk --latency), server CPU per request;
* the static file: ``GET /static/benchapp/style.css`` (3.3 KiB) from a STATIC_ROOT that
  ``collectstatic`` filled: the gateway serves it itself (``app: django``: ServeStatic in front of
  Django), uvicorn and Daphne with WhiteNoise's middleware, the way their users serve one;
* the echo: a Channels ``AsyncWebsocketConsumer`` that sends every message back; round trips/s
  over 50 connections, each waiting for its echo before sending again (the handshakes carry an
  ``Origin`` that every server checks against ALLOWED_HOSTS).

The view's table also has ``(Django, no server)``: the CPU per request of Django's ASGI handler
called in-process, with no server and no sockets (``--connections`` callers at once). It is the
floor under every server's figure: no server can spend less than that per request.

Servers: ``gateway`` (``gateway run``, uvloop), ``gateway-wsgi`` (the same with
``django: {handler: wsgi}``, view only), ``uvicorn`` (httptools, ``--ws websockets``,
uvloop), ``uvicorn-sansio`` (the same with ``--ws websockets-sansio``, echo only),
``uvicorn+whitenoise`` and ``daphne+whitenoise`` (static only), ``daphne``. Every figure is the
median of ``--repeat`` interleaved rounds and is printed with its ratio to uvicorn and to Daphne
measured in the same run.
"""

from __future__ import annotations

import os
import sys

# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import _common as common

PROJECT = common.BENCH / "djangoapp"
VIEW = "/item/42/"
STATIC = "/static/benchapp/style.css"
ECHO = "/echo/"
ALONE = "(Django, no server)"


def _sibling(name: str) -> ModuleType:
    """A sibling bench script as a module (bench/http.py cannot be imported by its own name)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", common.BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_http = _sibling("http")
bench_ws = _sibling("websocket")


@dataclass(frozen=True)
class Server:
    name: str
    measures: tuple[str, ...]
    whitenoise: bool = False


SERVERS = (
    Server("gateway", ("view", "static", "echo")),
    Server("gateway-wsgi", ("view",)),  # django: {handler: wsgi}
    Server("uvicorn", ("view", "echo")),
    Server("uvicorn-sansio", ("echo",)),
    Server("uvicorn+whitenoise", ("static",), whitenoise=True),
    Server("daphne", ("view", "echo")),
    Server("daphne+whitenoise", ("static",), whitenoise=True),
)
# The anchors each gateway figure is compared with: the same work on the other servers.
ANCHORS = {
    "view": {"uvicorn": ("uvicorn",), "daphne": ("daphne",)},
    "static": {"uvicorn": ("uvicorn+whitenoise",), "daphne": ("daphne+whitenoise",)},
    "echo": {"uvicorn": ("uvicorn", "uvicorn-sansio"), "daphne": ("daphne",)},  # the faster uvicorn engine
}
TARGETS = {"view": {"uvicorn": 1.0, "daphne": 2.0}, "static": {"uvicorn": 1.0}, "echo": {"uvicorn": 1.0, "daphne": 2.0}}


def gateway_config(port: int, handler: str = "asgi") -> str:
    return f"""
python_path: [{str(PROJECT)!r}]
django: {{settings: benchsite.settings, handler: {handler}}}
logging: {{level: warning}}
metrics: {{path: null, health_path: null}}
adapters:
  http:
    listen: 127.0.0.1:{port}
    access_log: false
    limits: {{ws_ping_interval: null}}
routes:
  http:
    - {{app: django}}
  websocket:
    - {{path: {ECHO!r}, app: "benchapp.consumers:EchoConsumer"}}
"""


def command(server: Server, port: int, workdir: Path) -> list[str]:
    py = common.PY
    if server.name.startswith("gateway"):
        cfg = workdir / "gateway.yaml"
        cfg.write_text(gateway_config(port, "wsgi" if server.name == "gateway-wsgi" else "asgi"))
        return [py, "-m", "gateway", "run", "-c", str(cfg), "--loop", "uvloop", "--log-level", "warning"]
    if server.name.startswith("uvicorn"):
        ws = "websockets-sansio" if server.name == "uvicorn-sansio" else "websockets"
        return [py, "-m", "uvicorn", "benchsite.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--ws", ws, "--no-access-log", "--log-level", "warning"]
    if server.name.startswith("daphne"):
        return [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", "benchsite.asgi:application"]
    raise ValueError(server.name)


def project_env(db: Path, static_root: Path, whitenoise: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BENCH_DB=str(db), BENCH_STATIC_ROOT=str(static_root), BENCH_WHITENOISE="1" if whitenoise else "0",
               DJANGO_SETTINGS_MODULE="benchsite.settings",
               PYTHONPATH=os.pathsep.join(p for p in [str(PROJECT), str(common.ROOT), os.environ.get("PYTHONPATH", "")] if p))
    return env


def _uvicorn_has_sansio() -> bool:
    from uvicorn.config import WS_PROTOCOLS

    return "websockets-sansio" in WS_PROTOCOLS


def prepare(tmp: Path) -> tuple[Path, Path]:
    """A migrated SQLite database (its migrations add the rows) and a collected STATIC_ROOT."""
    db, static_root = tmp / "db.sqlite3", tmp / "static"
    env = project_env(db, static_root)
    for args in (["migrate", "-v0", "--noinput"], ["collectstatic", "-v0", "--noinput"]):
        subprocess.run([common.PY, "-m", "django", *args], cwd=PROJECT, env=env, check=True, timeout=120)
    return db, static_root


@contextlib.contextmanager
def running(server: Server, db: Path, static_root: Path, tmp: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = common.free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{server.name.replace('+', '-')}-", dir=tmp))
    log_path = workdir / "server.log"
    log = open(log_path, "wb")  # closed in the finally below
    proc = subprocess.Popen(command(server, port, workdir), cwd=PROJECT,
                            env=project_env(db, static_root, server.whitenoise), stdout=log, stderr=subprocess.STDOUT)
    try:
        common.wait_listening(port, proc, server.name, lambda: log_path.read_text(errors="replace"), timeout=60)
        time.sleep(0.3)
        yield port, proc
    finally:
        common.stop(proc)
        log.close()


def check_answers(port: int, measures: tuple[str, ...], static_size: int) -> None:
    """Before measuring: the view renders the row and the static file is the collected one, so a
    server that answers quickly with the wrong thing cannot win."""
    base = f"http://127.0.0.1:{port}"
    if "view" in measures:
        with urllib.request.urlopen(base + VIEW, timeout=10) as r:
            body = r.read()
        if b"<h1>Item 42</h1>" not in body:
            raise RuntimeError(f"{VIEW} did not render item 42: {body[:200]!r}")
    if "static" in measures:
        with urllib.request.urlopen(base + STATIC, timeout=10) as r:
            body, ctype = r.read(), r.headers.get("Content-Type", "")
        if len(body) != static_size or not ctype.startswith("text/css"):
            raise RuntimeError(f"{STATIC}: {len(body)} bytes of {ctype!r}, expected {static_size} bytes of text/css")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, seconds: float, connections: int, pid: int) -> tuple[float, float, float | None]:
    """``(requests/s, p99 ms, server CPU us per request)`` from one wrk run (a non-2xx answer fails it)."""
    args = [common.require_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency", url]
    before = bench_http.cpu_seconds(pid)
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False).stdout
    cpu = bench_http.cpu_seconds(pid) - before
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw error responses:\n{out}")
    errors = re.search(r"Socket errors:.*", out)
    if errors:
        print(f"   {url}: {errors.group(0)}", file=sys.stderr)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out)
    done = re.search(r"(\d+) requests in", out)
    if not (rate and p99 and done):
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    requests = int(done.group(1))
    return float(rate.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)], cpu / requests * 1e6 if requests else None


class OriginClient(bench_ws.Client):
    """bench/websocket.py's bare client, with the ``Origin`` a browser sends (every server here checks it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16))
        transport.write(  # type: ignore[attr-defined]
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.path.encode(), key)
        )


async def echo(port: int, pid: int, seconds: float, connections: int = 50) -> tuple[float, float | None]:
    """Round trips/s, and the server's CPU us per round trip: ``connections`` clients, each sending
    its next message when the echo is back."""
    loop = asyncio.get_running_loop()
    made = await asyncio.gather(*(
        loop.create_connection(lambda: OriginClient(ECHO, loop), "127.0.0.1", port) for _ in range(connections)
    ))
    clients = [c for _, c in made]
    await asyncio.gather(*(c.opened for c in clients))
    frame = bench_ws.text_frame(b"x" * 32)
    count = 0
    stop = time.perf_counter() + seconds

    async def one(c: OriginClient) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            if await c.roundtrip(frame) != b"x" * 32:
                raise RuntimeError("the echo came back different")
            count += 1

    for c in clients:  # warm-up
        await c.roundtrip(frame)
    cpu = bench_http.cpu_seconds(pid)
    client_cpu = time.process_time()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(c) for c in clients))
        elapsed = time.perf_counter() - started
        cpu = bench_http.cpu_seconds(pid) - cpu
        client_cpu = time.process_time() - client_cpu
    finally:
        bench_ws.close_all(clients)
    if client_cpu > 0.9 * elapsed:
        print(f"   echo: the client used {client_cpu / elapsed:.0%} of a core: this figure is the client's limit", file=sys.stderr)
    return count / elapsed, cpu / count * 1e6 if count else None


async def _django_alone(requests: int, concurrency: int) -> float:
    """CPU us per request of Django's ASGI handler answering the view with no server around it:
    ``concurrency`` callers, each calling it again when its answer is complete. (Runs in a process
    of its own with the project's settings; see ``django_alone``.)"""
    from django.core.asgi import get_asgi_application

    app = get_asgi_application()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": VIEW, "raw_path": VIEW.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80)}
    loop = asyncio.get_running_loop()

    async def one() -> None:
        received = False

        async def receive() -> dict[str, object]:
            nonlocal received
            if received:  # Django listens for a disconnect: none comes (it cancels this wait when done)
                await loop.create_future()
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}

        status: list[int] = []

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])  # type: ignore[arg-type]

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"Django answered {status}")

    async def caller(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(caller(20) for _ in range(concurrency)))  # warm-up
    started = time.process_time()
    await asyncio.gather(*(caller(requests // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (requests // concurrency * concurrency) * 1e6


def django_alone(db: Path, static_root: Path, connections: int) -> float | None:
    """The floor under every server's view figure: what Django's own handler costs, in a fresh process."""
    done = subprocess.run([common.PY, __file__, "--django-alone", str(connections)], cwd=PROJECT,
                          env=project_env(db, static_root), capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        print(f"   Django alone failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip())


def measure(server: Server, port: int, pid: int, args: argparse.Namespace) -> dict[str, tuple[float, float | None, float | None]]:
    """``{figure: (rate, p99 ms, CPU us/request)}`` for what ``server`` is measured on."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    base = f"http://127.0.0.1:{port}"
    out: dict[str, tuple[float, float | None, float | None]] = {}
    for what in server.measures:
        if what == "echo":
            runner(echo(port, pid, 1))  # warm-up
            rate, cpu = runner(echo(port, pid, args.seconds))
            out[what] = (rate, None, cpu)
        else:
            url = base + (VIEW if what == "view" else STATIC)
            wrk(url, 1, args.connections, pid)  # warm-up
            out[what] = wrk(url, args.seconds, args.connections, pid)
    return out


def report(figures: dict[str, dict[str, list[tuple[float, float | None, float | None]]]], args: argparse.Namespace) -> str:
    titles = {
        "view": f"view: GET {VIEW} (sync view, one SQLite ORM read, small template), {args.connections} connections",
        "static": f"static file: GET {STATIC} (3.3 KiB, DEBUG off, collectstatic), {args.connections} connections",
        "echo": "echo: AsyncWebsocketConsumer, 32-byte text messages, 50 connections",
    }
    out = [f"\nDjango (wrk -t1 / bare WebSocket client, {args.seconds:g} s per figure, median of {args.repeat} rounds;"
           " client and server on one machine)"]
    for what, title in titles.items():
        per_server = figures.get(what, {})
        if not per_server:
            continue
        order = [s.name for s in SERVERS] + [ALONE]
        med = {s: tuple(common.median([r[i] for r in per_server[s]]) for i in range(3)) for s in order if s in per_server}
        anchors = {a: max((med[s][0] for s in names if s in med and med[s][0]), default=None)
                   for a, names in ANCHORS[what].items()}
        unit = "rt/s" if what == "echo" else "req/s"
        out += ["", title, f"  {'server':<20} {unit:>10} {'x uvicorn':>10} {'x daphne':>9} {'p99 ms':>8} {'CPU us/' + ('rt' if what == 'echo' else 'req'):>11}"]
        for name, (rate, p99, cpu) in med.items():
            if rate is None and cpu is None:
                out.append(f"  {name:<20} {'failed':>10}")
                continue
            ratios = [f"{rate / a:.2f}" if a and rate else "" for a in (anchors["uvicorn"], anchors["daphne"])]
            out.append(f"  {name:<20} {f'{rate:,.0f}' if rate else '':>10} {ratios[0]:>10} {ratios[1]:>9} "
                       f"{f'{p99:.1f}' if p99 is not None else '':>8} {f'{cpu:,.0f}' if cpu is not None else '':>11}")
        for variant in ("gateway-wsgi",):
            rate = med.get(variant, (None,))[0]
            if rate:
                out.append(f"  {variant}: " + "; ".join(f"{rate / base:.2f}x {anchor}" for anchor, base in anchors.items() if base))
        gateway = med.get("gateway", (None,))[0]
        if gateway is not None:
            verdicts = []
            for anchor, want in TARGETS[what].items():
                base = anchors[anchor]
                if base:
                    ratio = gateway / base
                    verdicts.append(f">= {want:g}x {anchor} ({ratio:.2f}x): {'met' if ratio >= want else 'MISSED'}")
            out.append("  target: " + ("; ".join(verdicts) or "no anchor measured in this run"))
            # On a shared machine the CPU a server spends per request moves far less than its rate does.
            gateway_cpu = med["gateway"][2]
            cheaper = []
            for anchor, names in ANCHORS[what].items():
                base_cpu = min((med[s][2] for s in names if s in med and med[s][2]), default=None)
                if base_cpu and gateway_cpu:
                    cheaper.append(f"{anchor} {base_cpu / gateway_cpu:.2f}x")
            if cheaper:
                out.append("  server CPU per " + ("round trip" if what == "echo" else "request") + ", the anchor's over the "
                           "gateway's (above 1: the gateway spends less): " + ", ".join(cheaper))
    out.append("\nx uvicorn / x daphne: the figure over the anchor doing the same work (static: with WhiteNoise; "
               "echo: the faster of uvicorn's two WebSocket engines); req/s and rt/s: higher is better.\n"
               f"{ALONE}: Django's ASGI handler called in-process, no server: the CPU floor under every view figure.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all servers; medians are printed (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for the view and the static file (default 64)")
    parser.add_argument("--servers", default=",".join(s.name for s in SERVERS), help="comma-separated subset to run")
    parser.add_argument("--figures", default="view,static,echo", help="comma-separated subset of view,static,echo")
    parser.add_argument("--django-alone", type=int, help=argparse.SUPPRESS)  # the in-process floor, see django_alone()
    args = parser.parse_args()
    if args.django_alone:
        import uvloop

        print(uvloop.run(_django_alone(3000, args.django_alone)))
        return
    common.require_wrk()
    common.raise_fd_limit()
    wanted = [s for s in args.servers.split(",") if s]
    unknown = set(wanted) - {s.name for s in SERVERS}
    if unknown:
        sys.exit(f"unknown servers: {', '.join(sorted(unknown))}; choose from {', '.join(s.name for s in SERVERS)}")
    figures_wanted = {f for f in args.figures.split(",") if f}
    if figures_wanted - set(ANCHORS):
        sys.exit(f"unknown figures: {', '.join(sorted(figures_wanted - set(ANCHORS)))}; choose from view, static, echo")
    servers = [Server(s.name, tuple(m for m in s.measures if m in figures_wanted), s.whitenoise)
               for s in SERVERS if s.name in wanted and figures_wanted & set(s.measures)]
    if "uvicorn-sansio" in wanted and not _uvicorn_has_sansio():
        print("-- uvicorn-sansio skipped: the installed uvicorn has no --ws websockets-sansio", file=sys.stderr)
        servers = [s for s in servers if s.name != "uvicorn-sansio"]
    if not servers:
        sys.exit("no server measures any of the figures asked for")
    tmp = Path(tempfile.mkdtemp(prefix="bench-django-"))
    try:
        db, static_root = prepare(tmp)
        static_size = (static_root / STATIC.removeprefix("/static/")).stat().st_size
        figures: dict[str, dict[str, list[tuple[float, float | None, float | None]]]] = {}
        # Interleaved rounds, medians printed: one noisy moment on a shared machine does not decide a ratio.
        for round_no in range(1, args.repeat + 1):
            turn = (round_no - 1) % len(servers)  # each round starts with another server: drift spreads evenly
            for server in servers[turn:] + servers[:turn]:
                print(f"-- {server.name} (round {round_no} of {args.repeat})", file=sys.stderr, flush=True)
                try:
                    with running(server, db, static_root, tmp) as (port, proc):
                        check_answers(port, server.measures, static_size)
                        for what, figure in measure(server, port, proc.pid, args).items():
                            figures.setdefault(what, {}).setdefault(server.name, []).append(figure)
                            rate, p99, cpu = figure
                            print(f"   {what}: {rate:,.0f}/s" + (f", p99 {p99:.1f} ms" if p99 is not None else "")
                                  + (f", server CPU {cpu:,.0f} us each" if cpu is not None else ""), file=sys.stderr, flush=True)
                except Exception as exc:  # noqa: BLE001 - report and go on with the other servers
                    print(f"   {server.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            if any("view" in s.measures for s in servers):
                print(f"-- Django alone, no server (round {round_no} of {args.repeat})", file=sys.stderr, flush=True)
                figures.setdefault("view", {}).setdefault(ALONE, []).append((None, None, django_alone(db, static_root, args.connections)))
        print(report(figures, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
