"""
Connection churn: what a connection's life (accept, welcome, close) costs the
server, against the hand-written baseline (bench/baseline_server.py) in the
same run.

Each server gets N connect/close cycles from a client process: half closed
with RST, half with FIN, the welcome unread.  The cycles go in rounds that
alternate between the servers, so both see the same machine.  Reported per
server: CPU per cycle (from /proc, user + system) and RSS growth over the
cycles; and the ratios to the baseline.

    python -m bench.churn [--cycles 20000] [--rounds 10] [--variants defaults,idle,metrics]
        [--closes mixed|rst|fin]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.results import writeResults
from tests.serverprocess import ServerProcess, freePort

ROOT = Path(__file__).resolve().parent.parent
RST = struct.pack("ii", 1, 0)
VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "idle": ["--idle-timeout", "60"],
    "metrics": ["--metrics", "tcp:0:interface=127.0.0.1"],
}


CLOSES = ("mixed", "rst", "fin")


def cycles(port: int, count: int, closes: str = "mixed") -> None:
    """
    C{count} connect/close cycles: with C{closes} "mixed", even ones reset
    and odd ones closed; else all reset ("rst") or all closed ("fin").
    """
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if closes == "rst" or (closes == "mixed" and i % 2 == 0):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        sock.close()


def run(port: int, count: int, closes: str) -> None:
    process = multiprocessing.Process(target=cycles, args=(port, count, closes))
    process.start()
    process.join(300)
    if process.is_alive():
        process.kill()
        raise SystemExit("churn client did not finish in 300 s")


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class Server:
    def __init__(self, name: str, process: ServerProcess) -> None:
        self.name = name
        self.process = process
        self.ps = psutil.Process(process.pid)
        self.cpu = 0.0
        self.cycles = 0

    def round(self, count: int, closes: str) -> None:
        before = cpu(self.ps)
        run(self.process.port, count, closes)
        time.sleep(0.3)  # the last closes reach the server
        self.cpu += cpu(self.ps) - before
        self.cycles += count

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)


def baseline() -> ServerProcess:
    command = [
        sys.executable, "-m", "bench.baseline_server",
        "--port", f"tcp:{freePort()}:interface=127.0.0.1",
    ]  # fmt: skip
    return ServerProcess(command=command, portPattern=r"baseline listening on .*port=(\d+)")


def measure(variant: str, total: int, rounds: int, closes: str = "mixed") -> dict[str, Any]:
    servers = [
        Server("baseline", baseline()),
        Server(f"timerserver ({variant})", ServerProcess(*VARIANTS[variant])),
    ]
    try:
        for server in servers:
            server.round(500, closes)  # warm-up: imports, first allocations
        start = {s.name: s.rss() for s in servers}
        for s in servers:
            s.cpu, s.cycles = 0.0, 0
        per = max(1, total // rounds)
        for _ in range(rounds):
            for server in servers:
                server.round(per, closes)
        result = {}
        for s in servers:
            result[s.name] = {
                "cycles": s.cycles,
                "cpu_us_per_cycle": s.cpu / s.cycles * 1e6,
                "rss_growth_mb": (s.rss() - start[s.name]) / 1e6,
            }
        base, ours = (result[s.name] for s in servers)
        result["ratio"] = {
            "cpu": ours["cpu_us_per_cycle"] / base["cpu_us_per_cycle"],
            "rss_growth_minus_baseline_mb": ours["rss_growth_mb"] - base["rss_growth_mb"],
        }
        return result
    finally:
        for s in servers:
            s.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", default="defaults")
    parser.add_argument(
        "--closes",
        choices=CLOSES,
        default="mixed",
        help="how the client closes: half reset and half FIN (mixed), or all one way",
    )
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "churn.json"))
    args = parser.parse_args()
    results = {}
    for variant in args.variants.split(","):
        result = measure(variant, args.cycles, args.rounds, args.closes)
        results[variant] = result
        for name, figures in result.items():
            if name == "ratio":
                print(
                    f"  ratio: CPU {figures['cpu']:.2f}x the baseline; RSS growth "
                    f"{figures['rss_growth_minus_baseline_mb']:+.1f} MB beside it"
                )
            else:
                print(
                    f"{name:32} {figures['cycles']:6} cycles  "
                    f"{figures['cpu_us_per_cycle']:6.1f} us/cycle  "
                    f"RSS {figures['rss_growth_mb']:+6.1f} MB"
                )
    writeResults(results, args.json)


if __name__ == "__main__":
    main()
