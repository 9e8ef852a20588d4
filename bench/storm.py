"""
A reconnect storm: N clients connect at once to a real C{twistd timerserver},
K handshakes in flight (shared among client processes), from several
loopback source addresses, the way
clients come back after a restart.  Reports how many were welcomed within
the deadline and the welcome latency (from the start of connect to the
welcome's arrival) p50/p99/max, for the server's defaults, for
C{--backlog 50} (Twisted's own default) and for the hand-written baseline
(bench/baseline_server.py, on the server's default listen queue) side by
side: the baseline shows what the clients and the machine allow.  Bounded
in time; everything it starts, it stops.

    python -m bench.storm [--clients 10000] [--in-flight 1000] [--deadline 20]
        [--client asyncio|uvloop|raw] [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from bench.kernel import counterChange, tcpCounters
from bench.results import writeResults
from tests.serverprocess import WELCOME, ServerProcess
from timerserver.listener import DEFAULT_BACKLOG

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
BASELINE = [
    sys.executable,
    str(Path(__file__).resolve().parent / "baseline_server.py"),
    "--port",
    f"tcp:0:interface=127.0.0.1:backlog={DEFAULT_BACKLOG}",
]
"""The hand-written baseline (bench/baseline_server.py), on the listen queue
the server gets by default (Twisted's own 50 would overflow at once)."""
LINGER_RST = struct.pack("ii", 1, 0)


class _Client(asyncio.Protocol):
    """One storm client: connected, then waiting for the welcome."""

    def __init__(self, welcomed: asyncio.Future[float]) -> None:
        self.welcomed = welcomed
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(WELCOME) and not self.welcomed.done():
            ok = self.received.startswith(WELCOME)
            self.welcomed.set_result(time.monotonic() if ok else -1.0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            self.welcomed.set_result(-1.0)


async def storm(port: int, clients: int, inFlight: int, deadline: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(inFlight)
    histogram = HdrHistogram(1, 600_000_000, 3)
    transports: list[asyncio.Transport] = []
    counts = {"welcomed": 0, "noWelcome": 0, "failedToConnect": 0, "notBegun": 0}
    end = time.monotonic() + deadline

    async def client(i: int) -> None:
        welcomed: asyncio.Future[float] = loop.create_future()
        async with slots:
            started = time.monotonic()
            if started >= end:  # the deadline came before its turn: not a failure
                counts["notBegun"] += 1
                return
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Client(welcomed),
                        "127.0.0.1",
                        port,
                        local_addr=(SOURCES[i % len(SOURCES)], 0),
                    ),
                    max(0.1, end - time.monotonic()),
                )
            except (OSError, asyncio.TimeoutError):
                counts["failedToConnect"] += 1
                return
        transports.append(transport)
        try:
            at = await asyncio.wait_for(welcomed, max(0.1, end - time.monotonic()))
        except asyncio.TimeoutError:
            at = -1.0
        if at < 0:
            counts["noWelcome"] += 1
        else:
            counts["welcomed"] += 1
            histogram.record_value(max(1, int((at - started) * 1e6)))

    began = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    took = time.monotonic() - began
    for transport in transports:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        transport.close()
    return {
        **counts,
        "clients": clients,
        "inFlight": inFlight,
        "seconds": round(took, 2),
        "_histogram": histogram,
    }


def _stormProcess(
    port: int, clients: int, inFlight: int, deadline: float, kind: str
) -> dict[str, Any]:
    began = time.process_time()
    if kind == "raw":
        from bench import rawstorm

        result = rawstorm.storm(port, clients, inFlight, deadline, SOURCES, WELCOME)
    elif kind == "uvloop":
        import uvloop

        result = uvloop.run(storm(port, clients, inFlight, deadline))
    else:
        result = asyncio.run(storm(port, clients, inFlight, deadline))
    result["cpu"] = time.process_time() - began
    result["histogram"] = result.pop("_histogram").encode()
    return result


def run(
    label: str,
    args: list[str],
    clients: int,
    inFlight: int,
    deadline: float,
    processes: int,
    kind: str = "asyncio",
) -> dict[str, Any]:
    """
    Storm a server from C{processes} client processes: C{twistd timerserver
    ARGS}, or the baseline (L{BASELINE}) if C{args} is L{BASELINE}.
    """
    if args is BASELINE:
        server = ServerProcess(command=BASELINE)
    else:
        server = ServerProcess(*args, "--max-connections", str(clients + 100))
    try:
        serverProcess = psutil.Process(server.pid)
        before = sum(serverProcess.cpu_times()[:2])
        counters = tcpCounters()
        with multiprocessing.Pool(processes) as pool:
            parts = pool.starmap(
                _stormProcess,
                [(server.port, clients // processes, inFlight // processes, deadline, kind)]
                * processes,
            )
        serverCpu = sum(serverProcess.cpu_times()[:2]) - before
        counters = counterChange(counters, tcpCounters())
    finally:
        server.stop(timeout=60)
    histogram = HdrHistogram(1, 600_000_000, 3)
    for part in parts:
        histogram.decode_and_add(part.pop("histogram"))
    return {
        "server": label,
        "clients": sum(p["clients"] for p in parts),
        "inFlight": sum(p["inFlight"] for p in parts),
        "welcomed": sum(p["welcomed"] for p in parts),
        "noWelcome": sum(p["noWelcome"] for p in parts),
        "failedToConnect": sum(p["failedToConnect"] for p in parts),
        "notBegun": sum(p["notBegun"] for p in parts),
        "seconds": max(p["seconds"] for p in parts),
        # Handshakes the kernel completed and then dropped (ListenOverflows),
        # and those it answered with a SYN cookie it could then not queue.
        "listenCounters": counters,
        "serverCpuSeconds": round(serverCpu, 2),
        "clientCpuSeconds": round(sum(p["cpu"] for p in parts), 2),
        "welcomeMs": {
            "p50": histogram.get_value_at_percentile(50) / 1000,
            "p99": histogram.get_value_at_percentile(99) / 1000,
            "max": histogram.get_max_value() / 1000,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=1_000)
    parser.add_argument("--deadline", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument(
        "--backlogs", default="50", help="also run with these --backlog values (comma-separated)"
    )
    parser.add_argument(
        "--client",
        choices=("asyncio", "uvloop", "raw"),
        default="asyncio",
        help="the clients: asyncio; uvloop (faster, harsher); raw (one epoll each, the "
        "leanest: the storm then measures the server, not the clients)",
    )
    parser.add_argument("--uvloop", action="store_true", help="the same as --client uvloop")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also storm the hand-written baseline (bench/baseline_server.py) on the same "
        "listen queue: what the clients and the machine allow a Twisted server",
    )
    parser.add_argument("--json", default="bench/results/storm.json")
    args = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 100 > hard:
        sys.exit(f"--clients {args.clients} needs more than the open-file limit {hard}")
    servers = [("defaults", [])] + [
        (f"--backlog {n}", ["--backlog", n]) for n in args.backlogs.split(",") if n
    ]
    if args.baseline:
        servers.append(("baseline", BASELINE))
    kind = "uvloop" if args.uvloop else args.client
    results = [
        run(label, extra, args.clients, args.in_flight, args.deadline, args.processes, kind)
        for label, extra in servers
    ]
    print(
        f"\n{'server':16}{'clients':>8}{'welcomed':>10}{'none':>7}{'not begun':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'server CPU':>12}{'client CPU':>12}"
    )
    for r in results:
        w = r["welcomeMs"]
        print(
            f"{r['server']:16}{r['clients']:>8}{r['welcomed']:>10}"
            f"{r['noWelcome'] + r['failedToConnect']:>7}{r['notBegun']:>10}"
            f"{w['p50']:>9.1f}{w['p99']:>9.1f}{w['max']:>9.1f}"
            f"{r['serverCpuSeconds']:>11.2f}s{r['clientCpuSeconds']:>11.2f}s"
        )
        if any(r["listenCounters"].values()):
            print(f"{'':16}listen queue: {r['listenCounters']}")
    writeResults(results, args.json)


if __name__ == "__main__":
    main()
