"""
The server under load: a real C{twistd timerserver} process, and in the same
run the hand-written baseline (bench/baseline_server.py), each driven by load
client processes (bench/loadclient.py) over loopback.

For each server and each (connections, interval) it reports, over a steady
window: server CPU microseconds per periodic message the server sent (= ms
per 1,000; CPU and RSS summed over a server's processes), server RSS per
connection, messages lost, and lateness p50/p99/max against each
connection's schedule; then the ratios to the baseline and, with --workers,
to one worker.  Bounded in time; everything it starts, it stops.

    python -m bench.server [--runs 10000x0.5,19000x2] [--window 10] [--json FILE]
    python -m bench.server --runs 38000x2 --workers 2 --clients 4 \\
        --servers "baseline,timerserver (wheel)"
    python -m bench.server --runs 10000x0.5 --servers "baseline,timerserver (wheel),\\
        timerserver (wheel) metrics,timerserver TLS (wheel)"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from bench.kernel import PAGE, counterChange, socketMemory, tcpCounters
from bench.results import writeResults
from tests.serverprocess import ServerProcess
from tests.tlshelpers import Certificates

ROOT = Path(__file__).resolve().parent.parent

PORT = "tcp:0:interface=127.0.0.1"  # the defaults a user gets (backlog 4096)
BASE = PORT + ":backlog=1024"  # the baseline names its backlog
LOADS = {"asyncio": "loadclient.py", "raw": "rawload.py"}
"""The load clients (C{--load}): their scripts in bench/."""
SERVERS: dict[str, list[str]] = {
    "baseline": [
        sys.executable,
        str(ROOT / "bench" / "baseline_server.py"),
        "--port",
        BASE,
    ],
    "asyncio": [sys.executable, str(ROOT / "bench" / "asyncio_server.py"), "--loop", "asyncio"],
    "uvloop": [sys.executable, str(ROOT / "bench" / "asyncio_server.py"), "--loop", "uvloop"],
    "timerserver (wheel)": ["--timer-queue", "wheel"],
    "timerserver (reactor)": ["--timer-queue", "reactor"],
    "timerserver TLS (wheel)": ["--timer-queue", "wheel"],
    "timerserver (wheel) metrics": [
        "--timer-queue",
        "wheel",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
    ],
}
"""Each server's command line; a name with TLS listens on an ssl: endpoint."""
FOREIGN = ("baseline", "asyncio", "uvloop")
"""The servers that are not C{twistd timerserver}: whole command lines."""


PER_SOURCE = 12_000
"""Connections from one loopback address at most: Linux's connect() scans its
even ephemeral ports (14,116 of 28,232 by default) before it takes an odd one,
so past them each connect costs a scan of them all.  At 800,000 connections
with 15,400 a source, 86 of the 103 kernel stacks sampled outside
C{epoll_wait} were in C{__inet_hash_connect}, and connecting had slowed to
about 200 a second."""


