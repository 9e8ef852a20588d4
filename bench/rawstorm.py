"""
A lean storm client for bench/storm.py (C{--client raw}): non-blocking
sockets on one C{epoll}, no event-loop framework, so that a storm measures
the server's accept path rather than the clients' own cost (the asyncio
client spends about three times the server's CPU per connection).

The same contract as the asyncio client: at most C{inFlight} connects
outstanding at once (a slot is freed when the connect completes, not when
the welcome arrives), latency from the start of the connect to the whole
welcome's arrival, everything bounded by C{deadline}.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from typing import Any

from hdrh.histogram import HdrHistogram

LINGER_RST = struct.pack("ii", 1, 0)
_CONNECTING, _WAITING = 1, 2


def storm(
    port: int, clients: int, inFlight: int, deadline: float, sources: list[str], welcome: bytes
) -> dict[str, Any]:
    """Run one client process's share of a storm; its figures, as the asyncio client's."""
    histogram = HdrHistogram(1, 600_000_000, 3)
    counts = {"welcomed": 0, "noWelcome": 0, "failedToConnect": 0, "notBegun": 0}
    poll = select.epoll()
    # fd -> [socket, state, started, received]
    live: dict[int, list[Any]] = {}
    done: list[socket.socket] = []
    began = time.monotonic()
    end = began + deadline
    started = connecting = 0
    try:
        while (started < clients or live) and time.monotonic() < end:
            while started < clients and connecting < inFlight:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.bind((sources[started % len(sources)], 0))
                at = time.monotonic()
                code = sock.connect_ex(("127.0.0.1", port))
                started += 1
                if code not in (0, errno.EINPROGRESS):
                    counts["failedToConnect"] += 1
                    sock.close()
                    continue
                live[sock.fileno()] = [sock, _CONNECTING, at, b""]
                poll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)
                connecting += 1
            for fd, event in poll.poll(0.05):
                entry = live[fd]
                sock = entry[0]
                if entry[1] == _CONNECTING:
                    connecting -= 1
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        counts["failedToConnect"] += 1
                        _forget(poll, live, fd)
                        sock.close()
                        continue
                    entry[1] = _WAITING
                    poll.modify(fd, select.EPOLLIN)
                    if not event & select.EPOLLIN:
                        continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                entry[3] += data
                if len(entry[3]) >= len(welcome) or not data:
                    if entry[3].startswith(welcome):
                        counts["welcomed"] += 1
                        histogram.record_value(max(1, int((time.monotonic() - entry[2]) * 1e6)))
                    else:
                        counts["noWelcome"] += 1
                    _forget(poll, live, fd)
                    done.append(sock)
        for entry in live.values():  # the deadline passed
            counts["noWelcome" if entry[1] == _WAITING else "failedToConnect"] += 1
            done.append(entry[0])
        counts["notBegun"] = clients - started  # the deadline came first: not a failure
        took = time.monotonic() - began
    finally:
        poll.close()
        for sock in done:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.close()
    return {**counts, "clients": clients, "inFlight": inFlight, "seconds": round(took, 2),
            "_histogram": histogram}  # fmt: skip


def _forget(poll: select.epoll, live: dict[int, list[Any]], fd: int) -> None:
    poll.unregister(fd)
    del live[fd]
