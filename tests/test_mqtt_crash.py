"""Redelivery after a gateway crash: a real gateway process is killed (SIGKILL) while its app
is handling a QoS 1 message; the next gateway process with the same client id gets the message
again from Mosquitto, handles it, and acknowledges it for good."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

import pytest
from mqtt_helpers import Peer, gateway_process, mosquitto, stop_process, wait_for

pytestmark = [pytest.mark.timeout(40)]


class Started:
    """Reads a gateway's stderr in a thread until it logs that the mqtt adapter started."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if "adapter.started" in line and "mqtt" in line:
                self.ready.set()

    async def wait(self, timeout: float = 15) -> None:
        ok = await asyncio.to_thread(self.ready.wait, timeout)
        assert ok, "gateway did not start:\n" + "".join(self.lines[-30:])


async def test_message_comes_again_after_the_gateway_is_killed_mid_message(tmp_path: Path) -> None:
    probe = tmp_path / "probe.txt"
    probe.touch()

    def lines() -> list[bytes]:
        return probe.read_bytes().splitlines()

    with mosquitto(tmp_path) as port:
        config = tmp_path / "gateway.yaml"
        config.write_text(f"""\
adapters:
  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{port}", client_id: gw-crash-test}}
routes:
  mqtt:
    - {{topic: "work/+id", app: "mqtt_helpers:probe_app"}}
shutdown: {{drain_timeout: 1}}
logging: {{format: json}}
""")
        env = {"MQTT_PROBE_FILE": str(probe)}
        first = gateway_process(config, {**env, "MQTT_PROBE_SLEEP": "60"})
        try:
            await Started(first).wait()
            peer = Peer(port)
            try:
                peer.publish("work/1", b"crash-1", qos=1)
            finally:
                peer.close()
            await wait_for(lambda: lines() == [b"crash-1"], timeout=10, what="the first gateway took the message")
        finally:
            stop_process(first, kill=True)  # mid-message: the app is sleeping, nothing was acknowledged

        second = gateway_process(config, {**env, "MQTT_PROBE_SLEEP": "0"})
        try:
            await Started(second).wait()
            await wait_for(lambda: len(lines()) == 2, timeout=10, what="redelivery to the restarted gateway")
            await asyncio.sleep(0.3)  # let the PUBACK leave
        finally:
            stop_process(second)
        assert lines() == [b"crash-1", b"crash-1"]

        third = gateway_process(config, {**env, "MQTT_PROBE_SLEEP": "0"})
        try:
            await Started(third).wait()
            await asyncio.sleep(0.7)
        finally:
            stop_process(third)
        assert lines() == [b"crash-1", b"crash-1"], "handled and acknowledged: never delivered a third time"


async def test_shared_subscription_splits_messages_between_two_gateway_processes(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as port:
        procs = []
        probes = []
        for name in ("a", "b"):
            probe = tmp_path / f"probe-{name}.txt"
            probe.touch()
            probes.append(probe)
            config = tmp_path / f"gateway-{name}.yaml"
            config.write_text(f"""\
adapters:
  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{port}", client_id: gw-shared-{name}, shared: workers}}
routes:
  mqtt:
    - {{topic: "jobs/+id", app: "mqtt_helpers:probe_app"}}
shutdown: {{drain_timeout: 1}}
logging: {{format: json}}
""")
            procs.append(gateway_process(config, {"MQTT_PROBE_FILE": str(probe)}))
        try:
            await asyncio.gather(*(Started(p).wait() for p in procs))
            peer = Peer(port)
            try:
                for i in range(60):
                    peer.client.publish(f"jobs/{i}", b"%d" % i, 1)
                seen = lambda: [line for p in probes for line in p.read_bytes().splitlines()]  # noqa: E731
                await wait_for(lambda: len(seen()) >= 60, timeout=10, what="60 jobs handled")
                await asyncio.sleep(0.3)
            finally:
                peer.close()
        finally:
            for p in procs:
                stop_process(p)
        a, b = (p.read_bytes().splitlines() for p in probes)
    assert a and b, (len(a), len(b))
    assert sorted(int(x) for x in a + b) == list(range(60))  # each job exactly once
