"""
A real C{twistd -n timerserver} process, talked to over loopback sockets.
Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import (
    MESSAGE,
    TWISTD,
    WELCOME,
    ServerProcess,
    holdPort,
    recvExactly,
    recvUntilClosed,
    runTwistd,
    twistdCommand,
)

# Runs argv[1:] with SIGINT's disposition set to argv[0] (DFL or IGN) first.
WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, getattr(signal, 'SIG_' + sys.argv[1]));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


def withSigint(disposition: str, command: list[str]) -> list[str]:
    """
    C{command} started with SIGINT's disposition C{DFL} or C{IGN}, whatever
    the test runner's own: a shell's background job (C{cmd &}) starts with
    SIGINT ignored, its children inherit that, and twistd leaves it ignored.
    """
    return [sys.executable, "-c", WITH_SIGINT, disposition, *command]


def sigintDisposition(pid: int) -> str:
    """C{caught}, C{ignored} or C{default}: how process C{pid} takes SIGINT now."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        raise SkipTest("no /proc/PID/status to read signal dispositions from")
    masks = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    bit = 1 << (signal.SIGINT - 1)
    if int(masks["SigCgt"], 16) & bit:
        return "caught"
    return "ignored" if int(masks["SigIgn"], 16) & bit else "default"


def serverCommand(*args: str) -> list[str]:
    return twistdCommand(
        "-n", "--pidfile=", "timerserver", "-p", "tcp:0:interface=127.0.0.1", *args
    )


class EndToEndTests(SynchronousTestCase):
    interval = 0.3

    def setUp(self) -> None:
        # Started as from an interactive shell, however this test runner was.
        command = withSigint("DFL", serverCommand("--interval", str(self.interval)))
        self.server = ServerProcess(command=command)
        self.addCleanup(self.server.kill)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        self.addCleanup(sock.close)
        return sock

    def test_welcomeEchoAndPeriodic(self) -> None:
        sock = self.connect()
        connectedAt = time.monotonic()
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        sock.sendall(b"hello \x00\xff\r\n")
        self.assertEqual(recvExactly(sock, 10), b"hello \x00\xff\r\n")
        arrivals = []
        for _ in range(3):
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)
            arrivals.append(time.monotonic() - connectedAt)
        for k, at in enumerate(arrivals, 1):
            # Loose bounds: a loaded machine may delay delivery, never advance it.
            self.assertGreater(at, k * self.interval - 0.05)
            self.assertLess(at, k * self.interval + 0.5)

    def test_halfCloseFlushesEchoThenCloses(self) -> None:
        sock = self.connect()
        recvExactly(sock, len(WELCOME))
        payload = bytes(range(256)) * 4096  # 1 MiB, more than any socket buffer
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = recvUntilClosed(sock, timeout=10)
        self.assertEqual(received.replace(MESSAGE, b""), payload)

    def test_severalConnectionsAtOnce(self) -> None:
        socks = [self.connect() for _ in range(20)]
        for i, sock in enumerate(socks):
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
            sock.sendall(b"client %d\n" % i)
        for i, sock in enumerate(socks):
            expected = b"client %d\n" % i
            self.assertEqual(recvExactly(sock, len(expected)), expected)
        for sock in socks:
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)

    def test_sigtermStopsCleanly(self) -> None:
        sock = self.connect()
        recvExactly(sock, len(WELCOME))
        started = time.monotonic()
        code = self.server.stop(signal.SIGTERM, timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertIn("stopped listening", self.server.output)
        self.assertNotIn("Traceback", self.server.output)
        self.assertEqual(recvUntilClosed(sock).replace(MESSAGE, b""), b"Server shutting down\r\n")

    def test_sigintStopsCleanly(self) -> None:
        # Python's handler from the start; Twisted's once the reactor runs (the welcome).
        self.assertEqual(sigintDisposition(self.server.pid), "caught")
        sock = self.connect()
        recvExactly(sock, len(WELCOME))
        code = self.server.stop(signal.SIGINT, timeout=10)
        self.assertIn(code, (0, -signal.SIGINT))
        self.assertIn("stopped listening", self.server.output)
        self.assertNotIn("Traceback", self.server.output)
        self.assertEqual(recvUntilClosed(sock).replace(MESSAGE, b""), b"Server shutting down\r\n")

    def test_noLogLinePerMessage(self) -> None:
        sock = self.connect()
        recvExactly(sock, len(WELCOME) + 3 * len(MESSAGE))
        self.server.stop()
        self.assertLess(len(self.server.lines), 12, self.server.output)


class IgnoredSigintTests(SynchronousTestCase):
    """
    A twistd started with SIGINT ignored (a background job of a shell
    without job control: C{cmd &} in a script) keeps ignoring it, as the
    README says: SIGTERM stops it.
    """

    def test_ignoredSigintStaysIgnored(self) -> None:
        server = ServerProcess(command=withSigint("IGN", serverCommand("--interval", "0.2")))
        self.addCleanup(server.kill)
        self.assertEqual(sigintDisposition(server.pid), "ignored")
        server.process.send_signal(signal.SIGINT)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual(recvExactly(sock, len(WELCOME) + len(MESSAGE)), WELCOME + MESSAGE)
        self.assertIsNone(server.process.poll())
        self.assertNotIn("stopped listening", server.output)
        self.assertIn(server.stop(signal.SIGTERM), (0, -signal.SIGTERM))
        self.assertIn("stopped listening", server.output)


class CommandLineErrorTests(SynchronousTestCase):
    def test_badValuesAreOneLine(self) -> None:
        for args, word in (
            (["--interval", "-1"], "--interval"),
            (["--interval", "abc"], "--interval"),
            (["--interval", "nan"], "--interval"),
            (["--port", "nonsense:1"], "--port"),
            (["--unknown-option"], "unknown-option"),
        ):
            result = runTwistd(*args)
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(result.stdout, "")
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(word, result.stderr)
            self.assertNotIn("Traceback", result.stderr)

    def test_portInUse(self) -> None:
        holder = holdPort()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        result = runTwistd("-p", f"tcp:{port}:interface=127.0.0.1")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        # twistd has sent stderr to its log by now: the error is one log line.
        output = result.stdout + result.stderr
        [line] = [x for x in output.splitlines() if "cannot listen" in x]
        self.assertIn(f"cannot listen on tcp:{port}", line)
        self.assertIn("Address already in use", line)


def listenBacklog(port: int) -> int | None:
    """The listen backlog the kernel holds for a loopback TCP port (ss's Send-Q)."""
    result = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    )
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "LISTEN":
            return int(fields[2])
    return None


