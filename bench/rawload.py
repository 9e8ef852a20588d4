"""
A lean load client for bench/server.py (C{--load raw}): the same contract as
bench/loadclient.py (its command line, its two JSON lines, "start" and
"stop" on standard input), on non-blocking sockets and one C{epoll}, with no
event-loop framework.  At 100,000 messages a second the asyncio client needs
about a core of its own and falls behind; this one reads each connection's
bytes with one C{recv} and counts whole messages.  Plain TCP only.

    python bench/rawload.py HOST PORT CONNECTIONS INTERVAL [--source ADDR[,ADDR...]]
        [--deadline SECONDS] [--pause SECONDS] [--in-flight N]

Its first line says how many connections were welcomed, how many failed to
connect, how many the kernel says are connected but were not welcomed within
60 s (C{noWelcome}: the server never accepted them), how many connects were
still in flight at the deadline, how many were never begun before it
(C{notStarted}), and how long connecting took.
Once connected it reads in rounds C{--pause} apart, so that thousands of
messages a second wake it a hundred times, not thousands: the lateness it
records includes up to one pause.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import struct
import sys
import time

from hdrh.histogram import HdrHistogram

WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"
LINGER_RST = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""Linux's option (its value 24); Python names it from 3.12."""
IN_FLIGHT = 20
"""Connects in flight at once, by default: each welcome is read as it arrives (it
anchors the schedule).  Fifty processes with 200 each overflowed the servers'
accept queues on two cores, and SYNs retried for minutes."""
STUCK = 60.0
"""Seconds a connect may wait for its welcome before it stops holding a place in flight."""


class Conn:
    __slots__ = ("pending", "received", "sock", "welcomedAt")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = len(WELCOME)  # bytes of the welcome still to come
        self.welcomedAt: float | None = None
        self.received = 0
        """Whole messages received; a partial one is carried in C{pending}."""

    def behindBy(self, when: float, interval: float) -> int:
        """Messages due by C{when} that have not arrived."""
        if self.welcomedAt is None:
            return 0
        return max(0, int((when - self.welcomedAt) / interval) - self.received)


