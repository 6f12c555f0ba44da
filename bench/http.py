"""HTTP speed: the gateway vs uvicorn (httptools + uvloop) vs Daphne, same app, same run.

    .venv/bin/python bench/http.py [--seconds 5] [--servers gateway,uvicorn,daphne,aiohttp]

Measures with wrk: hello-world requests/s at 64 connections, and 1 MiB streaming upload and
download throughput. Prints each figure with its ratio to uvicorn. ``aiohttp`` is aiohttp's own
low-level server answering the same paths without ASGI (bench/aiohttp_server.py): the floor for
a server built on aiohttp, such as the gateway's HTTP adapter.
"""

from __future__ import annotations

import os
import sys

# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import _common as common

MiB = 1024 * 1024
LAST_CPU: list[float | None] = [None]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: float, connections: int, script: str | None = None, threads: int = 1, pid: int | None = None) -> float:
    """Requests per second reported by wrk (non-2xx responses count as failure).

    With ``pid``, also records in ``LAST_CPU`` the server's CPU microseconds per request: a figure
    that, unlike req/s, barely moves when other work shares the machine."""
    args = [common.require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    if script:
        args += ["-s", script]
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 60, check=False).stdout
    if pid:
        done = re.search(r"(\d+) requests in", out)
        LAST_CPU[0] = (cpu_seconds(pid) - before) / int(done.group(1)) * 1e6 if done and int(done.group(1)) else None
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw error responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all servers; medians are printed (default 3)")
    parser.add_argument("--servers", default=",".join((*common.SERVERS, "aiohttp")), help="comma-separated subset to run")
    args = parser.parse_args()
    common.require_wrk()
    common.raise_fd_limit()
    servers = [s for s in args.servers.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    upload = tmp / "upload.lua"
    upload.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("u", {MiB})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    runs: dict[str, list[tuple[float, float | None, float, float]]] = {s: [] for s in servers}
    # Each round runs every server once, one after the other; the figures printed are the
    # medians over the rounds, so one noisy moment on a shared machine does not decide a ratio.
    for round_no in range(1, args.repeat + 1):
        for server in servers:
            print(f"-- {server} (round {round_no} of {args.repeat})", file=sys.stderr, flush=True)
            try:
                with common.running(server) as (port, proc):
                    base = f"http://127.0.0.1:{port}"
                    wrk(base + "/", 1, 64)  # warm-up
                    rate = wrk(base + "/", args.seconds, 64, pid=proc.pid)
                    cpu = LAST_CPU[0]
                    up = wrk(base + "/upload", args.seconds, 8, str(upload))
                    down = wrk(base + "/download", args.seconds, 8)
                    runs[server].append((rate, cpu, up, down))
            except Exception as exc:  # noqa: BLE001 - report and go on with the other servers
                print(f"   {server} failed: {exc}", file=sys.stderr)
    hello, cpu_us, up_mib, down_mib = ({s: common.median([r[i] for r in rs]) for s, rs in runs.items()} for i in range(4))
    print(common.table(
        f"HTTP (wrk, {args.seconds:g} s per figure, median of {args.repeat} rounds; 1 client core + 1 server process on one machine)",
        [
            ("hello world, 64 connections", "req/s", hello),
            ("  server CPU per hello request", "us", cpu_us),
            ("1 MiB upload (streamed), 8 conns", "MiB/s", up_mib),
            ("1 MiB download (streamed), 8 conns", "MiB/s", down_mib),
        ],
        {"req/s, MiB/s": True, "us": False},
    ))


if __name__ == "__main__":
    main()
