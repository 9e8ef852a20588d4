"""
Hostile load against a real C{twistd timerserver}: slow readers and churn.

1. Slow readers: one reading client's lateness (p50/p99/max) is measured
   alone, then while 1,000 clients that never read are held for 30 s at a
   10 ms interval; server RSS before, during and after.
2. Churn: 100,000 connect/close cycles from several processes; server RSS
   before and after, and the pending timers at the end (from its stop line).

    python -m bench.hostile [--slow 1000] [--hold 30] [--cycles 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from bench.results import writeResults
from tests.serverprocess import MESSAGE, WELCOME, ServerProcess

ROOT = Path(__file__).resolve().parent.parent

RST = struct.pack("ii", 1, 0)
PORT = "tcp:0:interface=127.0.0.1"  # the defaults a user gets


class Reader(threading.Thread):
    """A client that reads, recording each message's lateness in microseconds."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.interval = interval
        self.histogram = HdrHistogram(1, 600_000_000, 3)
        self.running = True

    def run(self) -> None:
        buffer = b""
        anchor = None
        count = 0
        while self.running:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            buffer += data
            if anchor is None and len(buffer) >= len(WELCOME):
                buffer, anchor = buffer[len(WELCOME) :], now
            while anchor is not None and len(buffer) >= len(MESSAGE):
                buffer = buffer[len(MESSAGE) :]
                count += 1
                late = now - (anchor + count * self.interval)
                self.histogram.record_value(max(1, int(late * 1e6)))

    def take(self) -> dict[str, float]:
        h, self.histogram = self.histogram, HdrHistogram(1, 600_000_000, 3)
        return {
            "messages": h.get_total_count(),
            "p50ms": h.get_value_at_percentile(50) / 1000,
            "p99ms": h.get_value_at_percentile(99) / 1000,
            "maxms": h.get_max_value() / 1000,
        }


def slowReaders(count: int, hold: float, interval: float, reading: bool = False) -> dict[str, Any]:
    """
    One reading client alone, then beside C{count} clients that never read
    (or, with C{reading}, as many that do: the same load, for contrast).
    """
    server = ServerProcess("--interval", str(interval), port=PORT)
    try:
        process = psutil.Process(server.pid)
        reader = Reader(server.port, interval)
        reader.start()
        time.sleep(5)
        alone = reader.take()
        before = process.memory_info().rss
        stuck = []
        others = None
        if reading:
            others = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "loadclient.py"), "127.0.0.1",
                 str(server.port), str(count), str(interval)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            others.stdout.readline()  # type: ignore[union-attr]
        for _ in range(0 if reading else count):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            stuck.append(s)
        peak = before
        started = time.monotonic()
        while time.monotonic() - started < hold:
            time.sleep(1)
            peak = max(peak, process.memory_info().rss)
        during = reader.take()
        for s in stuck:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
            s.close()
        if others is not None:
            others.kill()
            others.wait(10)
        time.sleep(3)
        after = process.memory_info().rss
        aborted = len(re.findall(r"aborted connection", server.output))
        reader.running = False
        server.stop(timeout=30)
        figures = server.stopFigures()
        return {
            "otherClientsRead": reading,
            "slowClients": count,
            "holdSeconds": hold,
            "interval": interval,
            "readerAlone": alone,
            "readerDuringSlowClients": during,
            "rssBefore": before,
            "rssPeakDuring": peak,
            "rssAfter": after,
            "abortedLogLines": aborted,
            "skippedMessages": figures["skipped"],
        }
    finally:
        server.kill()


def churn(port: int, cycles: int) -> int:
    done = 0
    for _ in range(cycles):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if done % 2:
                s.recv(len(WELCOME))  # half of them wait for the welcome
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
            s.close()
            done += 1
        except OSError:
            time.sleep(0.01)
    return done


def churnRun(cycles: int, processes: int) -> dict[str, Any]:
    server = ServerProcess("--interval", "0.5", port=PORT)
    try:
        process = psutil.Process(server.pid)
        # Warm up allocator pools with a first round, then measure from there.
        with multiprocessing.Pool(processes) as pool:
            pool.starmap(churn, [(server.port, 2000)] * processes)
        time.sleep(1)
        before = process.memory_info().rss
        started = time.monotonic()
        with multiprocessing.Pool(processes) as pool:
            done = sum(pool.starmap(churn, [(server.port, cycles // processes)] * processes))
        seconds = time.monotonic() - started
        time.sleep(2)
        after = process.memory_info().rss
        server.stop(timeout=30)
        figures = server.stopFigures()
        return {
            "cycles": done,
            "seconds": seconds,
            "rssBefore": before,
            "rssAfter": after,
            "rssChange": (after - before) / before,
            "pendingTimersAtEnd": figures["cancelled"],
        }
    finally:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=30)
    parser.add_argument("--intervals", default="0.01,0.1", help="one slow-reader run each")
    parser.add_argument(
        "--contrast", default="0.1", help="intervals to rerun with clients that do read"
    )
    parser.add_argument("--cycles", type=int, default=100000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--json", default="bench/results/hostile.json")
    args = parser.parse_args()
    mb = 1024 * 1024
    slowRuns = []
    runs = [(float(i), False) for i in args.intervals.split(",")]
    runs += [(float(i), True) for i in args.contrast.split(",") if i]
    for interval, reading in runs:
        slow = slowReaders(args.slow, args.hold, interval, reading)
        slowRuns.append(slow)
        what = "that read (the same load, for contrast)" if reading else "that never read"
        print(
            f"slow readers: {args.slow} clients {what}, held {args.hold:.0f}s, "
            f"interval {interval * 1000:.0f} ms"
        )
        print(
            f"  server RSS before {slow['rssBefore'] / mb:.1f} MiB, peak during "
            f"{slow['rssPeakDuring'] / mb:.1f} MiB, after {slow['rssAfter'] / mb:.1f} MiB"
        )
        for label in ("readerAlone", "readerDuringSlowClients"):
            r = slow[label]
            print(
                f"  reading client {label}: {r['messages']} messages, p50 {r['p50ms']:.2f} ms, "
                f"p99 {r['p99ms']:.2f} ms, max {r['maxms']:.2f} ms"
            )
        print(
            f"  skipped messages {slow['skippedMessages']}, "
            f"abort log lines {slow['abortedLogLines']}"
        )
    churned = churnRun(args.cycles, args.processes)
    print(
        f"churn: {churned['cycles']} connect/close cycles in {churned['seconds']:.1f}s; server RSS "
        f"{churned['rssBefore'] / mb:.1f} -> {churned['rssAfter'] / mb:.1f} MiB "
        f"({churned['rssChange'] * 100:+.1f}%); pending timers at the end: "
        f"{churned['pendingTimersAtEnd']}"
    )
    writeResults({"slowReaders": slowRuns, "churn": churned}, args.json)


if __name__ == "__main__":
    main()
