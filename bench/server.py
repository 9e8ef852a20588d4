"""
The server under load: a real C{twistd timerserver} process, and in the same
run the hand-written baseline (bench/baseline_server.py), each driven by load
client processes (bench/loadclient.py) over loopback.

For each server and each (connections, interval) it reports, over a steady
window: server CPU microseconds per periodic message (= ms per 1,000), server
RSS per connection, messages lost, and lateness p50/p99/max against each
connection's schedule; then the ratios to the baseline.  Bounded in time;
everything it starts, it stops.

    python bench/server.py [--runs 10000x0.5,19000x2] [--window 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverprocess import ServerProcess  # noqa: E402
from tests.tlshelpers import Certificates  # noqa: E402

PORT = "tcp:0:interface=127.0.0.1"  # the defaults a user gets (backlog 1024)
BASE = PORT + ":backlog=1024"  # the baseline names its backlog
SERVERS: dict[str, list[str]] = {
    "baseline": [
        sys.executable,
        str(ROOT / "bench" / "baseline_server.py"),
        "--port",
        BASE,
    ],
    "timerserver (wheel)": ["--timer-queue", "wheel"],
    "timerserver (reactor)": ["--timer-queue", "reactor"],
    "timerserver TLS (wheel)": ["--timer-queue", "wheel"],
}
"""Each server's command line; a name with TLS listens on an ssl: endpoint."""


def startServer(name: str, interval: float, certs: Certificates | None) -> ServerProcess:
    spec = SERVERS[name]
    if name == "baseline":
        return ServerProcess(command=[*spec, "--interval", str(interval)])
    port = certs.endpoint() if certs else PORT
    return ServerProcess(*spec, "--interval", str(interval), port=port)


def measure(
    name: str, connections: int, interval: float, window: float, clients: int
) -> dict[str, Any]:
    certs = Certificates() if "TLS" in name else None
    server = startServer(name, interval, certs)
    procs: list[subprocess.Popen[str]] = []
    try:
        proc = psutil.Process(server.pid)
        time.sleep(0.5)
        idleRss = proc.memory_info().rss
        share = [connections // clients + (i < connections % clients) for i in range(clients)]
        for n in share:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "loadclient.py"),
                        "127.0.0.1",
                        str(server.port),
                        str(n),
                        str(interval),
                        *([str(certs.chain)] if certs else []),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        connected = failed = 0
        for p in procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            status = json.loads(line)
            connected += status["connected"]
            failed += status["failed"]
        time.sleep(2 * interval + 1)  # let every connection reach its steady schedule
        cpu0 = proc.cpu_times()
        for p in procs:
            p.stdin.write("start\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        time.sleep(window)
        cpu1 = proc.cpu_times()
        rss = proc.memory_info().rss
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
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return {
            "server": name,
            "connections": connections,
            "connected": connected,
            "failedToConnect": failed,
            "interval": interval,
            "window": window,
            "messages": messages,
            "expectedMessages": int(connected * window / interval),
            "lost": lost,
            "closedByServer": closed,
            "earlierThanAnchor": early,
            "cpuSeconds": cpu,
            "cpuMicrosecondsPerMessage": cpu / messages * 1e6 if messages else None,
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
    parser.add_argument("--servers", default="baseline,timerserver (wheel),timerserver (reactor)")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument("--json", default="bench/results/server.json")
    args = parser.parse_args()
    results = []
    for run in args.runs.split(","):
        count, interval = run.split("x")
        for name in args.servers.split(","):
            r = measure(name, int(count), float(interval), args.window, args.clients)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)

    print(
        f"\n{'server':24}{'conns':>7}{'intvl':>6}{'msgs':>9}{'lost':>6}{'us/msg':>9}{'ratio':>7}"
        f"{'B/conn':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
    )
    for r in results:
        base = next(
            (
                b
                for b in results
                if b["server"] == "baseline"
                and b["connections"] == r["connections"]
                and b["interval"] == r["interval"]
            ),
            None,
        )
        cost = r["cpuMicrosecondsPerMessage"]
        ratio = (
            cost / base["cpuMicrosecondsPerMessage"]
            if base and cost and base["cpuMicrosecondsPerMessage"]
            else None
        )
        r["cpuRatioToBaseline"] = ratio
        late = r["latenessMs"]
        print(
            f"{r['server']:24}{r['connected']:>7}{r['interval']:>6}{r['messages']:>9}{r['lost']:>6}"
            f"{cost or 0:>9.2f}{ratio or 0:>7.2f}{r['rssBytesPerConnection']:>8.0f}"
            f"{late['p50']:>8.2f}{late['p99']:>8.2f}{late['max']:>8.2f}"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