def sources(client: int, connections: int) -> str:
    """The loopback addresses load client number C{client} connects from."""
    count = -(-connections // PER_SOURCE)
    return ",".join(f"127.0.{1 + k}.{2 + client}" for k in range(count))


def startServer(
    name: str, interval: float, certs: Certificates | None, workers: int, extra: list[str]
) -> ServerProcess:
    spec = SERVERS[name]
    if name in FOREIGN:
        return ServerProcess(command=[*spec, "--interval", str(interval)])
    port = certs.endpoint() if certs else PORT
    server = ServerProcess(
        *spec, "--interval", str(interval), "--workers", str(workers), *extra, port=port
    )
    for number in range(1, workers + 1 if workers > 1 else 1):
        server.waitForLine(rf"worker {number}: timerserver listening", 30)
    return server


class ProcessTree:
    """A server process and its workers: CPU and RSS summed over all of them."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu(self) -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in self.processes()))

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.processes())

    def descriptorsPerWorker(self) -> list[int]:
        """Open descriptors of each worker (or the server): its connections, plus a few."""
        return [w.num_fds() for w in self.root.children() or [self.root]]


def clientCpu(procs: list[subprocess.Popen[str]]) -> float:
    """CPU seconds the load clients have used so far."""
    times = [psutil.Process(p.pid).cpu_times() for p in procs]
    return sum(t.user + t.system for t in times)


def measure(
    name: str,
    connections: int,
    interval: float,
    window: float,
    clients: int,
    workers: int = 1,
    load: str = "asyncio",
    inFlight: int | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    certs = Certificates() if "TLS" in name else None
    server = startServer(name, interval, certs, workers, extra or [])
    procs: list[subprocess.Popen[str]] = []
    try:
        proc = ProcessTree(server.pid)
        time.sleep(0.5)
        idleRss = proc.rss()
        connectCpu0 = proc.cpu()
        share = [connections // clients + (i < connections % clients) for i in range(clients)]
        for n in share:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / LOADS[load]),
                        "127.0.0.1",
                        str(server.port),
                        str(n),
                        str(interval),
                        *(["--ca", str(certs.chain)] if certs else []),
                        "--source",
                        sources(len(procs), n),
                        *(["--in-flight", str(inFlight)] if inFlight else []),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        counters0 = tcpCounters()
        connected = failed = noWelcome = pending = notStarted = 0
        connectSeconds = 0.0
        for p in procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            status = json.loads(line)
            connected += status["connected"]
            failed += status["failed"]
            noWelcome += status.get("noWelcome", 0)
            pending += status.get("inFlightAtDeadline", 0)
            notStarted += status.get("notStarted", 0)
            connectSeconds = max(connectSeconds, status.get("connectSeconds", 0.0))
        connectCpu = {"server": proc.cpu() - connectCpu0, "clients": clientCpu(procs)}
        time.sleep(2 * interval + 1)  # let every connection reach its steady schedule
        cpu0 = proc.cpu()
        clients0 = clientCpu(procs)
        for p in procs:
            p.stdin.write("start\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        time.sleep(window)
        cpu1 = proc.cpu()
        clients1 = clientCpu(procs)
        rss = proc.rss()
        spread = proc.descriptorsPerWorker()
        sockets = socketMemory()
        counters1 = tcpCounters()
        for p in procs:
            p.stdin.write("stop\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        histogram = HdrHistogram(1, 600_000_000, 3)
        messages = lost = closed = early = 0
        for p in procs:
            result = json.loads(p.stdout.readline())  # type: ignore[union-attr]
            messages += result["messages"]
            lost += result["lost"]
            closed += result["closedByServer"]
            early += result["earlierThanAnchor"]
            histogram.decode_and_add(result["histogram"])
            p.wait(30)
        cpu = cpu1 - cpu0
        expected = int(connected * window / interval)
        return {
            "server": name if workers == 1 else f"{name} x{workers} workers",
            "workers": workers,
            "descriptorsPerWorker": spread,
            "rssBytes": rss,
            "kernelTcp": sockets,
            "kernelTcpMemoryBytes": sockets.get("mem", 0) * PAGE,
            "listenCounters": counterChange(counters0, counters1),
            "connections": connections,
            "connected": connected,
            "failedToConnect": failed,
            "noWelcome": noWelcome,
            "inFlightAtDeadline": pending,
            "notStarted": notStarted,
            "connectSeconds": connectSeconds,
            "connectCpuMicroseconds": {
                side: seconds / max(connected, 1) * 1e6 for side, seconds in connectCpu.items()
            },
            "interval": interval,
            "window": window,
            "messages": messages,
            "expectedMessages": expected,
            "lost": lost,
            # Due in the window less those not arrived by its end (late or skipped).
            "delivered": expected - lost,
            "deliveredRatio": (expected - lost) / expected if expected else None,
            "closedByServer": closed,
            "earlierThanAnchor": early,
            "cpuSeconds": cpu,
            "serverCores": cpu / window,
            "clientCores": (clients1 - clients0) / window,
            # Per message the server sent in its CPU window: every connection's
            # schedule (lost is 0 when all arrived).  The clients' own count
            # runs over when a busy client reads a backlog inside its window.
            "cpuMicrosecondsPerMessage": cpu / expected * 1e6 if expected else None,
            # When the server cannot keep up it skips messages: per one it sent.
            "cpuMicrosecondsPerDelivered": cpu / (expected - lost) * 1e6
            if expected > lost
            else None,
            "rssBytesPerConnection": (rss - idleRss) / max(connected, 1),
            "idleRssBytes": idleRss,
            "latenessMs": {
                "p50": histogram.get_value_at_percentile(50) / 1000,
                "p99": histogram.get_value_at_percentile(99) / 1000,
                "max": histogram.get_max_value() / 1000,
            },
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        server.stop(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", default="10000x0.5,19000x2")
    parser.add_argument(
        "--servers", default="baseline,uvloop,timerserver (wheel),timerserver (reactor)"
    )
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument(
        "--load",
        choices=sorted(LOADS),
        default="asyncio",
        help="the load clients: asyncio (bench/loadclient.py, TLS too) or raw (bench/rawload.py: "
        "one epoll, about a third of the CPU; plain TCP only)",
    )
    parser.add_argument(
        "--in-flight", type=int, help="connects at once in each raw load client (its default: 20)"
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="more options for every timerserver (not the baseline), e.g. '--granularity 0.05'",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run the wheel server with this many workers at the full count; "
        "the other servers then hold one worker's share",
    )
    parser.add_argument("--json", default="bench/results/server.json")
    args = parser.parse_args()
    extra = shlex.split(args.server_args)
    results = []
    for run in args.runs.split(","):
        count, interval = int(run.split("x")[0]), float(run.split("x")[1])
        share = count // args.workers
        for name in filter(None, args.servers.split(",")):
            clients = max(1, -(-share * args.clients // count))
            results.append(
                measure(
                    name,
                    share,
                    interval,
                    args.window,
                    clients,
                    1,
                    args.load,
                    args.in_flight,
                    extra,
                )
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if args.workers > 1:
            r = measure(
                "timerserver (wheel)",
                count,
                interval,
                args.window,
                args.clients,
                args.workers,
                args.load,
                args.in_flight,
                extra,
            )
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    report(results)
    writeResults(results, args.json)


def report(results: list[dict[str, Any]]) -> None:
    """Print each result with its CPU per message against the baseline and one worker."""

    def cost(server: str, interval: float) -> float | None:
        for r in results:
            if r["server"] == server and r["interval"] == interval:
                value: float | None = r["cpuMicrosecondsPerMessage"]
                return value
        return None

    print(
        f"\n{'server':34}{'conns':>8}{'intvl':>6}{'msgs':>10}{'lost':>9}{'us/msg':>8}"
        f"{'/base':>7}{'/1 wkr':>7}{'B/conn':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
    )
    for r in results:
        mine = r["cpuMicrosecondsPerMessage"] or 0.0
        base = cost("baseline", r["interval"])
        single = cost("timerserver (wheel)", r["interval"])
        r["cpuRatioToBaseline"] = mine / base if base else None
        r["cpuRatioToOneWorker"] = mine / single if single and r["workers"] > 1 else None
        late = r["latenessMs"]
        print(
            f"{r['server']:34}{r['connected']:>8}{r['interval']:>6}{r['messages']:>10}"
            f"{r['lost']:>9}{mine:>8.2f}{r['cpuRatioToBaseline'] or 0:>7.2f}"
            f"{r['cpuRatioToOneWorker'] or 0:>7.2f}{r['rssBytesPerConnection']:>8.0f}"
            f"{late['p50']:>8.2f}{late['p99']:>8.2f}{late['max']:>8.2f}"
        )
        print(
            f"{'':34}delivered {r['delivered']:,} of {r['expectedMessages']:,} due"
            f" ({(r['deliveredRatio'] or 0):.1%}), {r['cpuMicrosecondsPerDelivered'] or 0:.2f} us"
            f" each; server {r['serverCores']:.2f} cores,"
            f" clients {r['clientCores']:.2f}; connected in {r['connectSeconds']:.0f} s,"
            f" {r['noWelcome']} never welcomed, {r['failedToConnect']} failed,"
            f" {r['inFlightAtDeadline']} in flight at the deadline,"
            f" {r['notStarted']} not begun by it"
            f" (CPU per connect: server {r['connectCpuMicroseconds']['server']:.0f} us,"
            f" clients {r['connectCpuMicroseconds']['clients']:.0f} us);"
            f" kernel TCP memory {r['kernelTcpMemoryBytes'] / 2**20:.0f} MiB"
        )
        if r["workers"] > 1:
            held = [n for n in r["descriptorsPerWorker"] if n > 64]  # not the spare
            if held:
                print(f"{'':34}descriptors per worker: {min(held)} to {max(held)}")
        if any(r["listenCounters"].values()):
            print(f"{'':34}listen queue: {r['listenCounters']}")


if __name__ == "__main__":
    main()
