"""
C{--workers N}: a master and N real worker processes on one listening
socket.  Every process started is stopped; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import stat
import time
import urllib.request
from collections.abc import Callable

import psutil
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import (
    MESSAGE,
    WELCOME,
    ServerProcess,
    connectFrom,
    holdPort,
    recvExactly,
    recvUntilClosed,
    runTwistd,
)
from timerserver.config import defaultGranularity
from timerserver.cores import usableCores
from timerserver.supervisor import HEALTHY_AFTER


def raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class WorkerCase(SynchronousTestCase):
    def start(self, *args: str, workers: int = 2, **kwargs: object) -> ServerProcess:
        server = ServerProcess("--workers", str(workers), *args, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(self.stopAll, server)
        for number in range(1, workers + 1):
            server.waitForLine(rf"worker {number}: timerserver listening on", 20)
        return server

    def stopAll(self, server: ServerProcess) -> None:
        pids = list(self.workerPids(server).values())
        pids += [int(p) for p in re.findall(r"spare worker started, pid (\d+)", server.output)]
        server.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def workerPids(self, server: ServerProcess) -> dict[int, int]:
        """The newest pid of each worker number, from the master's log."""
        pids: dict[int, int] = {}
        for match in re.finditer(r"worker (\d+) started, pid (\d+)", server.output):
            pids[int(match.group(1))] = int(match.group(2))
        return pids

    def connect(self, server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
        sock = connectFrom(server.port, source)
        self.addCleanup(sock.close)
        return sock

    def served(self, pid: int, port: int) -> int:
        """How many established connections worker C{pid} holds on C{port}."""
        return sum(
            1
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )

    def ownedBy(self, sock: socket.socket, pid: int) -> bool:
        local = sock.getsockname()
        return any(
            c.raddr and (c.raddr.ip, c.raddr.port) == local
            for c in psutil.Process(pid).net_connections(kind="tcp")
        )

    def peersOf(self, pid: int) -> set[tuple[str, int]]:
        """The client addresses of worker C{pid}'s connections."""
        return {
            (c.raddr.ip, c.raddr.port)
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr
        }

    def waitGone(self, pids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [p for p in pids if psutil.pid_exists(p) and _notZombie(p)]
            if not alive:
                return
            time.sleep(0.05)
        self.fail(f"processes still running after {timeout}s: {alive}")


def _notZombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class WorkerTests(WorkerCase):
    def test_twoWorkersServeAndConnectionsSpread(self) -> None:
        raiseFileLimit()
        server = self.start("--interval", "5")
        socks = [self.connect(server, f"127.0.0.{2 + i % 50}") for i in range(2000)]
        for sock in socks:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        pids = self.workerPids(server)
        self.assertEqual(sorted(pids), [1, 2])
        counts = [self.served(pid, server.port) for pid in pids.values()]
        self.assertEqual(sum(counts), 2000)
        self.assertGreaterEqual(min(counts), 600, counts)  # neither under 30%
        self.assertEqual(self.served(server.pid, server.port), 0)  # the master serves none

    def test_killedWorkerIsReplacedAndTheOtherKeepsServing(self) -> None:
        server = self.start("--interval", "0.2")
        socks = [self.connect(server, f"127.0.0.{2 + i}") for i in range(20)]
        for sock in socks:
            recvExactly(sock, len(WELCOME))
        pids = self.workerPids(server)
        victim = pids[1]
        survivors = [s for s in socks if self.ownedBy(s, pids[2])]
        os.kill(victim, signal.SIGKILL)
        killedAt = time.monotonic()
        server.waitForLine(r"worker 1 killed by signal 9 \(SIGKILL\)", 5)
        server.waitForLine(r"worker 1: timerserver listening on", 10, occurrence=2)
        self.assertLess(time.monotonic() - killedAt, 5)
        newPid = self.workerPids(server)[1]
        self.assertNotEqual(newPid, victim)
        match = re.search(
            r"worker 1 killed by signal 9 \(SIGKILL\) after .*restarting it in (\S+)s",
            server.output,
        )
        self.assertIsNotNone(match, server.output)
        self.assertEqual(float(match.group(1)), 0.0)  # type: ignore[union-attr]
        for sock in survivors:  # the other worker's clients keep their messages
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)
        fresh = self.connect(server)
        self.assertEqual(recvExactly(fresh, len(WELCOME)), WELCOME)

    def test_sigtermSaysGoodbyeEverywhereAndLeavesNoProcess(self) -> None:
        server = self.start("--interval", "5")
        socks = [self.connect(server, f"127.0.0.{2 + i}") for i in range(10)]
        for sock in socks:
            recvExactly(sock, len(WELCOME))
        pids = list(self.workerPids(server).values())
        server.stop(signal.SIGTERM, timeout=20)
        for sock in socks:
            self.assertEqual(recvUntilClosed(sock), b"Server shutting down\r\n")
        self.waitGone(pids, 5)
        figures = server.stopFigures()
        self.assertEqual((figures["closed"], figures["cancelled"]), (10, 0))  # none left over
        self.assertEqual((figures["workers"], figures["unreported"]), (2, 0))
        self.assertNotIn("Traceback", server.output)

    def test_theMastersSignalsLeaveTheWorkersServing(self) -> None:
        """
        A hangup of the process group, and twistd's log reopening sent to
        every process of a unit (C{systemctl kill -s USR1}), killed every
        worker (the spare too) and their clients without a goodbye.
        """
        server = self.start("--interval", "0.2")
        socks = [self.connect(server, f"127.0.0.{2 + i}") for i in range(10)]
        for sock in socks:
            recvExactly(sock, len(WELCOME))
        spare = re.search(r"spare worker started, pid (\d+)", server.output)
        assert spare is not None, server.output
        pids = [*self.workerPids(server).values(), int(spare.group(1))]
        for number in (signal.SIGHUP, signal.SIGUSR1):
            for pid in pids:
                os.kill(pid, number)
        time.sleep(0.5)
        for sock in socks:  # every client still gets its messages
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)
        self.assertEqual([pid for pid in pids if not _notZombie(pid)], [])
        self.assertNotIn("killed by signal", server.output)
        server.stop(signal.SIGTERM, timeout=20)
        for sock in socks:
            self.assertTrue(recvUntilClosed(sock).endswith(b"Server shutting down\r\n"))

    def test_workersOfAKilledMasterExitByThemselves(self) -> None:
        server = self.start()
        pids = list(self.workerPids(server).values())
        server.kill()  # SIGKILL: the master cannot tell anyone
        self.waitGone(pids, 10)

    def test_workerThatKeepsDyingIsRestartedWithBackOff(self) -> None:
        from tests.tlshelpers import Certificates

        certs = Certificates()
        server = ServerProcess("--workers", "2", port=certs.endpoint())
        self.addCleanup(self.stopAll, server)
        server.waitForLine(r"worker 2: timerserver listening", 20)
        time.sleep(HEALTHY_AFTER + 1)  # worker 1 has served long enough: it was healthy
        certs.key.unlink()  # every new worker now fails to load its key at start
        pid = self.workerPids(server)[1]
        os.kill(pid, signal.SIGKILL)
        server.waitForLine(r"worker 1 exited with status 1 .*restarting it in 1\.0s", 20)
        delays = [
            float(m)
            for m in re.findall(
                r"worker 1 (?:killed|exited)[^\n]*restarting it in (\S+)s", server.output
            )
        ]
        # The healthy one and the first of its replacements to fail at start
        # are replaced at once; the next back off, whatever their start took.
        self.assertEqual(delays[:4], [0.0, 0.0, 0.5, 1.0])
        self.assertNotIn("worker 2 exited", server.output)  # untouched
        self.assertIn("worker 1: --port: cannot use", server.output)  # one line, no traceback
        self.assertNotIn("Traceback", server.output)


