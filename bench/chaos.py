"""
The chaos soak: C{twistd timerserver --workers 2 --metrics ...} holding
20,000 connections (bench/chaosclient.py processes) for N minutes, with the
faults of a production host on a schedule that repeats every two minutes:

  +15 s  a random worker SIGSTOPped for 5 s, then continued
  +40 s  the master SIGSTOPped for 10 s while a client makes refusals (log traffic)
  +70 s  100 concurrent scrapes a second for 10 s, and a POST flood on the metrics port
  +0, +30, +60, +90 s  a random worker SIGKILLed; once (the second cycle's
         +60 s) with the master's open-file limit pinned at its current use
         for 3 s, so that the replacement's spawn fails and is retried

It checks, and reports: every client of a worker that was neither killed nor
stopped received every periodic message due (counted); the clients of the
stopped worker resumed within one interval of its continuing; every
reconnecting client was welcomed within 1 s (those of the pinned replacement
are reported apart: they wait for the retried spawn); every scrape made while
the master ran answered within the deadline (1 s) plus 0.5 s; the master's
and the workers' RSS and descriptors flat after warm-up (under 5%); no
traceback in the log; the master exits within --shutdown-timeout + 5 s.

    python -m bench.chaos [--minutes 10] [--connections 20000] [--clients 4]
        [--interval 2] [--json bench/results/chaos.json]

Bounded in time; everything it starts, it stops (by pid).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.chaosfaults import Scrapes, logTraffic, pinnedFiles
from bench.results import writeResults
from tests.serverprocess import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 1.0
"""The scrape deadline of the master (timerserver.supervisor.SCRAPE_DEADLINE)."""
SHUTDOWN_TIMEOUT = 5.0
CYCLE = [
    (0.0, "kill"),
    (15.0, "stop-worker"),
    (30.0, "kill"),
    (40.0, "stop-master"),
    (60.0, "kill"),
    (70.0, "scrapes"),
    (90.0, "kill"),
    (110.0, "sample"),
]


@dataclass
class Plan:
    """What a soak does: its size, and its faults at seconds from the start."""

    connections: int = 20_000
    clients: int = 4
    interval: float = 2.0
    seconds: float = 600.0
    warmup: float = 20.0
    workerStop: float = 5.0
    masterStop: float = 10.0
    scrapeSeconds: float = 10.0
    scrapesPerSecond: int = 100
    postsPerSecond: int = 20
    maxPerPeer: int = 1000
    """Per worker: no load client is refused (an address holds perSource in all)."""
    perSource: int = 1000
    reconnect: str = "1.0:5.0"
    """A killed worker's clients reconnect after a random back-off in this range (s)."""
    pinnedKill: int = 1
    """Which kill (counting from 0) is made with the master's file limit pinned."""
    faults: list[tuple[float, str]] = field(default_factory=list)

    def schedule(self) -> list[tuple[float, str]]:
        if self.faults:
            return self.faults
        events = []
        for start in range(0, int(self.seconds), 120):
            for offset, kind in CYCLE:
                if 0 < start + offset < self.seconds:
                    events.append((start + offset, kind))
        return events


def short() -> Plan:
    """The version the test suite runs: a few hundred connections, under a minute."""
    return Plan(
        connections=300, clients=2, interval=0.5, seconds=22.0, warmup=2.0,
        workerStop=2.0, masterStop=2.0, scrapeSeconds=2.0, scrapesPerSecond=20,
        postsPerSecond=5, maxPerPeer=100, perSource=100, reconnect="0.3:1.0", pinnedKill=1,
        faults=[(1.0, "sample"), (2.0, "stop-worker"), (6.0, "kill"), (9.0, "stop-master"),
                (13.0, "scrapes"), (16.0, "kill"), (21.0, "sample")],
    )  # fmt: skip


