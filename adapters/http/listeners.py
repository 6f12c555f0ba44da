"""Opening listening sockets: TCP (IPv4/IPv6), unix socket paths, inherited fds, TLS, reuse_port."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from typing import Any

from gateway.errors import StartupError
from gateway.schema import ListenAddress

from .config import HttpConfig, TLSConfig


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"adapters.http.tls: cannot load cert {tls.cert!r} / key {tls.key!r}: {exc}") from exc
    if tls.client_ca:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"adapters.http.tls.client_ca: cannot load {tls.client_ca!r}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def open_socket(addr: ListenAddress, config: HttpConfig) -> socket.socket:
    """A bound, listening, non-blocking socket for ``addr``."""
    sock: socket.socket | None = None
    try:
        if addr.kind == "fd":
            sock = socket.socket(fileno=addr.fd)
            if sock.type != socket.SOCK_STREAM:
                sock.detach()  # the fd is the caller's: leave it open
                raise StartupError(f"fd://{addr.fd} is not a stream socket")
        elif addr.kind == "unix":
            try:
                if stat.S_ISSOCK(os.stat(addr.path).st_mode):
                    os.unlink(addr.path)  # a stale socket from a previous run
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(addr.path)
        else:
            host = addr.host
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if config.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, addr.port))
        sock.listen(config.backlog)
        sock.setblocking(False)
    except StartupError:
        raise
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise StartupError(f"adapters.http: cannot listen on {addr}: {exc.strerror or exc}") from exc
    return sock


def describe(sock: socket.socket) -> str:
    name: Any = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name if isinstance(name, str) else name.decode()}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
