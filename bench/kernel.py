"""What the kernel says of a benchmark's sockets: its listen-queue counters and its TCP memory."""

from __future__ import annotations

import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")

TCP_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
)
"""The kernel's counts of connects a listening socket could not take (C{nstat -a})."""


def tcpCounters() -> dict[str, int]:
    """L{TCP_COUNTERS} now, from C{/proc/net/netstat}."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            counts = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            return {name: counts.get(name, 0) for name in TCP_COUNTERS}
    return {}


def socketMemory() -> dict[str, int]:
    """The kernel's TCP sockets in use and the pages their buffers hold (C{/proc/net/sockstat})."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return {k: int(v) for k, v in zip(fields[::2], fields[1::2])}
    return {}


def counterChange(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """How much each of L{TCP_COUNTERS} grew from C{before} to C{after}."""
    return {name: after[name] - before.get(name, 0) for name in after}
