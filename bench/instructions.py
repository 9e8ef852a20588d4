"""
Instructions: the user-space work of a periodic message and of a connection's
life, counted by valgrind (callgrind), for the server and the hand-written
baseline.  Unlike CPU time on a shared machine, the count is the same from
one run to the next, so it shows changes of a few percent that bench.server
and bench.churn cannot; it leaves out the kernel (the send, the TCP stack).

Each figure comes from one process run under valgrind: the server (on its
defaults, at a 0.1 s interval) and its clients in one process, on loopback,
with the reactor turned by hand and its clock stepped 10 ms a turn.  The
process marks where the measured part starts and ends (a call to getppid,
where callgrind dumps its counts), after a warm-up.

 - connection: connect and close (half RST, half FIN, the welcome unread)
   C times after a warm-up of 200, with the clock standing still (no timer
   comes due), on an idle server or beside B open connections (--beside);
   instructions per cycle.  The client's own connect and close are in every
   server's figure.
 - message: then N connections, given their welcome and a dozen messages
   each before the mark, then every message of the next S seconds;
   instructions per message.

    python -m bench.instructions [--connections 400] [--seconds 3] [--cycles 2000]
        [--what connection,message] [--beside 0]
        [--servers baseline,timerserver[,no-welcome][,idle]]
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import operator
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.results import writeResults

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("baseline", "timerserver", "no-welcome", "idle")
"""
The hand-written baseline, the server on its defaults, with C{--no-welcome},
and with C{--idle-timeout 60}.
"""
RST = struct.pack("ii", 1, 0)
MAX_DESCRIPTORS = 20_000
INTERVAL = 0.1
"""Short, so that a 10 ms turn carries a few dozen messages, as under load."""


def _factory(server: str, reactor: Any) -> Any:
    if server == "baseline":
        from twisted.internet import protocol

        import bench.baseline_server as baseline

        factory = protocol.Factory.forProtocol(baseline.Periodic)
        factory.interval = INTERVAL
        factory.noisy = False
        return factory
    from timerserver.config import DEFAULT_WELCOME, ServerConfig
    from timerserver.listener import Listener
    from timerserver.service import buildServer

    listener = Listener.parse("tcp:0:interface=127.0.0.1")
    # No connection limit, as the baseline has none.
    welcome = b"" if server == "no-welcome" else DEFAULT_WELCOME
    config = ServerConfig(
        listener=listener,
        interval=INTERVAL,
        welcome=welcome,
        maxConnections=MAX_DESCRIPTORS,
        idleTimeout=60.0 if server == "idle" else 0.0,
    )
    return buildServer(config, reactor).admission


def _queued(clients: list[socket.socket]) -> int:
    """Bytes waiting to be read, over all C{clients}."""
    total = 0
    for client in clients:
        total += struct.unpack("i", fcntl.ioctl(client, termios.FIONREAD, b"\0\0\0\0"))[0]
    return total


def child(
    whats: list[str], server: str, connections: int, seconds: float, cycles: int, beside: int
) -> None:
    """
    Run the work of each figure in this process, in turn, each between two
    marks; print how many units each measured.
    """
    from twisted.internet import reactor

    from bench.baseline_server import MESSAGE
    from timerserver.listener import DEFAULT_BACKLOG

    limit = min(MAX_DESCRIPTORS, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    now = [reactor.seconds()]
    # The clock, stepped by hand: the same turns in every run.
    reactor.seconds = functools.partial(operator.getitem, now, 0)  # type: ignore[method-assign]
    factory = _factory(server, reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=DEFAULT_BACKLOG)
    if server != "baseline":  # as the server's service listens
        from timerserver.transport import serveLean

        serveLean(port)
    address = ("127.0.0.1", port.getHost().port)

    def turn(step: float = 0.01) -> None:
        now[0] += step
        reactor.runUntilCurrent()
        reactor.doIteration(0)  # type: ignore[attr-defined]

    def connect(count: int) -> list[socket.socket]:
        clients = []
        for _ in range(count):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(address)
            clients.append(client)
            reactor.doIteration(0)  # type: ignore[attr-defined]
        return clients

    def cycle(i: int) -> None:
        client = socket.create_connection(address)
        if i % 2 == 0:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        client.close()
        # The clock stands still: no timer comes due, the others' included.
        turn(0.0)  # accepted
        turn(0.0)  # closed

    def connection() -> int:
        others = connect(beside)
        for i in range(200):
            cycle(i)
        os.getppid()  # the measured part starts
        for i in range(cycles):
            cycle(i)
        os.getppid()  # and ends
        for client in others:
            client.close()
        for _ in range(5):
            turn(0.0)
        return cycles

    def message() -> int:
        clients = connect(connections)
        for _ in range(150):  # everyone welcomed, then a dozen messages each
            turn()
        before = _queued(clients)
        os.getppid()
        for _ in range(round(seconds / 0.01)):
            turn()
        os.getppid()
        return (_queued(clients) - before) // len(MESSAGE)

    for what in whats:
        print(f"{what} {connection() if what == 'connection' else message()}", flush=True)


def measure(whats: list[str], server: str, args: argparse.Namespace) -> dict[str, Any]:
    """The figures of C{server}: run L{child} under callgrind and read each measured part."""
    where = Path(tempfile.mkdtemp(prefix="timerserver-instructions-"))
    try:
        out = where / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--dump-before=getppid",
            f"--callgrind-out-file={out}",
            sys.executable, "-m", "bench.instructions", "--child", server,
            "--what", ",".join(whats), "--connections", str(args.connections),
            "--seconds", str(args.seconds), "--cycles", str(args.cycles),
            "--beside", str(args.beside),
        ]  # fmt: skip
        run = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set layouts each run
        )  # fmt: skip
        if run.returncode:
            raise SystemExit(f"{server} failed:\n{run.stdout}\n{run.stderr[-2000:]}")
        figures = {}
        # Part 1 is before the first mark; each figure is a part between two.
        parts = sorted(where.glob("callgrind.out.*"))
        if len(parts) != 2 * len(whats):  # a mark too many or too few: the parts would shift
            raise SystemExit(f"{server}: {len(parts)} marks, not {2 * len(whats)}\n{run.stdout}")
        for k, what in enumerate(whats, 1):
            units = re.search(rf"^{what} (\d+)$", run.stdout, re.M)
            part = where / f"callgrind.out.{2 * k}"
            total = re.search(r"^totals: (\d+)$", part.read_text(), re.M) if part.exists() else None
            if units is None or total is None:
                raise SystemExit(f"{what} on {server}: no figure\n{run.stdout}")
            count = int(units.group(1))
            if not count:
                raise SystemExit(f"{what} on {server}: nothing measured\n{run.stdout}")
            figures[what] = {"units": count, "instructions": int(total.group(1)) // count}
        return figures
    finally:
        shutil.rmtree(where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--what", default="message,connection")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "instructions.json"))
    parser.add_argument("--beside", type=int, default=0)
    parser.add_argument("--servers", default="baseline,timerserver")
    parser.add_argument("--child", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The idle server's connections first, then the messages.
    whats = [w for w in ("connection", "message") if w in args.what.split(",")]
    if not whats or set(args.what.split(",")) - set(whats):
        raise SystemExit(f"--what: message, connection or both, not {args.what!r}")
    if args.child:
        child(whats, args.child, args.connections, args.seconds, args.cycles, args.beside)
        return
    servers = list(dict.fromkeys(s for s in args.servers.split(",") if s))
    if servers[:1] != ["baseline"] or not set(servers) <= set(SERVERS):
        raise SystemExit(f"--servers: baseline first, then any of {', '.join(SERVERS[1:])}")
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.instructions needs valgrind (Debian: apt-get install valgrind)")
    with ThreadPoolExecutor(2) as pool:  # counts do not depend on the CPU
        runs = {s: pool.submit(measure, whats, s, args) for s in servers}
        byServer = {s: run.result() for s, run in runs.items()}
    results: dict[str, Any] = {}
    for what in whats:
        figures = {s: byServer[s][what] for s in servers}
        base = figures["baseline"]["instructions"]
        unit = "message" if what == "message" else "cycle"
        for server, figure in figures.items():
            figure["ratio"] = figure["instructions"] / base
            print(
                f"{what:10s} {server:12s} {figure['instructions']:9,d} instructions a {unit}"
                f"  {figure['ratio']:.2f}x the baseline  ({figure['units']:,d} measured)"
            )
        results[what] = figures
    writeResults(results, args.json)


if __name__ == "__main__":
    main()
