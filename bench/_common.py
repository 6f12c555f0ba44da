"""Shared bench plumbing: start each server under test in a subprocess, wait for it, measure RSS.

Every bench script imports it as ``_common``. bench/http.py and bench/email.py are named like
standard-library modules, so each script first moves its own folder from the front of
``sys.path`` to the end: the standard library wins, and ``_common`` is still found.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
SERVERS = ("gateway", "uvicorn", "daphne")


def raise_fd_limit(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], name: str, output: Callable[[], str], timeout: float = 20) -> None:
    """Return once something accepts on ``port``; raise with the process's ``output`` if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{output()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start listening on {port} within {timeout:g} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """Ask ``proc`` to stop with ``sig``; kill it if it has not within 10 s."""
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def gateway_config(port: int, appdir: Path, max_connections: int = 50_000) -> str:
    return f"""
python_path: [{str(appdir)!r}]
logging: {{level: warning}}
metrics: {{path: null, health_path: null}}
adapters:
  http:
    listen: 127.0.0.1:{port}
    access_log: false
    limits: {{max_connections: {max_connections}, ws_ping_interval: null, max_body_size: 104857600}}
routes:
  http:
    - {{regex: ".*", app: "apps:app"}}
  websocket:
    - {{regex: ".*", app: "apps:app"}}
"""


def command(server: str, port: int, workdir: Path) -> list[str]:
    if server == "gateway":
        cfg = workdir / "gateway.yaml"
        cfg.write_text(gateway_config(port, workdir))
        return [PY, "-m", "gateway", "run", "-c", str(cfg), "--loop", "uvloop", "--log-level", "warning"]
    if server in ("uvicorn", "uvicorn-sansio"):  # sansio: uvicorn's fastest WebSocket engine (0.35+)
        ws = "websockets-sansio" if server == "uvicorn-sansio" else "websockets"
        return [PY, "-m", "uvicorn", "apps:app", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                "--http", "httptools", "--ws", ws, "--no-access-log", "--log-level", "warning",
                "--app-dir", str(workdir)]
    if server == "daphne":
        return [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", "apps:app"]
    if server == "aiohttp":  # not ASGI: aiohttp's own server, the floor for an aiohttp-based one (HTTP only)
        shutil.copy(BENCH / "aiohttp_server.py", workdir / "aiohttp_server.py")
        return [PY, "aiohttp_server.py", str(port)]
    raise ValueError(server)


@contextlib.contextmanager
def running(server: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Start ``server`` serving bench/apps.py on a free loopback port; yield ``(port, process)``."""
    port = free_port()
    # The apps are copied to a scratch folder that becomes the server's working directory: the
    # bench folder itself must not be on a server's path (bench/http.py would shadow the stdlib).
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{server}-"))
    shutil.copy(BENCH / "apps.py", workdir / "apps.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(workdir), str(ROOT), os.environ.get("PYTHONPATH", "")] if p))
    log = open(workdir / "server.log", "wb")  # closed in the finally below
    proc = subprocess.Popen(command(server, port, workdir), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, server, lambda: (workdir / "server.log").read_text(errors="replace"))
        time.sleep(0.3)
        yield port, proc
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def median(values: list[float | None]) -> float | None:
    """The median of the rounds that produced a figure (``None`` if none did)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def table(title: str, rows: list[tuple[str, str, dict[str, float | None]]], higher_is_better: dict[str, bool]) -> str:
    """rows: (metric, unit, {server: value}); ratios are against uvicorn. The three servers of
    every script come first, then any other a script measured (bench/http.py's raw aiohttp)."""
    columns = [*SERVERS, *dict.fromkeys(s for _, _, values in rows for s in values if s not in SERVERS)]
    out = [f"\n{title}", f"{'metric':<34} {'unit':<9} " + " ".join(f"{s:>22}" for s in columns)]
    for metric, unit, values in rows:
        base = values.get("uvicorn")
        cells = []
        for s in columns:
            v = values.get(s)
            if v is None:
                cells.append(f"{'n/a':>22}")
                continue
            ratio = f"({v / base:.2f}x)" if base else ""
            cells.append(f"{_fmt(v):>13} {ratio:>8}")
        out.append(f"{metric:<34} {unit:<9} " + " ".join(cells))
    out.append("ratios are against uvicorn (httptools + uvloop); " + ", ".join(
        f"{m}: {'higher' if h else 'lower'} is better" for m, h in higher_is_better.items()))
    return "\n".join(out)


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench/http.py needs wrk (HTTP load generator): sudo apt-get install -y wrk")
    return wrk
