"""An unexpected exception is logged with its traceback; expected refusals stay one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .gateway_helpers import ROOT

PLUGIN = '''
from gateway.plugins import Adapter


class Courier(Adapter):
    name = "courier"
    outbound_channels = ("courier.send",)

    async def start(self):
        pass

    async def stop(self, drain):
        pass

    async def handle_outbound(self, channel, message):
        return deliver(message)


def deliver(message):
    raise RuntimeError("the courier's van broke down")
'''

SCRIPT = '''
import asyncio, sys
from gateway import Gateway, logs

async def main():
    logs.configure("info", "json")
    async with Gateway.from_file(sys.argv[1]) as gw:
        await gw.layer.send("courier.send", {"type": "courier.send"})
        for _ in range(200):
            await asyncio.sleep(0.01)

asyncio.run(main())
'''


def test_an_unexpected_outbound_failure_is_logged_with_its_traceback(tmp_path: Path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "courier.py").write_text(PLUGIN)
    config = tmp_path / "gw.yaml"
    config.write_text("plugins: {paths: [plugins]}\nadapters: {courier: {}}\n")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(config)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ})
    records = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    failed = [r for r in records if r.get("event") == "outbound.failed"]
    assert len(failed) == 1, done.stdout + done.stderr
    assert failed[0]["error"] == "RuntimeError: the courier's van broke down"
    assert "Traceback" in failed[0]["exception"] and "in deliver" in failed[0]["exception"]