class BacklogTests(SynchronousTestCase):
    """The backlog reaches the kernel: ss shows it as the listening socket's Send-Q."""

    def setUp(self) -> None:
        if shutil.which("ss") is None:
            raise SkipTest("ss (Debian package iproute2) is not installed")

    def backlogOf(self, *args: str, port: str = "tcp:0:interface=127.0.0.1") -> int | None:
        server = ServerProcess(*args, port=port)
        self.addCleanup(server.kill)
        return listenBacklog(server.port)

    def test_defaultIs4096(self) -> None:
        """4096, or the kernel's cap (net.core.somaxconn) where that is lower."""
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
        self.assertEqual(self.backlogOf(), min(4096, cap))

    def test_option(self) -> None:
        self.assertEqual(self.backlogOf("--backlog", "77"), 77)

    def test_endpointStringWins(self) -> None:
        self.assertEqual(
            self.backlogOf("--backlog", "77", port="tcp:0:interface=127.0.0.1:backlog=33"), 33
        )


class AsyncioReactorTests(SynchronousTestCase):
    """C{twistd -r asyncio timerserver}: the same server on the asyncio reactor."""

    def start(self, *args: str) -> ServerProcess:
        command = [sys.executable, "-c", TWISTD, "-r", "asyncio", "-n", "--pidfile=", "timerserver"]
        command += ["-p", "tcp:0:interface=127.0.0.1", "-i", "0.2", *args]
        server = ServerProcess(command=command)
        self.addCleanup(server.kill)
        return server

    def assertServes(self, server: ServerProcess) -> None:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        sock.sendall(b"asyncio")
        self.assertEqual(recvExactly(sock, 7), b"asyncio")
        self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)

    def test_serves(self) -> None:
        server = self.start()
        self.assertIn("AsyncioSelectorReactor", server.output)
        self.assertServes(server)
        server.stop()
        self.assertIn("stopped listening", server.output)

    def test_workersRunOnTheAsyncioReactorToo(self) -> None:
        server = self.start("--workers", "2")
        server.waitForLine(r"worker 2: timerserver listening", 20)
        for _ in range(4):
            self.assertServes(server)
        server.stop(timeout=20)
        self.assertNotIn("Traceback", server.output)