class SteeringTests(WorkerCase):
    def test_newConnectionsGoToTheEmptierWorker(self) -> None:
        """
        Connections pile up on worker 1 (worker 2's are closed); once the
        workers' load reports reach the master, new connections go mostly
        to worker 2, where the hash would split them evenly.
        """
        server = self.start("--interval", "5")
        pids = self.workerPids(server)
        socks = [self.connect(server, f"127.0.0.{2 + i % 50}") for i in range(200)]
        for sock in socks:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        two = self.peersOf(pids[2])
        for sock in socks:
            if sock.getsockname() in two:
                sock.close()
        piled = self.served(pids[1], server.port)
        self.assertGreater(piled, 50)
        self.waitFor(lambda: self.served(pids[2], server.port) == 0, 5)
        time.sleep(2.0)  # reports every 0.5 s; the master steers at most twice a second
        if "not steered" in server.output:
            raise SkipTest("the kernel refuses SO_ATTACH_REUSEPORT_CBPF here")
        fresh = [self.connect(server, f"127.0.0.{2 + i % 50}") for i in range(100)]
        for sock in fresh:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        toTwo = self.served(pids[2], server.port)
        toOne = self.served(pids[1], server.port) - piled
        self.assertEqual(toOne + toTwo, 100)
        self.assertGreaterEqual(toTwo, 75, (toOne, toTwo))  # about 90 expected; the hash: 50
        self.assertNotIn("Traceback", server.output)

    def test_aWorkerAtItsOpenFileLimitGetsNoNewConnections(self) -> None:
        """
        Worker 1's open-file limit is lowered to 5 descriptors over what it
        holds (prlimit): its count stays the lowest, but it says it has no
        room, so every new client goes to worker 2 and is welcomed (before,
        most went to worker 1 and were closed by its EMFILE recovery).
        """
        server = self.start("--interval", "5")
        pids = self.workerPids(server)
        one = psutil.Process(pids[1])
        one.rlimit(psutil.RLIMIT_NOFILE, (one.num_fds() + 5, one.rlimit(psutil.RLIMIT_NOFILE)[1]))
        time.sleep(1.5)  # its next report (every 0.5 s) says so; the master steers at once
        if "not steered" in server.output:
            raise SkipTest("the kernel refuses SO_ATTACH_REUSEPORT_CBPF here")
        clients = []
        for _ in range(100):
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            clients.append(sock)
        deadline = time.monotonic() + 10
        welcomed = 0
        for sock in clients:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                welcomed += recvExactly(sock, len(WELCOME), sock.gettimeout() or 0.1) == WELCOME
            except OSError:
                pass
        self.assertEqual(welcomed, 100)
        self.assertEqual(self.served(pids[1], server.port), 0)
        self.assertNotIn("EMFILE", server.output)

    def waitFor(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"not true within {timeout}s")
            time.sleep(0.05)


