"""Several Redis hosts (consistent-hash sharding), passwords and ACL users, TLS, Sentinel."""

from __future__ import annotations

import asyncio
import binascii
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import require
from test_layer_redis_helpers import RedisServer, free_port
from tls_helpers import make_ca

from gateway.layers.redis import LayerUnavailable, RedisChannelLayer
from gateway.layers.redis_hosts import HashRing, decode_hosts, host_label

pytestmark = pytest.mark.timeout(40)


# -- the ring ----------------------------------------------------------------------------------------


def test_adding_a_host_moves_few_keys() -> None:
    keys = [f"specific.{i:06x}!" for i in range(20000)]
    three = HashRing(["redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0"])
    four = HashRing(["redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0", "redis://d:6379/0"])
    before = [three.index(k) for k in keys]
    after = [four.index(k) for k in keys]
    moved = sum(1 for x, y in zip(before, after, strict=True) if x != y) / len(keys)
    assert 0.15 < moved < 0.35  # ideal: 1/4, and every moved key went to the new host
    assert all(y == 3 for x, y in zip(before, after, strict=True) if x != y)
    shares = Counter(after)
    assert all(0.15 < shares[i] / len(keys) < 0.35 for i in range(4))
    # channels_redis's crc32 split, for comparison, moves about half of them
    crc = [int((binascii.crc32(k.encode()) & 0xFFF) / (4096 / n)) for n in (3, 4) for k in keys]
    crc_moved = sum(1 for x, y in zip(crc[: len(keys)], crc[len(keys) :], strict=True) if x != y) / len(keys)
    assert crc_moved > moved * 1.5


def test_host_entries_and_labels_hide_passwords() -> None:
    hosts = decode_hosts(["rediss://alice:secret@h1:6380/2", ["h2", 6379], {"address": "redis://h3:1/0", "max_connections": 5}])
    labels = [host_label(h) for h in hosts]
    assert labels == ["rediss://h1:6380/2", "h2:6379/0", "redis://h3:1/0"]
    assert "secret" not in repr(RedisChannelLayer(hosts=["redis://:secret@h1:1/0"]))
    assert decode_hosts(None) == [{"address": "redis://127.0.0.1:6379/0"}]


# -- several real hosts --------------------------------------------------------------------------


@pytest.fixture
def two_servers() -> Iterator[list[RedisServer]]:
    servers = [RedisServer().start(), RedisServer().start()]
    yield servers
    for s in servers:
        s.stop()


async def test_sharded_groups_and_channels(two_servers: list[RedisServer], prefix: str) -> None:
    hosts = [s.url for s in two_servers]
    layers = [RedisChannelLayer(hosts=hosts, prefix=prefix) for _ in range(6)]
    try:
        channels = []
        for layer in layers:
            for kind in ("specific", "websocket"):
                ch = await layer.new_channel(kind)
                channels.append((layer, ch))
                await layer.group_add("everyone", ch)
        await layers[0].group_send("everyone", {"type": "hi"})
        got = await asyncio.wait_for(asyncio.gather(*(layer.receive(ch) for layer, ch in channels)), 5)
        assert got == [{"type": "hi"}] * len(channels)
        # normal channels live on their own shard; each is still one queue
        for n in range(10):
            await layers[1].send(f"work.{n}", {"type": "job", "n": n})
        assert [(await layers[2].receive(f"work.{n}"))["n"] for n in range(10)] == list(range(10))
        # the data really is spread over both servers
        await layers[0].group_add("kept", channels[0][1])
        for n in range(10):
            await layers[0].send(f"kept.{n}", {"type": "x"})
        per_server = [s.command("DBSIZE") for s in two_servers]
        assert all(int(reply[1:].strip()) > 0 for reply in per_server), per_server
        await layers[0].flush()
        import redis

        for server in two_servers:  # only the restart marker and the flush marks in inboxes remain
            client = redis.Redis.from_url(server.url)
            for key in client.keys("*"):
                if not key.startswith(f"{prefix}.".encode()):  # .epoch, .procs: the hosts' bookkeeping, kept by flush
                    assert key.startswith(f"{prefix}:q:".encode()) and key.endswith(b"!")
                    assert [e[13:] for e in client.lrange(key, 0, -1)] in ([b"f\n"], [])  # [] once drained
            client.close()
    finally:
        for layer in layers:
            await layer.close()


