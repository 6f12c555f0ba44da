"""CPU per HTTP request without the network: the gateway's protocol vs uvicorn's, fed the same bytes.

    .venv/bin/python bench/http_cpu.py [--requests 20000] [--repeat 3] [--callgrind]

wrk figures move by tens of percent on a shared 2-core machine, because the client and the
server fight for the same cores. Here each server's connection object (the gateway's
``HttpProtocol``, uvicorn's ``HttpToolsProtocol``) is given an in-memory transport and fed
keep-alive hello-world requests, one at a time, on uvloop; the figure is the process CPU time
per request, so no client runs and no socket is touched. ``--callgrind`` counts instructions
instead (valgrind, Debian package; string hashing fixed), which repeat from run to run: the difference
between a run of N and one of 3N requests, so start-up cancels out. Both serve bench/apps.py
from a scratch folder, each in a process of its own.
"""

from __future__ import annotations

import os
import sys

# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common

SERVERS = ("gateway", "uvicorn")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"  # what wrk sends


class MemoryTransport(asyncio.Transport):
    """Takes the response bytes; the first write of a response lets the driver feed the next request."""

    def __init__(self) -> None:
        super().__init__()
        self.written: asyncio.Future[None] | None = None
        self.writes = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        waiter = self.written
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def drive(factory: Callable[[], asyncio.Protocol], requests: int) -> None:
    """One keep-alive connection: a request, wait for its response, the next."""
    loop = asyncio.get_running_loop()
    protocol, transport = factory(), MemoryTransport()
    protocol.connection_made(transport)
    for _ in range(requests):
        transport.written = loop.create_future()
        protocol.data_received(REQUEST)  # type: ignore[attr-defined]
        await transport.written
    for _ in range(3):  # the last response's bookkeeping
        await asyncio.sleep(0)
    if transport.writes < requests:
        raise RuntimeError(f"{transport.writes} responses to {requests} requests")
    protocol.connection_lost(None)


async def gateway_factory(workdir: Path) -> tuple[Callable[[], asyncio.Protocol], Callable[[], Any]]:
    from gateway import Gateway, logs
    from gateway_adapters.http.connection import HttpProtocol

    logs.configure("warning")
    gw = Gateway.from_text(common.gateway_config(0, workdir))
    await gw.start()
    state = gw.adapters["http"].state
    return (lambda: HttpProtocol(state, False)), gw.stop


async def uvicorn_factory(workdir: Path) -> tuple[Callable[[], asyncio.Protocol], Callable[[], Any]]:
    from apps import app
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=app, loop="none", http="httptools", lifespan="off", access_log=False, log_level="warning")
    config.load()
    state, loop = ServerState(), asyncio.get_running_loop()

    async def stop() -> None:
        pass

    return (lambda: HttpToolsProtocol(config, state, {}, loop)), stop


async def worker(server: str, requests: int, warmup: int) -> float:
    factories = {"gateway": gateway_factory, "uvicorn": uvicorn_factory}
    factory, stop = await factories[server](Path.cwd())
    await drive(factory, warmup)
    started = time.process_time()
    await drive(factory, requests)
    per = (time.process_time() - started) / requests
    await stop()
    return per


def run_worker(server: str, requests: int, warmup: int, callgrind: bool) -> float:
    """Run the worker in a fresh process in a scratch folder; CPU s (or instructions) per request."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-cpu-{server}-"))
    shutil.copy(common.BENCH / "apps.py", workdir / "apps.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(workdir), str(common.ROOT), os.environ.get("PYTHONPATH", "")] if p))
    base = [sys.executable, os.path.abspath(__file__), "--worker", server, "--warmup", str(warmup)]
    try:
        if not callgrind:
            out = subprocess.run([*base, "--requests", str(requests)], cwd=workdir, env=env, capture_output=True, text=True, check=True)
            return float(out.stdout.strip().splitlines()[-1])
        counts = []
        for n in (requests, 3 * requests):
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/cg.out", *base, "--requests", str(n)],
                cwd=workdir, env=dict(env, PYTHONHASHSEED="0"), capture_output=True, text=True, check=True,
            )
            match = re.search(r"Collected : (\d+)", out.stderr)
            if not match:
                raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
            counts.append(int(match.group(1)))
        return (counts[1] - counts[0]) / (2 * requests)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{server} worker failed:\n{exc.stderr[-3000:]}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=None, help="requests per measurement (default 20000; 1000 with --callgrind)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over both servers; medians are printed (default 3; 1 with --callgrind)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead of CPU time")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    requests = args.requests or (1000 if args.callgrind else 20000)
    warmup = args.warmup if args.warmup is not None else (200 if args.callgrind else 2000)
    if args.worker:
        import uvloop

        print(uvloop.run(worker(args.worker, requests, warmup)))
        return
    if args.callgrind and shutil.which("valgrind") is None:
        sys.exit("--callgrind needs valgrind: sudo apt-get install -y valgrind")
    repeat = args.repeat if not args.callgrind or args.repeat != 3 else 1
    servers = [s for s in args.servers.split(",") if s]
    runs: dict[str, list[float | None]] = {s: [] for s in servers}
    for round_no in range(1, repeat + 1):
        for server in servers:
            print(f"-- {server} (round {round_no} of {repeat})", file=sys.stderr, flush=True)
            value = run_worker(server, requests, warmup, args.callgrind)
            runs[server].append(value if args.callgrind else value * 1e6)
    figures = {s: common.median(v) for s, v in runs.items()}
    unit = "instr" if args.callgrind else "us"
    print(common.table(
        f"HTTP CPU per hello-world request, no network ({requests} keep-alive requests, median of {repeat} rounds)",
        [("hello world, one connection", unit, figures)],
        {unit: False},
    ))


if __name__ == "__main__":
    main()