class LoadReportTests(SynchronousTestCase):
    """A worker's load report: its admission's count, ahead of its log, only while it serves."""

    def test_reportsTheOpenCountAheadOfTheLog(self) -> None:

        from timerserver.messages import Load
        from timerserver.worker import Worker

        sent: list[object] = []

        class Channel:
            droppedTotal = 0

            def report(self, message: object) -> None:
                sent.append(message)

        class Server:
            running = True

            class admission:
                open = 42
                maxConnections = 900

        self.patch(resource, "getrlimit", lambda which: (4096, 4096))
        worker = Worker(Clock(), Channel(), [3])  # type: ignore[arg-type]
        worker.reportLoad()  # not configured yet: nothing
        worker.server = Server()  # type: ignore[assignment]
        worker.reportLoad()
        Server.running = False  # shutting down: nothing
        worker.reportLoad()
        self.assertEqual(sent, [Load(42, 900)])

    def test_theCapacityFollowsTheCurrentOpenFileLimit(self) -> None:
        """
        A worker whose soft open-file limit was lowered under its
        --max-connections (prlimit) says it can hold that limit less the
        reserve, read afresh at every report; none left is 0.
        """
        from timerserver.config import FILE_RESERVE
        from timerserver.messages import MAX_LOAD
        from timerserver.worker import capacity

        limit = [4096]
        self.patch(resource, "getrlimit", lambda which: (limit[0], 1 << 20))
        self.assertEqual(capacity(900), 900)
        limit[0] = 500
        self.assertEqual(capacity(900), 500 - FILE_RESERVE)
        self.assertEqual(capacity(None), 500 - FILE_RESERVE)
        limit[0] = 14  # the review's: 14 descriptors, under the reserve
        self.assertEqual(capacity(900), 0)
        limit[0] = resource.RLIM_INFINITY
        self.assertEqual(capacity(900), 900)
        self.assertIsNone(capacity(None))  # nothing bounds it
        self.assertEqual(capacity(10**12), MAX_LOAD - 1)  # a Load can still carry it