async def test_one_host_down_fails_only_its_share(two_servers: list[RedisServer], prefix: str) -> None:
    hosts = [s.url for s in two_servers]
    layer = RedisChannelLayer(hosts=hosts, prefix=prefix)
    try:
        two_servers[1].stop()
        names = [f"work.{n}" for n in range(40)]
        ok = failed = 0
        for name in names:
            try:
                await layer.send(name, {"type": "x"})
                ok += 1
            except LayerUnavailable as exc:
                assert f"127.0.0.1:{two_servers[1].port}" in str(exc)
                failed += 1
        assert ok and failed
        assert layer.health[0] == "down" and f"127.0.0.1:{two_servers[1].port}" in layer.health[1]  # not ready
    finally:
        await layer.close()


# -- authentication -------------------------------------------------------------------------------


@pytest.fixture
def secured() -> Iterator[RedisServer]:
    server = RedisServer(None, "--requirepass", "s3cret", "--user", "alice", "on", ">wonder", "~*", "&*", "+@all")
    server_start_no_ping(server)
    yield server
    server.stop()


def server_start_no_ping(server: RedisServer) -> None:
    """Start a server the plain PING probe cannot check (auth or TLS): wait for the port instead."""
    server.proc = subprocess.Popen(
        [require("redis-server"), "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(server.dir), *server.extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(server.port, server)


def wait_port(port: int, server: RedisServer) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert server.proc is not None and server.proc.poll() is None, "redis-server exited"
            time.sleep(0.02)
    raise RuntimeError(f"port {port} never opened")


async def roundtrip(url: str, prefix: str) -> dict[str, Any]:
    a, b = RedisChannelLayer(hosts=[url], prefix=prefix), RedisChannelLayer(hosts=[url], prefix=prefix)
    try:
        ch = await b.new_channel()
        await a.group_add("g", ch)
        await a.group_send("g", {"type": "secure"})
        return await asyncio.wait_for(b.receive(ch), 3)
    finally:
        await a.close()
        await b.close()


async def test_password_and_acl_user(secured: RedisServer, prefix: str) -> None:
    port = secured.port
    assert await roundtrip(f"redis://:s3cret@127.0.0.1:{port}/0", prefix) == {"type": "secure"}
    assert await roundtrip(f"redis://alice:wonder@127.0.0.1:{port}/0", prefix) == {"type": "secure"}
    layer = RedisChannelLayer(hosts=[f"redis://alice:wrong@127.0.0.1:{port}/0"], prefix=prefix)
    try:
        with pytest.raises(LayerUnavailable, match=f"127.0.0.1:{port}"):
            await layer.send("x", {"type": "x"})
    finally:
        await layer.close()


# -- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    make_ca(tmp_path, ("server",))
    ca, crt, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    tls_port = free_port()
    server = RedisServer(None, "--tls-port", str(tls_port), "--tls-cert-file", str(crt), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    server.start()  # the plain port answers PING; the TLS port is what the layer uses
    wait_port(tls_port, server)
    server.tls_port = tls_port  # type: ignore[attr-defined]
    yield server, ca
    server.stop()


async def test_rediss_url(tls_server: tuple[RedisServer, Path], prefix: str) -> None:
    server, ca = tls_server
    url = f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs={ca}"  # type: ignore[attr-defined]
    assert await roundtrip(url, prefix) == {"type": "secure"}
    assert int(server.command("DBSIZE")[1:].strip()) >= 0


# -- Sentinel ------------------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    master = RedisServer().start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 5000\n"
    )
    proc = subprocess.Popen([require("redis-server"), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        holder = RedisServer(port)
        holder.proc = proc
        wait_port(port, holder)
        yield master, port
    finally:
        proc.kill()
        proc.wait(5)
        master.stop()


async def test_sentinel_host(sentinel: tuple[RedisServer, int], prefix: str) -> None:
    master, port = sentinel
    host = {"sentinels": [["127.0.0.1", port]], "master_name": "mymaster"}
    a, b = RedisChannelLayer(hosts=[host], prefix=prefix), RedisChannelLayer(hosts=[host], prefix=prefix)
    try:
        ch = await b.new_channel()
        await a.send(ch, {"type": "via-sentinel"})
        await a.send("plain", {"type": "via-sentinel"})
        assert await asyncio.wait_for(b.receive(ch), 5) == {"type": "via-sentinel"}
        assert await asyncio.wait_for(b.receive("plain"), 5) == {"type": "via-sentinel"}
        assert a.labels == ["sentinel:mymaster"]
    finally:
        await a.close()
        await b.close()


# -- faults on Sentinel and sharded hosts ------------------------------------------------


async def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def send_through_a_restart(sender: RedisChannelLayer, member: RedisChannelLayer, channels: list[str], restart: Any) -> list[int]:
    """group_send 40 messages while ``restart()`` happens; every one that returned reached every member."""
    returned: list[int] = []
    for n in range(40):
        if n == 5:
            restart()
        try:
            await sender.group_send("room", {"type": "m", "n": n})
            returned.append(n)
        except LayerUnavailable:
            pass
        await asyncio.sleep(0.02)
    for ch in channels:
        got = [(await asyncio.wait_for(member.receive(ch), 10))["n"] for _ in returned]
        assert got == returned, ch
    return returned


async def test_sentinel_master_killed_and_restarted(sentinel: tuple[RedisServer, int], prefix: str) -> None:
    master, port = sentinel
    host = {"sentinels": [["127.0.0.1", port]], "master_name": "mymaster"}
    member = RedisChannelLayer(hosts=[host], prefix=prefix)
    sender = RedisChannelLayer(hosts=[host], prefix=prefix)
    try:
        channels = [await member.new_channel() for _ in range(3)]
        for ch in channels:
            await member.group_add("room", ch)

        def restart() -> None:
            master.stop()
            master.start()

        returned = await send_through_a_restart(sender, member, channels, restart)
        assert returned[-1] == 39 and returned[:5] == [0, 1, 2, 3, 4]
        await wait_until(lambda: member.health == ("ok", ""))
    finally:
        await member.close()
        await sender.close()


@pytest.fixture
def sentinel_with_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, int]]:
    master = RedisServer().start()
    replica = RedisServer(None, "--replicaof", "127.0.0.1", str(master.port)).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
    )
    proc = subprocess.Popen([require("redis-server"), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        holder = RedisServer(port)
        holder.proc = proc
        wait_port(port, holder)
        yield master, replica, port
    finally:
        proc.kill()
        proc.wait(5)
        replica.stop()
        master.stop()


async def test_sentinel_failover_to_the_replica(sentinel_with_replica: tuple[RedisServer, RedisServer, int], prefix: str) -> None:
    """The master dies for good; Sentinel promotes the replica (it has the memberships); the layer follows."""
    master, replica, port = sentinel_with_replica
    host = {"sentinels": [["127.0.0.1", port]], "master_name": "mymaster"}
    member = RedisChannelLayer(hosts=[host], prefix=prefix)
    sender = RedisChannelLayer(hosts=[host], prefix=prefix)
    try:
        channel = await member.new_channel()
        await member.group_add("room", channel)
        await sender.group_send("room", {"type": "m", "n": 0})
        assert (await asyncio.wait_for(member.receive(channel), 5))["n"] == 0
        await wait_until(lambda: b"master_link_status:up" in replica.command("INFO", "replication"))
        master.stop()
        deadline = time.monotonic() + 30
        while True:  # until Sentinel has promoted the replica, group_send fails (reported to the caller)
            try:
                await sender.group_send("room", {"type": "m", "n": 1})
                break
            except LayerUnavailable:
                assert time.monotonic() < deadline, "no failover"
                await asyncio.sleep(0.2)
        assert (await asyncio.wait_for(member.receive(channel), 10))["n"] == 1
        assert b"role:master" in replica.command("INFO", "replication")
    finally:
        await member.close()
        await sender.close()


async def test_one_shard_killed_and_restarted(two_servers: list[RedisServer], prefix: str) -> None:
    hosts = [s.url for s in two_servers]
    member = RedisChannelLayer(hosts=hosts, prefix=prefix)
    sender = RedisChannelLayer(hosts=hosts, prefix=prefix)
    try:
        channels = []
        while {member.ring.index(member.non_local_name(c)) for c in channels} != {0, 1}:  # members on both shards
            channels.append(await member.new_channel(f"p{len(channels)}"))
        for ch in channels:
            await member.group_add("room", ch)

        def restart() -> None:
            two_servers[1].stop()
            two_servers[1].start()

        returned = await send_through_a_restart(sender, member, channels, restart)
        assert returned[-1] == 39 and returned[:5] == [0, 1, 2, 3, 4]
        await wait_until(lambda: member.health == ("ok", ""))
    finally:
        await member.close()
        await sender.close()
