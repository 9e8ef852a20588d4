"""
A real C{twistd timerserver} whose wall clock is stepped by an hour either
way while it serves (libfaketime; the monotonic clock is left alone).
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import MESSAGE, WELCOME, ServerProcess, recvExactly

LIBFAKETIME = [
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
    Path("/usr/lib/faketime/libfaketimeMT.so.1"),
]


class Collector:
    """Reads a connection in the background of the test's own waits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.arrivals: list[tuple[float, bytes]] = []
        self.buffer = b""
        sock.setblocking(False)

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not data:
                return
            self.buffer += data
            while True:
                for token in (MESSAGE, b"x", b"Idle timeout\r\n"):
                    if self.buffer.startswith(token):
                        self.arrivals.append((time.monotonic(), token))
                        self.buffer = self.buffer[len(token) :]
                        break
                else:
                    break

    def count(self, token: bytes, since: float) -> int:
        return sum(1 for at, t in self.arrivals if t == token and at >= since)


class WallClockStepTests(SynchronousTestCase):
    def setUp(self) -> None:
        library = next((p for p in LIBFAKETIME if p.exists()), None)
        if library is None:
            raise SkipTest("libfaketime is not installed (Debian package faketime)")
        self.offset = Path(tempfile.mkdtemp()) / "faketime"
        self.offset.write_text("+0\n")
        self.server = ServerProcess(
            "--interval",
            "0.5",
            "--idle-timeout",
            "3",
            env={
                "LD_PRELOAD": str(library),
                "FAKETIME_TIMESTAMP_FILE": str(self.offset),
                "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            },
        )
        self.addCleanup(self.server.kill)

    def stepWallClock(self, offset: str) -> None:
        self.offset.write_text(offset + "\n")

    def test_timersKeepTheirScheduleAcrossSteps(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        client = Collector(sock)
        sock.send(b"x")
        client.pump(1.0)

        stepped = time.monotonic()
        self.stepWallClock("+3600")  # +1 h
        client.pump(1.0)
        sock.send(b"x")  # the last read: idle is due 3 s from here
        lastRead = time.monotonic()
        client.pump(1.0)
        self.assertGreaterEqual(client.count(MESSAGE, stepped), 3)  # about 4 in 2 s
        self.assertEqual(client.count(b"Idle timeout\r\n", 0), 0)

        stepped = time.monotonic()
        self.stepWallClock("-3600")  # -2 h: one hour behind the real time
        client.pump(1.5)
        self.assertGreaterEqual(client.count(MESSAGE, stepped), 2)  # about 3 in 1.5 s
        self.assertEqual(client.count(b"Idle timeout\r\n", 0), 0)

        client.pump(max(0.0, lastRead + 3.8 - time.monotonic()))
        [(idleAt, _)] = [a for a in client.arrivals if a[1] == b"Idle timeout\r\n"]
        self.assertGreaterEqual(idleAt - lastRead, 2.9)  # never early

        self.server.stop()
        match = re.search(r"skipped (\d+) messages", self.server.output)
        self.assertIsNotNone(match, self.server.output)
        self.assertEqual(match.group(1), "0")  # type: ignore[union-attr]
        self.assertNotIn("Traceback", self.server.output)