class Soak:
    """One run of a plan against a fresh server."""

    def __init__(self, plan: Plan, keep: bool = False) -> None:
        self.plan = plan
        self.keep = keep
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.kills = 0
        self.work = Path(tempfile.mkdtemp(prefix="timerserver-chaos-"))

    def log(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"kind": kind, "at": time.monotonic(), **fields}
        self.events.append(event)
        print(f"  {time.monotonic() - self.t0:7.1f}s {kind} {fields or ''}", flush=True)
        return event

    def workerPids(self) -> dict[int, int]:
        pids: dict[int, int] = {}
        for match in re.finditer(r"worker (\d+) started, pid (\d+)", self.server.output):
            pids[int(match.group(1))] = int(match.group(2))
        return pids

    def run(self) -> dict[str, Any]:
        p = self.plan
        self.t0 = time.monotonic()
        self.server = ServerProcess(
            "--workers", "2", "--metrics", "tcp:0:interface=127.0.0.1:backlog=1024",
            "--interval", str(p.interval), "--max-per-peer", str(p.maxPerPeer),
            "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
        )  # fmt: skip
        clients: list[subprocess.Popen[str]] = []
        try:
            self.server.waitForLine(r"worker 2: timerserver listening", 30)
            self.metrics = int(self.server.waitForLine(r"metrics on .*port=(\d+)", 20).group(1))
            clients = self.startClients()
            self.log("connected", connections=p.connections)
            time.sleep(p.warmup)
            self.scrapes = Scrapes(self.metrics)
            self.scrapes.start()
            started = time.monotonic()
            for offset, kind in p.schedule():
                time.sleep(max(0.0, started + offset - time.monotonic()))
                getattr(self, "fault_" + kind.replace("-", "_"))()
            time.sleep(max(0.0, started + p.seconds - time.monotonic()))
            self.scrapes.stop()
            stopAt = self.log("stop")["at"]
            records = self.stopClients(clients)
            exit = self.stopServer()
        finally:
            for proc in clients:
                if proc.poll() is None:
                    proc.kill()
            self.server.kill()
            if self.keep:
                (self.work / "server.log").write_text(self.server.output)
                print(f"records and the server's log kept in {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.analyse(records, stopAt, exit)

    def startClients(self) -> list[subprocess.Popen[str]]:
        p = self.plan
        per = p.connections // p.clients
        sources = [f"127.0.0.{2 + i}" for i in range(max(1, p.connections // p.perSource))]
        procs = []
        for n in range(p.clients):
            mine = sources[n :: p.clients] or sources[:1]
            command = [
                sys.executable, "-m", "bench.chaosclient", "127.0.0.1", str(self.server.port),
                str(per), str(p.interval), str(self.work / f"records-{n}.jsonl"),
                "--sources", ",".join(mine), "--reconnect", p.reconnect,
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            if ready["failed"]:
                raise SystemExit(f"a load client could not connect: {ready}")
        return procs

    def stopClients(self, procs: list[subprocess.Popen[str]]) -> list[list[Any]]:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        for proc in procs:
            proc.wait(120)
        records = []
        for n in range(len(procs)):
            with open(self.work / f"records-{n}.jsonl") as f:
                records += [json.loads(line) for line in f]
        return records

    def stopServer(self) -> float:
        started = time.monotonic()
        try:
            self.server.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + 5)
        except AssertionError:
            return float("inf")
        return time.monotonic() - started

    # The faults.

    def fault_kill(self) -> None:
        number, pid = random.choice(sorted(self.workerPids().items()))
        pinned = self.kills == self.plan.pinnedKill
        self.kills += 1
        if not pinned:
            os.kill(pid, signal.SIGKILL)
            self.log("kill", worker=number, pid=pid)
            return
        with pinnedFiles(self.server.pid):
            os.kill(pid, signal.SIGKILL)
            event = self.log("kill-pinned", worker=number, pid=pid)
            failed = self.server.output.count("could not be started")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and failed == self.server.output.count(
                "could not be started"
            ):
                time.sleep(0.05)
            time.sleep(3.0 - (time.monotonic() - event["at"]))
        event["restoredAt"] = self.log("restored")["at"]

    def fault_stop_worker(self) -> None:
        # The worker with the most clients: one that has none yet (a fresh
        # worker whose first load report came late gets none) tests nothing.
        clients = {
            (number, pid): [
                f"{c.raddr.ip}:{c.raddr.port}"
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr and c.laddr.port == self.server.port
            ]
            for number, pid in sorted(self.workerPids().items())
            if psutil.pid_exists(pid)
        }
        (number, pid), victims = max(clients.items(), key=lambda item: len(item[1]))
        os.kill(pid, signal.SIGSTOP)
        event = self.log("stop-worker", worker=number, pid=pid, clients=len(victims))
        time.sleep(self.plan.workerStop)
        os.kill(pid, signal.SIGCONT)
        event["continuedAt"] = self.log("continue-worker", worker=number)["at"]
        event["victims"] = victims

    def fault_stop_master(self) -> None:
        done = threading.Event()
        traffic: dict[str, int] = {}
        thread = threading.Thread(
            target=logTraffic,
            args=(self.server.port, self.plan.maxPerPeer * 3, done, traffic),
            daemon=True,
        )
        thread.start()
        time.sleep(0.5)
        os.kill(self.server.pid, signal.SIGSTOP)
        event = self.log("stop-master")
        time.sleep(self.plan.masterStop)
        os.kill(self.server.pid, signal.SIGCONT)
        event["continuedAt"] = self.log("continue-master")["at"]
        done.set()
        thread.join(30)
        event.update(traffic)

    def fault_scrapes(self) -> None:
        event = self.log("scrape-flood")
        self.scrapes.flood(self.plan.scrapeSeconds, self.plan.scrapesPerSecond,
                           self.plan.postsPerSecond)  # fmt: skip
        event["endedAt"] = time.monotonic()

    def fault_sample(self) -> None:
        figures = {}
        for label, pid in [("master", self.server.pid), *self.workerPids().items()]:
            try:
                proc = psutil.Process(pid)
                figures[str(label)] = {
                    "pid": pid, "rss": proc.memory_info().rss, "fds": proc.num_fds(),
                }  # fmt: skip
            except psutil.NoSuchProcess:
                pass
        self.samples.append({"at": time.monotonic(), **figures})
        self.log("sample", **{k: v["rss"] // 1024 for k, v in figures.items()})

    def analyse(self, records: list[list[Any]], stopAt: float, exit: float) -> dict[str, Any]:
        from bench.chaosreport import analyse

        return analyse(self, records, stopAt, exit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--short", action="store_true", help="the test suite's version")
    parser.add_argument("--json", default="bench/results/chaos.json")
    parser.add_argument("--keep", action="store_true", help="keep the records and server log")
    parser.add_argument("--reconnect", default="1.0:5.0", help="reconnect back-off range, s")
    args = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = short() if args.short else Plan(
        connections=args.connections, clients=args.clients, interval=args.interval,
        seconds=args.minutes * 60, reconnect=args.reconnect,
    )  # fmt: skip
    result = Soak(plan, keep=args.keep).run()
    writeResults(result, args.json)
    from bench.chaosreport import summary

    print(summary(result))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
