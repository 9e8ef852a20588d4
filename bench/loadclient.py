"""
A load client process for bench/server.py: opens N connections to a timer
server, then, between "start" and "stop" lines on its standard input, counts
periodic messages and records how late each arrives against its schedule
(the welcome's arrival plus k intervals) in an HdrHistogram, in microseconds.
Prints one JSON line with its figures and exits; connections close with RST
so that no TIME_WAIT is left behind.

    python bench/loadclient.py HOST PORT CONNECTIONS INTERVAL [--ca CAFILE]
        [--source ADDR[,ADDR...]]

With --ca, every connection is TLS, verified against that CA; with --source,
connections come from that local address (each loopback address has its own
28,000 ephemeral ports).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
import struct
import sys
import time

from hdrh.histogram import HdrHistogram

WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"
LINGER_RST = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""Linux's option (its value 24); Python names it from 3.12."""


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.histogram = HdrHistogram(1, 600_000_000, 3)
        self.messages = 0
        self.connected = 0
        self.failed = 0
        self.closed = 0
        self.early = 0


class Client(asyncio.Protocol):
    def __init__(self, stats: Stats, interval: float) -> None:
        self.stats = stats
        self.interval = interval
        self.buffer = b""
        self.welcomedAt: float | None = None
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if self.welcomedAt is None:
            if len(self.buffer) < len(WELCOME):
                return
            self.buffer = self.buffer[len(WELCOME) :]
            self.welcomedAt = now
        size = len(MESSAGE)
        while len(self.buffer) >= size:
            self.buffer = self.buffer[size:]
            self.received += 1
            if self.stats.measuring:
                self.stats.messages += 1
                late = now - (self.welcomedAt + self.received * self.interval)
                if late < 0:
                    self.stats.early += 1  # the welcome itself was delayed
                self.stats.histogram.record_value(max(1, int(late * 1e6)))

    def expectedBy(self, when: float) -> int:
        if self.welcomedAt is None:
            return 0
        return max(0, int((when - self.welcomedAt) / self.interval))

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1


async def main(
    host: str, port: int, count: int, interval: float, caFile: str | None, sources: list[str]
) -> None:
    stats = Stats()
    tls = ssl.create_default_context(cafile=caFile) if caFile else None
    clients: list[Client] = []
    loop = asyncio.get_running_loop()
    source = itertools.cycle(sources)

    async def connect() -> tuple[asyncio.BaseTransport, Client]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if sources:
                # The port is chosen at connect, by the whole address pair: a
                # bind that chooses it scans every port bound so far.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((next(source), 0))
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return await loop.create_connection(
            lambda: Client(stats, interval),
            sock=sock,
            ssl=tls,
            server_hostname="localhost" if tls else None,
        )

    async def connectOne() -> None:
        try:
            _, client = await asyncio.wait_for(connect(), 30)
            clients.append(client)
            stats.connected += 1
        except (OSError, asyncio.TimeoutError):
            stats.failed += 1

    # A few at a time, so that each welcome is read as it arrives: it anchors
    # the connection's schedule.
    for start in range(0, count, 10):
        await asyncio.gather(*(connectOne() for _ in range(start, min(count, start + 10))))
    print(json.dumps({"connected": stats.connected, "failed": stats.failed}), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    assert line.strip() == b"start", line
    started = time.monotonic()
    lostBefore = sum(max(0, c.expectedBy(started) - c.received) for c in clients)
    stats.measuring = True
    line = await reader.readline()
    stopped = time.monotonic()
    stats.measuring = False
    margin = 0.25  # a message due just before "stop" may still be on its way
    lostAfter = sum(max(0, c.expectedBy(stopped - margin) - c.received) for c in clients)
    print(
        json.dumps(
            {
                "messages": stats.messages,
                "seconds": stopped - started,
                "lost": max(0, lostAfter - lostBefore),
                "closedByServer": stats.closed,
                "earlierThanAnchor": stats.early,
                "histogram": stats.histogram.encode().decode("ascii"),
            }
        ),
        flush=True,
    )
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("connections", type=int)
    parser.add_argument("interval", type=float)
    parser.add_argument("--ca", help="speak TLS, trusting this CA file")
    parser.add_argument(
        "--source", default="", help="local addresses to connect from, in turn (comma-separated)"
    )
    a = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(
        main(
            a.host, a.port, a.connections, a.interval, a.ca, list(filter(None, a.source.split(",")))
        )
    )
