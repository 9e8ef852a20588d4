"""
Socket-level faults against a real C{twistd timerserver} process on
loopback: clients that never read, resets at awkward moments, running out of
file descriptors, and shutdown with a stuck client.  Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from typing import Any

import psutil
from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import (
    MESSAGE,
    WELCOME,
    ServerProcess,
    recvExactly,
    recvUntilClosed,
    sendWhileReading,
)

RST = struct.pack("ii", 1, 0)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    sock.close()


class ServerCase(SynchronousTestCase):
    def start(self, *args: str, **kwargs: object) -> ServerProcess:
        server = ServerProcess(*args, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(server.kill)
        return server

    def connect(self, server: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", server.port))
        self.addCleanup(sock.close)
        return sock

    def assertServing(self, server: ServerProcess) -> None:
        """A new client is greeted, echoed and sent its periodic message."""
        sock = self.connect(server)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        sock.sendall(b"still there?")
        self.assertEqual(recvExactly(sock, 12), b"still there?")
        self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)
        sock.close()

    def assertNothingLeft(self, server: ServerProcess, sockets: list[socket.socket]) -> None:
        """Once its clients are gone, the server stops with no connection or timer left."""
        for sock in sockets:
            sock.close()
        time.sleep(0.5)
        server.stop(timeout=15)
        match = re.search(r"closed (\d+) connections, cancelled (\d+) timers", server.output)
        self.assertIsNotNone(match, server.output)
        self.assertEqual(match.groups(), ("0", "0"), server.output)  # type: ignore[union-attr]
        self.assertNotIn("Traceback", server.output)


class NonReadingClientTests(ServerCase):
    def test_stalledClientIsAbortedAndOthersServed(self) -> None:
        big = "x" * 20000 + "\\r\\n"
        server = self.start("--interval", "0.01", "--message", big, "--stall-timeout", "1")
        process = psutil.Process(server.pid)
        stuck = self.connect(server, rcvbuf=4096)
        reader = self.connect(server)
        recvExactly(reader, len(WELCOME))
        deadline = time.monotonic() + 15
        aborted = False
        while time.monotonic() < deadline and not aborted:
            reader.settimeout(5)
            self.assertTrue(reader.recv(65536))  # the reading client keeps getting data
            aborted = "stalled" in server.output
        self.assertTrue(aborted, server.output)
        self.assertLess(process.memory_info().rss, 200 * 1024 * 1024)
        stuck.settimeout(5)
        with self.assertRaises((ConnectionResetError, BrokenPipeError)):
            while stuck.recv(1 << 20):
                pass
        self.assertNotIn("Traceback", server.output)


def serverSockets(port: int) -> dict[int, tuple[str, int]]:
    """
    The server's own sockets on C{port} (C{/proc/net/tcp}), the listening one
    and those in TIME_WAIT left out: by the client's port, their state (hex)
    and the bytes in their send queue.  An orphan (closed by the server, the
    kernel still holding its data) is among them.
    """
    sockets = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == port and state not in ("0A", "06"):
                queued = int(fields[4].split(":")[0], 16)
                sockets[int(remote.split(":")[1], 16)] = (state, queued)
    return sockets


class KernelBufferTests(ServerCase):
    """
    What a client that does not read makes the server's kernel hold: bounded,
    and for no longer than --stall-timeout (and a second), whether or not the
    server still holds the connection.
    """

    def sendWithoutReading(
        self, server: ServerProcess, size: int, payload: bytes | None = None
    ) -> socket.socket:
        sock = self.connect(server, rcvbuf=4096)
        sock.settimeout(15)
        sock.sendall(payload or b"k" * size)  # echoed into a window that stays shut
        return sock

    def test_aClientThatSendsAndNeverReadsIsPausedAndAborted(self) -> None:
        """
        Its echo is not taken into the kernel's send buffer (which grew to
        about 3 MiB for it): the server pauses it and aborts it at the
        stall timeout.
        """
        server = self.start("--interval", "3600", "--stall-timeout", "2")
        sock = self.sendWithoutReading(server, 1 << 20)
        mine = sock.getsockname()[1]
        time.sleep(0.5)
        _state, queued = serverSockets(server.port)[mine]
        self.assertLess(queued, 256 * 1024)  # kernel: unsent + in flight to a 4 KiB window
        server.waitForLine(r"aborted connection from .*stalled", 10)
        self.assertNotIn(mine, serverSockets(server.port))

    def test_aSlowReaderThatKeepsReadingIsNotStalled(self) -> None:
        """
        Paused behind a burst of echo, it reads 40 KiB a second: it takes
        longer than --stall-timeout to drain, but it is never without
        progress for that long (nginx's send_timeout).
        """
        server = self.start("--interval", "3600", "--no-welcome", "--stall-timeout", "1")
        payload = bytes(range(256)) * 1024  # 256 KiB
        sock = self.sendWithoutReading(server, len(payload), payload)
        received = b""
        deadline = time.monotonic() + 20
        while len(received) < len(payload) and time.monotonic() < deadline:
            received += sock.recv(2048)
            time.sleep(0.05)
        self.assertEqual(received, payload)
        self.assertNotIn("stalled", server.output)

    def test_aClientThatStopsReadingBrieflyIsNotCutOffByTheKernel(self) -> None:
        """
        Not reading for 5 s with --stall-timeout 0.5, but never so far behind
        that the server paused it: the kernel does not end it either.
        """
        server = self.start("--interval", "0.01", "--stall-timeout", "0.5")
        sock = self.connect(server, rcvbuf=4096)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        time.sleep(5)
        for _ in range(200):  # what waited, and then more
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)

    def test_aClientThatHalfClosesAndNeverReadsIsAbortedAtTheStallTimeout(self) -> None:
        """
        The server cannot flush its echo to a client that half-closed and
        does not read (the kernel takes about 64 KiB of it): the close is
        aborted at the stall timeout, and the kernel keeps nothing for it.
        """
        server = self.start("--interval", "3600", "--stall-timeout", "2")
        sock = self.sendWithoutReading(server, 1 << 20)
        mine = sock.getsockname()[1]
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 8
        while mine in serverSockets(server.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertNotIn(mine, serverSockets(server.port))
        self.assertNotIn("Traceback", server.output)


class ResetTests(ServerCase):
    def test_resetsAtAwkwardMoments(self) -> None:
        server = self.start("--interval", "0.05")
        # During the welcome: reset before reading anything.
        for _ in range(20):
            reset(self.connect(server))
        # Mid-echo: a megabyte sent, then a reset.
        sock = self.connect(server)
        sock.sendall(b"y" * 1_000_000)
        reset(sock)
        # Mid-periodic: reset right after a periodic message arrives.
        for _ in range(5):
            sock = self.connect(server)
            recvExactly(sock, len(WELCOME) + len(MESSAGE))
            reset(sock)
        time.sleep(0.3)
        self.assertServing(server)
        self.assertNothingLeft(server, [])

    def test_burstIsEchoedByteForByte(self) -> None:
        server = self.start("--interval", "1")
        sock = self.connect(server)
        recvExactly(sock, len(WELCOME))
        burst = bytes(range(256)) * (16 * 4096)  # 16 MiB in one sendall
        self.assertEqual(sendWhileReading(sock, burst, timeout=60), burst)
        self.assertServing(server)
        self.assertNothingLeft(server, [sock])


class FileLimitTests(ServerCase):
    def test_serverLimitMetBeforeTheKernels(self) -> None:
        """With the default --max-connections, extra clients are told busy."""
        server = self.start("--interval", "0.2", openFiles=100)  # serves 100 - 64 = 36
        socks = [self.connect(server) for _ in range(40)]
        greetings = [recvExactly(s, len(WELCOME), timeout=5) for s in socks]
        self.assertEqual(greetings.count(WELCOME), 36)
        busy = [g for g in greetings if g != WELCOME]
        self.assertEqual(busy, [b"Server busy\r\n"] * 4)

    def test_aRefusedClientThatSpokeFirstIsClosedNotReset(self) -> None:
        """
        A refused client whose bytes wait unread when it is accepted reads
        C{Server busy} and then the end of the stream: closed with its bytes
        unread, the kernel reset the connection instead.
        """
        server = self.start("--interval", "1", "--max-connections", "1")
        holder = self.connect(server)
        self.assertEqual(recvExactly(holder, len(WELCOME)), WELCOME)
        os.kill(server.pid, signal.SIGSTOP)  # so that every refused client spoke first
        try:
            refused = [self.connect(server) for _ in range(5)]
            for sock in refused:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 8)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        for sock in refused:
            self.assertEqual(recvUntilClosed(sock), b"Server busy\r\n")  # no ECONNRESET
        self.assertNotIn("Traceback", server.output)

    def test_aConnectFloodAtTheLimitNeverRunsOutOfDescriptors(self) -> None:
        """
        At the default --max-connections, 600 connects at once are each told
        busy and closed in the accept loop, one descriptor at a time: the
        process never runs out, and nothing is logged past the rate limit.
        """
        server = self.start("--interval", "1", openFiles=200)  # serves 200 - 64 = 136
        self.assertFloodIsToldBusy(server, lambda: (socket.socket(), ("127.0.0.1", server.port)))
        self.assertServing(server)

    def test_aConnectFloodAtTheLimitOfAUnixSocket(self) -> None:
        directory = tempfile.mkdtemp(prefix="timerserver-")  # absolute: the server's cwd differs
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s.sock")
        server = self.start(
            "--interval", "1", openFiles=200, port=f"unix:{path}", portPattern=r"listening on ()"
        )  # fmt: skip
        self.assertFloodIsToldBusy(server, lambda: (socket.socket(socket.AF_UNIX), path))

    def assertFloodIsToldBusy(self, server: ServerProcess, client: Any) -> None:
        """Hold the server's 136 places, then flood it: all 600 are told busy at once."""
        held = []
        for _ in range(136):
            sock, address = client()
            self.addCleanup(sock.close)
            sock.settimeout(5)
            sock.connect(address)
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
            held.append(sock)
        flood = []
        for _ in range(600):
            sock, address = client()
            self.addCleanup(sock.close)
            sock.setblocking(False)
            sock.connect_ex(address)
            flood.append(sock)
        time.sleep(2)
        told = 0
        for sock in flood:
            try:
                told += recvExactly(sock, len(b"Server busy\r\n"), timeout=2) == b"Server busy\r\n"
            except OSError:
                pass
        self.assertEqual(told, 600)
        self.assertNotIn("EMFILE", server.output)
        self.assertLessEqual(server.output.count("refused connection"), 20)
        held[0].close()
        time.sleep(0.3)

    def test_kernelLimitThenRecovery(self) -> None:
        """
        The host lowers the open-file limit under the server (prlimit): past
        it clients are dropped, each a rate-limited log line; the rest stay on
        time; then it recovers.
        """
        server = self.start("--interval", "0.2")
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (64, 64))
        socks = []
        for _ in range(80):
            try:
                socks.append(self.connect(server))
            except OSError:
                break
        served = [s for s in socks if recvExactly(s, len(WELCOME), timeout=2) == WELCOME]
        self.assertLess(len(served), len(socks))  # some were refused by the kernel limit
        server.waitForLine(r"out of file descriptors \(EMFILE\)", 5)
        self.assertNotIn("EMFILE recovery", server.output)  # Twisted's line a socket
        dropped = server.output.count("out of file descriptors (EMFILE)")
        self.assertGreater(dropped, 0)
        self.assertLessEqual(dropped, 20)
        self.assertGreater(len(served), 20)
        started = time.monotonic()
        for s in served[:10]:
            self.assertEqual(recvExactly(s, len(MESSAGE), timeout=2), MESSAGE)
        self.assertLess(time.monotonic() - started, 1.5)
        for s in socks:
            s.close()
        time.sleep(0.5)
        self.assertServing(server)
        self.assertNothingLeft(server, socks)

    def test_aLimitUnderTheSpareDescriptorIsNotABusyLoop(self) -> None:
        """
        The host lowers the soft limit below Twisted's spare descriptor (the
        one its EMFILE recovery frees): clients wait in the listen queue and
        the server does not spin on them; once the limit is back they are
        welcomed, and the spare is back too: past a limit lowered again,
        clients are closed at once, not held.
        """
        server = self.start("--interval", "0.5")
        self.assertServing(server)
        process = psutil.Process(server.pid)
        _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)

        def cpu() -> float:
            times = process.cpu_times()
            return float(times.user + times.system)

        def connectAll(count: int) -> list[socket.socket]:
            socks = [self.connect(server) for _ in range(count)]
            time.sleep(0.5)
            return socks

        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (6, hard))
        waiting = connectAll(3)
        before = cpu()
        time.sleep(3)
        self.assertLess(cpu() - before, 1.0)  # a busy loop takes the whole 3 s
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (hard, hard))
        for sock in waiting:
            self.assertEqual(recvExactly(sock, len(WELCOME), timeout=5), WELCOME)
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (process.num_fds(), hard))
        turnedAway = connectAll(3)
        before = cpu()
        for sock in turnedAway:
            self.assertEqual(recvUntilClosed(sock, timeout=3), b"")  # closed by the recovery
        self.assertLess(cpu() - before, 1.0)
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (hard, hard))
        self.assertServing(server)
        self.assertNothingLeft(server, waiting + turnedAway)


