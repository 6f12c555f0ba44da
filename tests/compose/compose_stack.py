"""The machinery of the compose test: a dockerd of the test's own, stand-in images, docker-compose.

No container registry is reachable here, so the stock images docker-compose.yml names (python,
redis, eclipse-mosquitto, postgres) are built from Debian's packages under those names: a
debootstrap root file system imported as a base, then one small Dockerfile per image in
``standins/``. The daemon's data root lives in a cache folder that outlives the run, so a repeat
finds every image (and the gateway image's build cache) in place; ``COMPOSE_TEST_CACHE`` names
the folder, and deleting it gives a cold run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STANDINS = HERE / "standins"
CACHE = Path(os.environ.get("COMPOSE_TEST_CACHE", "/var/tmp/asgi-gateway-compose-test"))
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,ca-certificates"
BASE_IMAGE = "asgi-gateway-standin/bookworm"
IMAGES = {  # stand-in Dockerfile -> the stock name docker-compose.yml and the Dockerfile use
    "python": "python:3.11-slim-bookworm",
    "redis": "redis:7-bookworm",
    "mosquitto": "eclipse-mosquitto:2",
    "postgres": "postgres:15-bookworm",
}
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
"""docker.io's own client, the daemon's version (another client may come first on PATH)."""
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
"""This machine reaches PyPI through a proxy whose CA is in the host's bundle (pip's ``cert``)."""


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: list[str], *, env: dict[str, str] | None = None, check: bool = True, capture: bool = False,
        cwd: Path | None = None, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, cwd=cwd, text=True, capture_output=capture, timeout=timeout)
    if check and result.returncode != 0:
        detail = f"\n{result.stdout}\n{result.stderr}" if capture else ""
        raise RuntimeError(f"{' '.join(args)} exited with {result.returncode}{detail}")
    return result


def overlay_works() -> bool:
    """overlay2 is much faster than vfs (no full copy per layer); use it where the kernel allows
    an overlay mount on the cache's file system."""
    probe = Path(tempfile.mkdtemp(dir=CACHE, prefix="overlay-probe-"))
    try:
        for d in ("l", "u", "w", "m"):
            (probe / d).mkdir()
        opts = f"lowerdir={probe / 'l'},upperdir={probe / 'u'},workdir={probe / 'w'}"
        if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(probe / "m")], capture_output=True).returncode:
            return False
        subprocess.run(["umount", str(probe / "m")], check=True)
        return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


class Dockerd:
    """A Docker engine for this test only: no iptables, no default bridge, its own folders and
    socket; stopped by its pid."""

    def __init__(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self.driver = "overlay2" if overlay_works() else "vfs"
        self.data_root = CACHE / f"docker-{self.driver}"
        self.run_dir = Path(tempfile.mkdtemp(prefix="agw-dockerd-"))
        self.socket = self.run_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dockerd:
        self.log_file = open(self.run_dir / "dockerd.log", "wb")
        self.proc = subprocess.Popen([
            "dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
            f"--storage-driver={self.driver}", "--data-root", str(self.data_root),
            "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "dockerd.pid"),
            "-H", self.host,
        ], stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}: {self.tail()}")
            if self.socket.exists() and self.docker("version", check=False, capture=True).returncode == 0:
                log(f"dockerd up ({self.driver}, data in {self.data_root})")
                return self
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within 60 s: {self.tail()}")

    def tail(self) -> str:
        return (self.run_dir / "dockerd.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, *args], env=self.env, check=check, capture=capture)

    def image_label(self, image: str, label: str) -> str | None:
        found = self.docker("image", "inspect", image, check=False, capture=True)
        if found.returncode:
            return None
        return (json.loads(found.stdout)[0]["Config"].get("Labels") or {}).get(label)


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build_standins(dockerd: Dockerd) -> None:
    """The base file system and the four stand-ins, each rebuilt only when its recipe changed."""
    base_key = _digest(SUITE.encode(), PACKAGES.encode())
    if dockerd.image_label(BASE_IMAGE, "standin.key") != base_key:
        rootfs = CACHE / f"rootfs-{base_key}.tar"
        if not rootfs.exists():
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                log(f"debootstrap {SUITE} ({PACKAGES})")
                run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, tmp, "http://deb.debian.org/debian"],
                    capture=True)
                run(["tar", "-C", tmp, "-cf", str(rootfs) + ".part", "."])
                os.replace(str(rootfs) + ".part", rootfs)
        log(f"import {BASE_IMAGE}")
        dockerd.docker("import", "--change", f"LABEL standin.key={base_key}", "--change", 'CMD ["bash"]',
                       str(rootfs), BASE_IMAGE)
    with tempfile.TemporaryDirectory() as context:
        for f in STANDINS.iterdir():
            shutil.copy2(f, context)
        shutil.copy2(HOST_CA, Path(context) / "host-ca.crt")
        for name, image in IMAGES.items():
            recipe = [(STANDINS / f"{name}.Dockerfile").read_bytes(), base_key.encode()]
            recipe += [f.read_bytes() for f in sorted(STANDINS.glob(f"{name}-*"))]
            if name == "python":
                recipe.append(HOST_CA.read_bytes())
            key = _digest(*recipe)
            if dockerd.image_label(image, "standin.key") == key:
                continue
            log(f"build stand-in {image}")
            dockerd.docker("build", "-q", "--network", "host", "--label", f"standin.key={key}", "-t", image,
                           "-f", f"{context}/{name}.Dockerfile", context, capture=True)


@dataclass
class Compose:
    """docker-compose on the user's docker-compose.yml plus the test-only override."""

    dockerd: Dockerd
    env: dict[str, str]
    project: str = "agwtest"

    def __call__(self, *args: str, check: bool = True, capture: bool = False, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        return run(["docker-compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"),
                    "-f", str(HERE / "override.yml"), *args],
                   env={**self.dockerd.env, **self.env}, cwd=ROOT, check=check, capture=capture, timeout=timeout)

    def sql(self, query: str) -> str:
        """One value from the demo's PostgreSQL, asked inside its container."""
        return self("exec", "-T", "postgres", "psql", "-U", self.env["POSTGRES_USER"], "-d", self.env["POSTGRES_DB"],
                    "-tAc", query, capture=True).stdout.strip()

    def logs(self, service: str) -> str:
        return self("logs", "--no-color", service, capture=True).stdout

    def container(self, service: str) -> dict:
        cid = self("ps", "-q", service, capture=True).stdout.strip()
        return json.loads(self.dockerd.docker("inspect", cid, capture=True).stdout)[0]
