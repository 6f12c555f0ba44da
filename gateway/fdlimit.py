"""The process's open-file limit against the connections its configuration allows.

Every connection is a file descriptor. When the limit (``ulimit -n``, often 1024) is below what
the adapters' connection limits allow, the connections beyond it fail in ``accept`` before any
adapter sees them: the clients get resets, and the adapter's own limit (with its clear refusal,
its log line and its counter) never comes into play. So at start the gateway raises its soft
limit as far as the hard limit allows, and says once, loudly, when that is not enough.
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("gateway")

# descriptors beyond the client connections: listeners, log files, the layer's and the adapters'
# outgoing connections, imports
RESERVE = 128

_warned: set[tuple[int, int]] = set()  # (limit, wanted) already warned about in this process


def ensure(connections: int) -> int:
    """Make room for ``connections`` client connections (the sum of the adapters' limits) plus
    ``RESERVE``; return the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVE
    if connections <= 0 or soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep the old limit, warn below
            log.debug("gateway.fd_limit_not_raised", soft=soft, wanted=target, error=str(exc))
        else:
            log.info("gateway.fd_limit_raised", old=soft, new=target, hard=None if hard == resource.RLIM_INFINITY else hard)
            soft = target
    if soft < wanted and (soft, wanted) not in _warned:
        _warned.add((soft, wanted))
        log.warning(
            "gateway.fd_limit_low", limit=soft, hard=None if hard == resource.RLIM_INFINITY else hard,
            wanted=wanted, connections=connections,
            detail="the adapters' connection limits allow more connections than this process may open files; "
            "beyond the limit new connections fail before the gateway sees them. Raise the hard limit "
            "(LimitNOFILE=, ulimit -Hn, docker --ulimit nofile=) or lower the connection limits",
        )
    return soft
