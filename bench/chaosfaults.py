"""
The faults of bench/chaos.py that need more than a signal: scrapes (a
steady scraper and floods of scrapes and POSTs), log traffic (refused
connections), and a pinned open-file limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

GET = b"GET /metrics HTTP/1.1\r\nHost: chaos\r\n\r\n"
POST = b"POST /metrics HTTP/1.1\r\nHost: chaos\r\nContent-Length: 100000000000\r\n\r\n"
LINGER_RST = struct.pack("ii", 1, 0)


async def request(port: int, data: bytes, body: int = 0, timeout: float = 15) -> tuple[int, float]:
    """One request: its status (0 if none came) and the seconds it took."""
    started = time.monotonic()
    status = 0
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(data + b"x" * body)
        line = await asyncio.wait_for(reader.readline(), timeout)
        status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
        await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        pass
    return status, time.monotonic() - started


class Scrapes:
    """A steady scraper (every 2 s, as Prometheus would) and, on demand, floods."""

    def __init__(self, port: int, period: float = 2.0) -> None:
        self.port = port
        self.period = period
        self.results: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._steady, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(30)

    def _record(self, kind: str, started: float, status: int, seconds: float) -> None:
        self.results.append({"kind": kind, "at": started, "status": status, "seconds": seconds})

    def _steady(self) -> None:
        while not self._done.wait(self.period):
            started = time.monotonic()
            status, seconds = asyncio.run(request(self.port, GET))
            self._record("steady", started, status, seconds)

    def flood(self, seconds: float, scrapes: int, posts: int) -> None:
        """C{scrapes} concurrent GETs and C{posts} POSTs of 100 GB a second, for C{seconds}."""

        async def one(kind: str, data: bytes, body: int) -> None:
            started = time.monotonic()
            status, took = await request(self.port, data, body)
            self._record(kind, started, status, took)

        async def run() -> None:
            tasks = []
            for _ in range(int(seconds)):
                began = time.monotonic()
                tasks += [asyncio.ensure_future(one("flood", GET, 0)) for _ in range(scrapes)]
                tasks += [asyncio.ensure_future(one("post", POST, 65536)) for _ in range(posts)]
                await asyncio.sleep(max(0.0, began + 1.0 - time.monotonic()))
            await asyncio.gather(*tasks)

        asyncio.run(run())


def logTraffic(port: int, most: int, done: threading.Event, out: dict[str, int]) -> None:
    """
    Refused connections from one address, until C{done}: hold up to C{most}
    connections from 127.0.0.250 (past C{--max-per-peer}, new ones are
    refused and logged), then keep opening one at a time.
    """
    held: list[socket.socket] = []
    refused = accepted = 0

    def attempt() -> socket.socket | None:
        nonlocal refused, accepted
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        sock.settimeout(2)
        try:
            sock.bind(("127.0.0.250", 0))
            sock.connect(("127.0.0.1", port))
            first = sock.recv(64)
        except OSError:
            sock.close()
            return None
        if first.startswith(b"Server busy"):
            refused += 1
            sock.close()
            return None
        accepted += 1
        return sock

    try:
        while len(held) < most and not done.is_set() and refused < 20:
            sock = attempt()
            if sock is not None:
                held.append(sock)
        while not done.is_set():
            sock = attempt()
            if sock is not None:
                held.append(sock)
            time.sleep(0.005)
    finally:
        for sock in held:
            sock.close()
    out.update(refused=refused, accepted=accepted)


@contextlib.contextmanager
def pinnedFiles(pid: int) -> Iterator[None]:
    """Pin process C{pid}'s open-file limit (soft) at its current use, then restore it."""
    proc = psutil.Process(pid)
    soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
    proc.rlimit(psutil.RLIMIT_NOFILE, (proc.num_fds(), hard))
    try:
        yield
    finally:
        proc.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
