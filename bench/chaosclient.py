"""
A load client process for bench/chaos.py: holds N connections to a timer
server, spread over several loopback source addresses, counts each one's
periodic messages and notes every gap longer than 1.5 intervals.  A
connection the server closes (its worker was killed) is reconnected after
a random back-off, and the time from the new connect to its welcome is
recorded.  On "stop" on standard input it writes one JSON record per
connection (every reconnection is a new one) to RECORDS and exits; the
connections close with RST so that no TIME_WAIT is left behind.

    python -m bench.chaosclient HOST PORT CONNECTIONS INTERVAL RECORDS
        --sources 127.0.0.2,127.0.0.3 [--reconnect 1.0:3.0]

A record: [local address, connect start, welcomed at (or null), messages,
last message at, closed at (or null), [[gap start, gap end], ...]], times
from time.monotonic(), which every process on the machine shares.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import sys
import time
from typing import Any

WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"
LINGER_RST = struct.pack("ii", 1, 0)


class Conn(asyncio.Protocol):
    def __init__(self, client: Client, source: str) -> None:
        self.client = client
        self.source = source
        self.started = time.monotonic()
        self.local = ""
        self.welcomed: float | None = None
        self.count = 0
        self.last = 0.0
        self.closed: float | None = None
        self.gaps: list[list[float]] = []
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        host, port = sock.getsockname()[:2]
        self.local = f"{host}:{port}"

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if self.welcomed is None:
            if len(self.buffer) < len(WELCOME):
                return
            self.buffer = self.buffer[len(WELCOME) :]
            self.welcomed = self.last = now
        size = len(MESSAGE)
        while len(self.buffer) >= size:
            self.buffer = self.buffer[size:]
            if now - self.last > 1.5 * self.client.interval:
                self.gaps.append([self.last, now])
            self.count += 1
            self.last = now

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = time.monotonic()
        if not self.client.stopping:
            self.client.reconnect(self.source)

    def record(self) -> list[Any]:
        return [
            self.local,
            self.started,
            self.welcomed,
            self.count,
            self.last,
            self.closed,
            self.gaps,
        ]


class Client:
    def __init__(self, host: str, port: int, interval: float, backoff: tuple[float, float]):
        self.host = host
        self.port = port
        self.interval = interval
        self.backoff = backoff
        self.conns: list[Conn] = []
        self.stopping = False
        self.failed = 0

    async def connect(self, source: str) -> None:
        loop = asyncio.get_running_loop()
        conn = Conn(self, source)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, self.host, self.port, local_addr=(source, 0)),
                30,
            )
            self.conns.append(conn)
        except (OSError, asyncio.TimeoutError):
            self.failed += 1
            if not self.stopping:
                self.reconnect(source)

    def reconnect(self, source: str) -> None:
        loop = asyncio.get_running_loop()
        delay = random.uniform(*self.backoff)
        loop.call_later(delay, lambda: loop.create_task(self.connect(source)))


async def main(args: Any) -> None:
    sources = args.sources.split(",")
    low, high = map(float, args.reconnect.split(":"))
    client = Client(args.host, args.port, args.interval, (low, high))
    for start in range(0, args.connections, 10):
        batch = range(start, min(args.connections, start + 10))
        await asyncio.gather(*(client.connect(sources[i % len(sources)]) for i in batch))
    print(json.dumps({"connected": len(client.conns), "failed": client.failed}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # "stop", or the end of input
    client.stopping = True
    with open(args.records, "w") as out:
        for conn in client.conns:
            out.write(json.dumps(conn.record()) + "\n")
    for conn in client.conns:
        if conn.transport is not None:
            conn.transport.abort()
    print(json.dumps({"records": len(client.conns), "failed": client.failed}), flush=True)


if __name__ == "__main__":
    import argparse
    import resource

    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("connections", type=int)
    parser.add_argument("interval", type=float)
    parser.add_argument("records")
    parser.add_argument("--sources", default="127.0.0.1")
    parser.add_argument("--reconnect", default="1.0:3.0")
    a = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(a))
    else:
        uvloop.run(main(a))
