"""Throwaway TLS material for the tests, made with the openssl command line (an install-peers package)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gateway_helpers import require

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, names: tuple[str, ...] = ("server",), ca_name: str = "test-ca") -> Path:
    """``ca.pem``/``ca.key`` and, for each name, ``NAME.pem``/``NAME.key`` signed by that CA and valid
    for 127.0.0.1 and localhost. Returns ``directory``."""
    openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={ca_name}", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in names:
        openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=directory)
    return directory


def self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A self-signed RSA certificate for ``common_name``: ``(cert.pem, key.pem)``."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={common_name}",
            "-keyout", "key.pem", "-out", "cert.pem", cwd=directory)
    return directory / "cert.pem", directory / "key.pem"