class WorkerEndpointTests(WorkerCase):
    def test_unixSocket(self) -> None:
        import tempfile

        path = os.path.join(tempfile.mkdtemp(), "ts.sock")
        server = ServerProcess(
            "--workers",
            "2",
            port=f"unix:{path}:mode=600",
            command=None,
            portPattern=r"listening on (.*) with",
        )
        self.addCleanup(self.stopAll, server)
        server.waitForLine(r"worker 2: timerserver listening", 20)
        for _ in range(4):
            sock = socket.socket(socket.AF_UNIX)
            self.addCleanup(sock.close)
            sock.settimeout(5)
            sock.connect(path)
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        # The workers adopt the master's socket: its mode is the master's
        # (Twisted's adopted port made it 0666: every user could connect).
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        server.stop(timeout=20)
        self.assertFalse(os.path.exists(path))  # the master made it, and removes it

    def test_tcp6(self) -> None:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback here: {e}") from None
        server = ServerProcess("--workers", "2", port="tcp6:0:interface=\\:\\:1")
        self.addCleanup(self.stopAll, server)
        server.waitForLine(r"worker 2: timerserver listening", 20)
        self.assertIn("IPv6Address", server.output)
        for _ in range(4):
            sock = socket.create_connection(("::1", server.port), timeout=5)
            self.addCleanup(sock.close)
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)

    def test_theTickFollowsTheWorkersPerCore(self) -> None:
        # 12 workers: a 12 ms tick on 2 cores (over 5 workers a core), in
        # every worker's wheel and in the master's line.
        server = ServerProcess(
            "--workers", "12", "--interval", "5", "--metrics", "tcp:0:interface=127.0.0.1"
        )
        self.addCleanup(self.stopAll, server)
        metrics = server.waitForLine(r"metrics on .*port=(\d+)", 20).group(1)
        for number in range(1, 13):
            server.waitForLine(rf"worker {number}: timerserver listening", 30)
        tick = defaultGranularity(12, usableCores(), 5.0)
        self.assertRegex(server.output, rf"with 12 workers .*, timer queue wheel, tick {tick:g} s")
        self.assertEqual(len(re.findall(rf"granularity={tick}\b", server.output)), 12)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            scrape = r.read().decode()
        self.assertIn(f"\ntimerserver_timer_granularity_seconds {tick}\n", scrape)

    def test_tls(self) -> None:
        from tests.tlshelpers import Certificates

        certs = Certificates()
        server = ServerProcess("--workers", "2", "--interval", "0.2", port=certs.endpoint())
        self.addCleanup(self.stopAll, server)
        server.waitForLine(r"worker 2: timerserver listening", 20)
        for _ in range(4):
            sock = certs.connect(server.port)
            self.addCleanup(sock.close)
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
            sock.sendall(b"tls")
            self.assertEqual(recvExactly(sock, 3), b"tls")
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)


class WorkerStartErrorTests(SynchronousTestCase):
    def test_portInUseIsOneLineAndNoWorker(self) -> None:
        holder = holdPort()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        result = runTwistd("--workers", "2", "-p", f"tcp:{port}:interface=127.0.0.1")
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        [line] = [x for x in output.splitlines() if "cannot listen" in x]
        self.assertIn("Address already in use", line)
        self.assertNotIn("worker 1", output)
        self.assertNotIn("Traceback", output)


class SecondMasterTests(WorkerCase):
    def test_aSecondMasterOnTheSamePortIsOneLineAndTheFirstServesOn(self) -> None:
        """
        Before, the second master's SO_REUSEPORT sockets joined the first's
        group and its steering program replaced the first's: it said it was
        listening, served nothing, and the first's steering stayed wrong.
        """
        first = self.start("--welcome", "first\\r\\n")
        port = first.port
        result = runTwistd("--workers", "2", "-p", f"tcp:{port}:interface=127.0.0.1")
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        [line] = [x for x in output.splitlines() if "cannot listen" in x]
        self.assertIn(
            f"cannot listen on tcp:{port}:interface=127.0.0.1: "
            f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.",
            line,
        )
        self.assertNotIn("worker 1", output)
        self.assertNotIn("Traceback", output)
        for _ in range(10):
            sock = self.connect(first)
            self.assertEqual(recvExactly(sock, 7), b"first\r\n")