class ShutdownTests(ServerCase):
    def test_signalsDuringTheStopAreOneLineEach(self) -> None:
        """A second SIGTERM or SIGINT while a stuck client holds the stop up."""
        for workers in ("1", "2"):
            server = self.start("--workers", workers, "--shutdown-timeout", "2")
            stuck = self.connect(server, rcvbuf=4096)
            self.assertEqual(recvExactly(stuck, len(WELCOME)), WELCOME)
            stuck.setblocking(False)
            for _ in range(200):  # echo it will not read: its close cannot flush
                try:
                    stuck.send(b"z" * 65536)
                except BlockingIOError:
                    time.sleep(0.005)
            server.process.send_signal(signal.SIGTERM)
            server.waitForLine(r"Received SIGTERM", 5)
            for again in (signal.SIGINT, signal.SIGTERM):
                time.sleep(0.2)
                server.process.send_signal(again)
            self.assertIn(server.stop(timeout=15), (0, -signal.SIGTERM))
            self.assertIn("SIGINT again: already stopping", server.output)
            self.assertIn("SIGTERM again: already stopping", server.output)
            self.assertNotIn("Traceback", server.output)
            self.assertNotIn("ReactorNotRunning", server.output)

    def test_stuckClientDoesNotDelayExit(self) -> None:
        big = "z" * 20000 + "\\r\\n"
        server = self.start(
            "--interval",
            "0.01",
            "--message",
            big,
            "--shutdown-timeout",
            "1",
            "--stall-timeout",
            "60",
        )
        stuck = self.connect(server, rcvbuf=4096)
        reader = self.connect(server)
        recvExactly(reader, len(WELCOME))
        time.sleep(1.0)  # let the stuck client's buffers fill
        received: list[bytes] = []
        readAll = threading.Thread(
            target=lambda: received.append(recvUntilClosed(reader, timeout=10)), daemon=True
        )
        readAll.start()  # the reader reads on through the shutdown
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=10)
        self.assertLess(time.monotonic() - started, 4)
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertIn("closed 2 connections", server.output)
        self.assertNotIn("Traceback", server.output)
        readAll.join(10)
        self.assertTrue(received[0].endswith(b"Server shutting down\r\n"))
        stuck.close()