def isConnected(sock: socket.socket) -> bool:
    """Whether the kernel has completed this socket's connect."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def run(
    host: str,
    port: int,
    count: int,
    interval: float,
    sources: list[str],
    deadline: float = 1200.0,
    pause: float = 0.01,
    inFlight: int = IN_FLIGHT,
) -> None:
    poll = select.epoll()
    conns: dict[int, Conn] = {}
    connected = failed = closed = early = messages = 0
    connecting: dict[int, float] = {}  # fd: when its connect began
    stuck: set[int] = set()  # connected no welcome within STUCK seconds
    histogram = HdrHistogram(1, 600_000_000, 3)
    measuring = False
    size = len(MESSAGE)

    def closeOne(fd: int) -> None:
        nonlocal closed
        poll.unregister(fd)
        conn = conns.pop(fd)
        conn.sock.close()
        if conn.welcomedAt is not None:
            closed += 1

    def readOne(fd: int, now: float) -> None:
        nonlocal messages, early
        conn = conns[fd]
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            closeOne(fd)
            return
        n = len(data)
        if conn.welcomedAt is None:
            if n < conn.pending:
                conn.pending -= n
                return
            n -= conn.pending
            conn.welcomedAt = now
            conn.pending = 0
        # conn.pending: bytes of a message begun in an earlier read
        n += conn.pending
        whole, conn.pending = divmod(n, size)
        for _ in range(whole):
            conn.received += 1
            if measuring:
                messages += 1
                late = now - (conn.welcomedAt + conn.received * interval)
                if late < 0:
                    early += 1
                histogram.record_value(max(1, int(late * 1e6)))

    started = 0
    connectBegan = time.monotonic()
    end = connectBegan + deadline
    while (started < count or connecting) and time.monotonic() < end:
        while started < count and len(connecting) < inFlight:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            if sources:
                # The port is chosen at connect, by the whole address pair: a
                # bind that chooses it scans every port bound so far.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[started % len(sources)], 0))
            started += 1
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                failed += 1
                sock.close()
                continue
            fd = sock.fileno()
            conns[fd] = Conn(sock)
            connecting[fd] = time.monotonic()
            poll.register(fd, select.EPOLLIN)
        events = poll.poll(0.05)
        now = time.monotonic()
        for fd, _ in events:
            if fd not in conns:
                continue
            readOne(fd, now)
            conn = conns.get(fd)
            if conn is not None and conn.welcomedAt is None:
                continue
            if connecting.pop(fd, None) is not None or fd in stuck:
                stuck.discard(fd)
                if conn is None:
                    failed += 1
                else:
                    connected += 1
        for fd in [fd for fd, at in connecting.items() if now - at > STUCK]:
            del connecting[fd]  # it keeps its socket, but no longer a place in flight
            stuck.add(fd)
    now = time.monotonic()
    connectSeconds = now - connectBegan
    notStarted = count - started
    # At the deadline: connects begun within STUCK seconds are still in
    # flight; older ones the kernel connected were never welcomed.
    waiting = sum(1 for at in connecting.values() if now - at <= STUCK)
    noWelcome = 0
    for fd in [*(fd for fd, at in connecting.items() if now - at > STUCK), *stuck]:
        if isConnected(conns[fd].sock):
            noWelcome += 1
        else:
            failed += 1
    print(
        json.dumps(
            {
                "connected": connected,
                "failed": failed,
                "noWelcome": noWelcome,
                "inFlightAtDeadline": waiting,
                "notStarted": notStarted,
                "connectSeconds": connectSeconds,
            }
        ),
        flush=True,
    )

    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    poll.register(stdin, select.EPOLLIN)
    commands = b""
    began = stopped = 0.0
    lostBefore = 0
    while True:
        events = poll.poll(1.0)
        now = time.monotonic()
        if pause:
            time.sleep(pause)  # the next round finds more to read
        command = None
        for fd, _ in events:
            if fd == stdin:
                chunk = os.read(stdin, 100)
                commands += chunk if chunk else b"stop\n"  # end of input: stop
                if b"\n" in commands:
                    line, commands = commands.split(b"\n", 1)
                    command = line.strip()
            elif fd in conns:
                readOne(fd, now)
        if command == b"start":
            began = now
            lostBefore = sum(c.behindBy(began, interval) for c in conns.values())
            measuring = True
        elif command == b"stop":
            stopped = now
            break
    margin = 0.25  # a message due just before "stop" may still be on its way
    lostAfter = sum(c.behindBy(stopped - margin, interval) for c in conns.values())
    print(
        json.dumps(
            {
                "messages": messages,
                "seconds": stopped - began,
                "lost": max(0, lostAfter - lostBefore),
                "closedByServer": closed,
                "earlierThanAnchor": early,
                "histogram": histogram.encode().decode("ascii"),
            }
        ),
        flush=True,
    )
    for conn in conns.values():
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("connections", type=int)
    parser.add_argument("interval", type=float)
    parser.add_argument(
        "--source",
        default="",
        help="local addresses to connect from, in turn (comma-separated): Linux gives "
        "connect() the even half of its ephemeral ports first, and past those (14,116 "
        "of 28,232 by default, per source and server address) each connect scans them "
        "all; keep each source under that",
    )
    parser.add_argument(
        "--deadline", type=float, default=1200.0, help="seconds to connect everyone (1200)"
    )
    parser.add_argument(
        "--pause", type=float, default=0.01, help="seconds between reading rounds (0.01)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help=f"connects at once ({IN_FLIGHT})"
    )
    args = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run(
        args.host, args.port, args.connections, args.interval,
        list(filter(None, args.source.split(","))),
        args.deadline, args.pause, args.in_flight,
    )  # fmt: skip


if __name__ == "__main__":
    main()
