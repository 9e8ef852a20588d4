"""
The README's benchmark commands for the front door, churn and storms, run small: they
work and write figures that add up (their real figures come from full runs).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import ROOT


def runBench(*args: str, timeout: float = 120) -> dict[str, object]:
    path = Path(tempfile.mkdtemp(prefix="timerserver-bench-")) / "result.json"
    subprocess.run(
        [sys.executable, "-m", *args, "--json", str(path)],
        cwd=ROOT, check=True, timeout=timeout, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result: dict[str, object] = json.loads(path.read_text())
    finally:
        shutil.rmtree(path.parent)
    return result


class BenchTests(SynchronousTestCase):
    def test_attack(self) -> None:
        result = runBench(
            "bench.attack", "--modes", "haproxy", "--attacks", "garbage", "--duration", "2",
            "--readers", "20", "--no-cost", "--settle", "1",
        )  # fmt: skip
        [server] = result["servers"]  # type: ignore[misc, index]
        rows = {row["attack"]: row for row in server["rows"]}
        self.assertEqual(set(rows), {"none", "garbage"})
        for row in rows.values():
            readers = row["readers"]
            self.assertGreater(readers["expected"], 0)
            self.assertEqual(readers["received"], readers["expected"])
            self.assertEqual(row["tracebacks"], 0)
        attacker = rows["garbage"]["attacker"]
        self.assertGreater(attacker["opened"], 0)
        self.assertEqual(attacker["closedByServer"], attacker["opened"])
        self.assertEqual(server["tracebacksInWholeLog"], 0)

    def test_churn(self) -> None:
        for closes in ("mixed", "fin"):
            result = runBench("bench.churn", "--cycles", "400", "--rounds", "2", "--closes", closes)
            figures = result["defaults"]
            for name in ("baseline", "timerserver (defaults)"):
                self.assertEqual(figures[name]["cycles"], 400)  # type: ignore[index]
                self.assertGreater(figures[name]["cpu_us_per_cycle"], 0)  # type: ignore[index]
            self.assertGreater(figures["ratio"]["cpu"], 0)  # type: ignore[index]

    def test_instructions(self) -> None:
        if shutil.which("valgrind") is None:
            raise SkipTest("valgrind is not installed (Debian: apt-get install valgrind)")
        result = runBench(
            "bench.instructions", "--connections", "20", "--seconds", "0.3", "--cycles", "40",
            timeout=600,
        )  # fmt: skip
        # 40 cycles; 20 connections at 0.1 s for 0.3 s: two or three messages
        # each, as the window's edges fall between their ticks.  Plausible
        # counts: a cycle or a message is thousands of instructions, not
        # millions (a part read off by one would be the whole warm-up).
        for what, fewest, most, ceiling in (
            ("connection", 40, 40, 2_000_000),
            ("message", 40, 60, 400_000),
        ):
            figures: Any = result[what]
            for name in ("baseline", "timerserver"):
                self.assertGreaterEqual(figures[name]["units"], fewest, (what, name))
                self.assertLessEqual(figures[name]["units"], most, (what, name))
                self.assertGreater(figures[name]["instructions"], 5_000, (what, name))
                self.assertLess(figures[name]["instructions"], ceiling, (what, name))
            self.assertEqual(figures["baseline"]["ratio"], 1.0)

    def test_stormWithEachClient(self) -> None:
        for client in ("asyncio", "raw"):
            rows: list[Any] = runBench(  # type: ignore[assignment]
                "bench.storm", "--clients", "200", "--in-flight", "50", "--backlogs", "",
                "--client", client,
            )  # fmt: skip
            self.assertEqual([row["server"] for row in rows], ["defaults", "baseline"])
            for row in rows:
                self.assertEqual((row["clients"], row["welcomed"]), (200, 200), client)
                self.assertEqual(row["noWelcome"] + row["failedToConnect"], 0, client)
                self.assertEqual(row["notBegun"], 0, client)
                self.assertGreater(row["welcomeMs"]["p99"], 0, client)
                self.assertGreater(row["serverCpuSeconds"], 0, client)

    def test_stormCutShortByItsDeadline(self) -> None:
        """Clients the deadline came before are not begun, not failed: each is counted once."""
        for client in ("asyncio", "raw"):
            rows: list[Any] = runBench(  # type: ignore[assignment]
                "bench.storm", "--clients", "4000", "--in-flight", "2", "--deadline", "0.05",
                "--backlogs", "", "--no-baseline", "--client", client,
            )  # fmt: skip
            (row,) = rows
            self.assertGreater(row["notBegun"], 0, client)
            self.assertEqual(row["failedToConnect"], 0, client)
            counted = row["welcomed"] + row["noWelcome"] + row["failedToConnect"] + row["notBegun"]
            self.assertEqual(counted, 4000, client)

    def test_stormWithoutTheBaseline(self) -> None:
        rows: list[Any] = runBench(  # type: ignore[assignment]
            "bench.storm", "--clients", "100", "--in-flight", "20", "--backlogs", "50",
            "--no-baseline",
        )  # fmt: skip
        self.assertEqual([row["server"] for row in rows], ["defaults", "--backlog 50"])
        self.assertEqual([row["welcomed"] for row in rows], [100, 100])

    def test_serverWithTheRawLoad(self) -> None:
        results: list[Any] = runBench(  # type: ignore[assignment]
            "bench.server", "--runs", "300x0.05",
            "--servers", "baseline,asyncio,uvloop,timerserver (wheel)",
            "--load", "raw", "--window", "1", "--in-flight", "5",
            "--server-args", "--granularity 0.005",
        )  # fmt: skip
        self.assertEqual(
            [row["server"] for row in results],
            ["baseline", "asyncio", "uvloop", "timerserver (wheel)"],
        )
        for row in results:
            self.assertEqual(
                (row["connected"], row["failedToConnect"], row["noWelcome"]), (300, 0, 0)
            )
            self.assertGreater(row["messages"], 0)
            self.assertEqual(row["closedByServer"], 0)
            self.assertGreater(row["cpuMicrosecondsPerMessage"], 0)
            self.assertEqual(row["delivered"], row["expectedMessages"] - row["lost"])
            self.assertGreater(row["clientCores"], 0)
            self.assertGreaterEqual(row["kernelTcp"]["inuse"], 600)  # both ends of 300
            self.assertEqual(set(row["listenCounters"]), {"ListenOverflows", "ListenDrops",
                "TCPReqQFullDoCookies", "TCPReqQFullDrop", "SyncookiesSent", "SyncookiesRecv",
                "SyncookiesFailed"})  # fmt: skip

    def test_serverWithWorkersOnly(self) -> None:
        # The README's million-connection command, small: only the --workers server.
        [row] = runBench(  # type: ignore[misc]
            "bench.server", "--runs", "400x0.2", "--workers", "2", "--clients", "2",
            "--servers", "", "--load", "raw", "--window", "1",
        )  # fmt: skip
        self.assertEqual(row["workers"], 2)
        self.assertEqual(
            (row["connected"], row["noWelcome"], row["inFlightAtDeadline"], row["notStarted"]),
            (400, 0, 0, 0),
        )
        self.assertEqual(sum(n > 64 for n in row["descriptorsPerWorker"]), 2)  # both hold some
        self.assertGreater(row["delivered"], 0)

    def test_rawLoadAtItsDeadline(self) -> None:
        # A port that never accepts: the kernel completes 3 connects, which
        # are still in flight (no welcome) at the deadline; 47 were never begun.
        listener = socket.create_server(("127.0.0.1", 0), backlog=100)
        self.addCleanup(listener.close)
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "rawload.py"), "127.0.0.1",
             str(listener.getsockname()[1]), "50", "1", "--deadline", "0.5", "--in-flight", "3"],
            capture_output=True, text=True, timeout=60, input="stop\n", check=True,
        )  # fmt: skip
        first = json.loads(done.stdout.splitlines()[0])
        self.assertEqual(
            {k: first[k] for k in ("connected", "failed", "noWelcome", "inFlightAtDeadline")},
            {"connected": 0, "failed": 0, "noWelcome": 0, "inFlightAtDeadline": 3},
        )
        self.assertEqual(first["notStarted"], 47)
        self.assertGreaterEqual(first["connectSeconds"], 0.5)

    def test_floor(self) -> None:
        results: list[Any] = runBench(  # type: ignore[assignment]
            "bench.floor", "--connections", "10,50", "--messages", "500"
        )
        self.assertEqual([row["connections"] for row in results], [10, 50])
        for row in results:
            self.assertEqual(row["received"], row["messages"])
            self.assertGreaterEqual(row["messages"], 500)
            self.assertGreater(row["sendMicroseconds"], 0)
            self.assertGreater(row["recvMicroseconds"], 0)
