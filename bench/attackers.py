"""
The client processes of bench/attack.py: the reading clients that count
every periodic message, and the attackers.  Each runs as

    python -m bench.attackers KIND 'JSON-CONFIG'

in a process of its own (each has the open-file limit to itself), prints
its figures as one JSON line and exits.  Every one of them is bounded in
count and time by its configuration; the reading clients also exit when
their standard input closes.

KIND is one of:

 - C{reader}: N connections (TLS with C{ca}, a PROXY v1 header first with
   C{proxy}) that record the arrival of every periodic message, then answer
   C{window A B} lines on standard input (monotonic times, comparable
   across processes on Linux) with what was received against what their
   schedule made due in that window.
 - C{hold}: opens up to C{count} sockets and sends nothing (TLS without a
   ClientHello, PROXY without a header), opening again what the server drops
   until C{duration}; then holds what is left, without reopening, until the
   server has dropped it all or C{holdAfter} has passed.
 - C{loop}: C{concurrency} connections at a time, at most C{rate} a second:
   connect, send the next of C{payloads}, wait for the server to close.
 - C{spoof}: C{count} connections each sending a valid PROXY header that
   claims one of C{addresses} client addresses, held for C{duration}.
 - C{rate}: connect and close (C{close}: C{fin}, an ordinary close, or
   C{rst}), C{rate} connects a second for C{duration}.
 - C{tlscost}: holds C{fill} TLS connections, then on C{go} makes C{count}
   TLS connects (a full handshake, waiting for the welcome, or refused),
   C{concurrency} at a time, each closed as C{close} says (C{fin}, C{rst}).
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import selectors
import socket
import ssl
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.proxyheaders import INVALID

WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"
BUSY = b"Server busy\r\n"
LINGER_RST = struct.pack("ii", 1, 0)
BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def v1(client: str, port: int, serverPort: int) -> bytes:
    """A valid PROXY v1 header claiming C{client}."""
    return f"PROXY TCP4 {client} 127.0.0.1 {port} {serverPort}\r\n".encode()


GARBAGE = INVALID  # every malformed kind tests/test_proxyheader.py checks


def clientAddress(pool: int, i: int) -> str:
    """The C{i}th of 62,500 distinct made-up client addresses in 10.C{pool}.0.0/16."""
    return f"10.{pool}.{i // 250 % 250}.{i % 250 + 1}"


def raiseFileLimit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def summary(values: list[float]) -> dict[str, float] | None:
    """min / median / max (and p99 for many) of C{values}, rounded; C{None} if empty."""
    if not values:
        return None
    values = sorted(values)
    return {
        "min": round(values[0], 4),
        "median": round(statistics.median(values), 4),
        "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))], 4),
        "max": round(values[-1], 4),
    }


# The reading clients


class ReaderClient(asyncio.Protocol):
    """One reading client: the welcome's arrival, then every message's."""

    def __init__(self, header: bytes | None) -> None:
        self.header = header
        self.buffer = b""
        self.welcomedAt: float | None = None
        self.arrivals: list[float] = []
        self.closedAt: float | None = None
        self.unexpected = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
        )
        if self.header:
            self.transport.write(self.header)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer + data
        if self.welcomedAt is None:
            if len(buffer) < len(WELCOME):
                self.buffer = buffer
                return
            if not buffer.startswith(WELCOME):
                self.unexpected += len(buffer)
                buffer = b""
            else:
                buffer = buffer[len(WELCOME) :]
            self.welcomedAt = now
        size = len(MESSAGE)
        at = 0
        while len(buffer) - at >= size:
            if buffer[at : at + size] == MESSAGE:
                self.arrivals.append(now)
            else:
                self.unexpected += size
            at += size
        self.buffer = buffer[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closedAt = time.monotonic()

    def window(self, start: float, end: float, interval: float) -> tuple[int, int, list[float]]:
        """
        Messages due in (C{start}, C{end}] on this client's schedule (the
        welcome's arrival plus k intervals), how many of them arrived, and
        their lateness.  The kth message to arrive is taken as the kth due:
        messages that never came are missing from the end.
        """
        w = self.welcomedAt
        if w is None:
            return 0, 0, []
        first = max(0, math.floor((start - w) / interval))
        last = max(0, math.floor((end - w) / interval))
        got = max(0, min(len(self.arrivals), last) - first)
        late = [
            self.arrivals[k - 1] - (w + k * interval) for k in range(first + 1, first + got + 1)
        ]
        return last - first, got, late


async def reader(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    tls = ssl.create_default_context(cafile=cfg["ca"]) if cfg.get("ca") else None
    interval = float(cfg["interval"])
    clients: list[ReaderClient] = []
    failed = Counter[str]()

    async def connectOne(i: int) -> None:
        header = None
        if cfg.get("proxy"):
            n = i + cfg.get("offset", 0)
            header = v1(clientAddress(200, n), 40000 + n % 20000, cfg["port"])
        try:
            _, client = await asyncio.wait_for(
                loop.create_connection(
                    lambda: ReaderClient(header),
                    "127.0.0.1",
                    cfg["port"],
                    ssl=tls,
                    server_hostname="localhost" if tls else None,
                    local_addr=(cfg.get("source", "127.0.0.1"), 0),
                ),
                30,
            )
            clients.append(client)
        except (OSError, asyncio.TimeoutError) as e:
            failed[type(e).__name__] += 1

    count = cfg["count"]
    # A few at a time, so that each welcome is read as it arrives.
    for start in range(0, count, 10):
        await asyncio.gather(*(connectOne(i) for i in range(start, min(count, start + 10))))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(c.welcomedAt is None for c in clients):
        await asyncio.sleep(0.1)
    welcomed = sum(c.welcomedAt is not None for c in clients)
    print(json.dumps({"connected": len(clients), "welcomed": welcomed, "failed": failed}))
    sys.stdout.flush()

    lines = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    while True:
        line = (await lines.readline()).decode().split()
        if not line or line[0] != "window":
            break
        start, end = float(line[1]), float(line[2])
        expected = received = 0
        lateness: list[float] = []
        short = closed = 0
        for c in clients:
            e, g, late = c.window(start, end, interval)
            expected += e
            received += g
            short += g < e
            lateness.extend(late)
            closed += c.closedAt is not None and c.closedAt <= end
        print(
            json.dumps(
                {
                    "expected": expected,
                    "received": received,
                    "clientsShort": short,
                    "closedByServer": closed,
                    "unwelcomed": sum(c.welcomedAt is None for c in clients),
                    "unexpectedBytes": sum(c.unexpected for c in clients),
                    "latenessSeconds": summary(lateness),
                }
            )
        )
        sys.stdout.flush()
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


# The attackers: one selector loop each, non-blocking sockets, no framework.


class Conn:
    __slots__ = ("connectedAt", "data", "index", "openedAt", "sock", "state")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.openedAt = time.monotonic()
        self.connectedAt = 0.0
        self.state = "connecting"
        self.data = b""


class Fleet:
    """
    Sockets to the server from loopback C{sources}, driven by one selector;
    C{onConnected}, C{onData} and C{onClosed} say what to do with them.
    """

    def __init__(self, port: int, sources: list[str]) -> None:
        self.port = port
        self.sources = sources
        self.selector = selectors.DefaultSelector()
        self.live: dict[int, Conn] = {}
        self.stats = Counter[str]()
        self.closeAges: list[float] = []
        self.opened = 0
        self.peakOpen = 0
        self.onConnected: Callable[[Conn], None] = lambda conn: None
        self.onData: Callable[[Conn, bytes], None] = lambda conn, data: None
        self.onClosed: Callable[[Conn], None] = lambda conn: None

    def open(self) -> Conn | None:
        index = self.opened
        self.opened += 1
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        sock.setsockopt(socket.IPPROTO_IP, BIND_NO_PORT, 1)
        try:
            sock.bind((self.sources[index % len(self.sources)], 0))
            err = sock.connect_ex(("127.0.0.1", self.port))
        except OSError as e:
            err = e.errno or -1
        if err not in (0, errno.EINPROGRESS):
            self.stats[f"connectError {errno.errorcode.get(err, err)}"] += 1
            sock.close()
            return None
        conn = Conn(sock, index)
        self.live[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_WRITE | selectors.EVENT_READ, conn)
        self.peakOpen = max(self.peakOpen, len(self.live))
        return conn

    def poll(self, timeout: float) -> None:
        for key, events in self.selector.select(timeout):
            conn: Conn = key.data
            if conn.state == "closed":
                continue
            if conn.state == "connecting":
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.stats[f"connectError {errno.errorcode.get(err, err)}"] += 1
                    self.drop(conn)
                    continue
                conn.state = "open"
                conn.connectedAt = time.monotonic()
                self.stats["connected"] += 1
                self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                self.onConnected(conn)
                if conn.state == "closed" or not events & selectors.EVENT_READ:
                    continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self.stats["bytesReceived"] += len(data)
                self.onData(conn, data)
            else:
                self.stats["closedByServer"] += 1
                self.closeAges.append(time.monotonic() - conn.connectedAt)
                self.onClosed(conn)
                self.drop(conn)

    def send(self, conn: Conn, data: bytes) -> None:
        try:
            conn.sock.send(data)
        except OSError:
            self.stats["sendFailed"] += 1

    def drop(self, conn: Conn) -> None:
        if conn.state == "closed":
            return
        conn.state = "closed"
        self.live.pop(conn.sock.fileno(), None)
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def expire(self, olderThan: float, label: str) -> None:
        """Close (and count as C{label}) what has been open longer than C{olderThan}."""
        now = time.monotonic()
        for conn in list(self.live.values()):
            if now - conn.openedAt > olderThan:
                self.stats[label] += 1
                self.drop(conn)

    def closeAll(self) -> int:
        conns = list(self.live.values())
        for conn in conns:
            self.drop(conn)
        return len(conns)

    def result(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "peakOpen": self.peakOpen,
            **self.stats,
            "secondsToServerClose": summary(self.closeAges),
        }


def paced(rate: float, began: float, done: int) -> int:
    """How many more may start now to keep to C{rate} a second since C{began}."""
    return max(0, int(rate * (time.monotonic() - began)) - done)


def hold(cfg: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(cfg["port"], cfg["sources"])
    began = time.monotonic()
    stop = began + cfg["duration"]
    while time.monotonic() < stop:
        room = min(cfg["count"] - len(fleet.live), paced(cfg["openRate"], began, fleet.opened))
        for _ in range(room):
            fleet.open()
        fleet.poll(0.01)
    heldAtStop = len(fleet.live)
    giveUp = time.monotonic() + cfg["holdAfter"]
    while fleet.live and time.monotonic() < giveUp:
        fleet.poll(0.05)
    return {
        **fleet.result(),
        "openAtStop": heldAtStop,
        "stillOpenAtEnd": fleet.closeAll(),
        "seconds": round(time.monotonic() - began, 2),
    }


def loop(cfg: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(cfg["port"], cfg["sources"])
    payloads = [bytes.fromhex(p) for p in cfg["payloads"]]
    fleet.onConnected = lambda conn: fleet.send(conn, payloads[conn.index % len(payloads)])
    began = time.monotonic()
    stop = began + cfg["duration"]
    while time.monotonic() < stop:
        room = min(cfg["concurrency"] - len(fleet.live), paced(cfg["rate"], began, fleet.opened))
        for _ in range(room):
            fleet.open()
        fleet.poll(0.005)
        fleet.expire(cfg["timeout"], "notClosedInTime")
    giveUp = time.monotonic() + cfg["timeout"]
    while fleet.live and time.monotonic() < giveUp:
        fleet.poll(0.05)
    return {
        **fleet.result(),
        "stillOpenAtEnd": fleet.closeAll(),
        "seconds": round(time.monotonic() - began, 2),
    }


def spoof(cfg: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(cfg["port"], cfg["sources"])
    addresses = cfg["addresses"]
    claimed = Counter[str]()

    def connected(conn: Conn) -> None:
        fleet.send(conn, v1(clientAddress(100, conn.index % addresses), 40000, cfg["port"]))

    def data(conn: Conn, chunk: bytes) -> None:
        if len(conn.data) < len(WELCOME):
            conn.data += chunk
            if conn.data.startswith(WELCOME):
                claimed["welcomed"] += 1
            elif conn.data.startswith(BUSY):
                claimed["toldBusy"] += 1
            elif len(conn.data) >= len(WELCOME):
                claimed["other"] += 1

    fleet.onConnected = connected
    fleet.onData = data
    began = time.monotonic()
    stop = began + cfg["duration"]
    while time.monotonic() < stop:
        room = min(cfg["count"] - fleet.opened, paced(cfg["openRate"], began, fleet.opened))
        for _ in range(room):
            fleet.open()
        fleet.poll(0.01)
    return {
        **fleet.result(),
        **claimed,
        "distinctAddresses": min(addresses, fleet.opened),
        "openAtStop": len(fleet.live),
        "closedByUs": fleet.closeAll(),
        "seconds": round(time.monotonic() - began, 2),
    }


def rate(cfg: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(cfg["port"], cfg["sources"])

    def close(conn: Conn) -> None:
        if cfg["close"] == "fin":  # an ordinary close(); else RST (SO_LINGER 0)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
        fleet.drop(conn)

    fleet.onConnected = close
    began = time.monotonic()
    stop = began + cfg["duration"]
    while time.monotonic() < stop:
        for _ in range(min(2000, paced(cfg["rate"], began, fleet.opened))):
            fleet.open()
        fleet.poll(0.002)
        fleet.expire(3.0, "connectTimeout")
    seconds = time.monotonic() - began
    giveUp = time.monotonic() + 3
    while fleet.live and time.monotonic() < giveUp:
        fleet.poll(0.05)
    return {
        **fleet.result(),
        "stillOpenAtEnd": fleet.closeAll(),
        "seconds": round(seconds, 2),
        "connectsPerSecond": round(fleet.stats["connected"] / seconds),
    }


async def tlscost(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=cfg["ca"])
    port = cfg["port"]

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )

    fillers = []
    for _ in range(cfg["fill"]):
        r, w = await asyncio.wait_for(connect(), 10)
        await asyncio.wait_for(r.readexactly(len(WELCOME)), 10)
        fillers.append(w)
    lines = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    print(json.dumps({"filled": len(fillers)}), flush=True)
    await lines.readline()

    outcomes = Counter[str]()
    slots = asyncio.Semaphore(cfg["concurrency"])
    deadline = time.monotonic() + cfg["timeLimit"]

    async def attempt() -> None:
        async with slots:
            if time.monotonic() > deadline:
                outcomes["skippedTimeLimit"] += 1
                return
            try:
                r, w = await asyncio.wait_for(connect(), 10)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                outcomes[f"refused ({type(e).__name__})"] += 1
                return
            try:
                await asyncio.wait_for(r.readexactly(len(WELCOME)), 10)
                outcomes["handshakeAndWelcome"] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                outcomes[f"handshakeThenClosed ({type(e).__name__})"] += 1
            if cfg["close"] == "rst":
                w.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
                )
            w.transport.abort()  # without SO_LINGER 0: an ordinary close (FIN)

    began = time.monotonic()
    await asyncio.gather(*(attempt() for _ in range(cfg["count"])))
    took = time.monotonic() - began
    print(json.dumps({"attempts": cfg["count"], "seconds": round(took, 2), **outcomes}), flush=True)
    await lines.readline()
    for w in fillers:
        w.transport.abort()


def main() -> None:
    kind, cfg = sys.argv[1], json.loads(sys.argv[2])
    raiseFileLimit()
    if kind == "reader":
        asyncio.run(reader(cfg))
    elif kind == "tlscost":
        asyncio.run(tlscost(cfg))
    else:
        result = {"hold": hold, "loop": loop, "spoof": spoof, "rate": rate}[kind](cfg)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
