"""
C{--workers} under the faults a production host has, on real processes: a
stopped master, a stopped worker, a spawn that fails for want of
descriptors, a stop with a wedged worker, a hostile metrics client.  Every
process started is stopped; every wait is bounded.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time

import psutil

from tests.serverprocess import MESSAGE, WELCOME, ServerProcess, connectFrom, recvExactly
from tests.test_workers import WorkerCase, raiseFileLimit

PROXY = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n"


def httpRequest(port: int, request: bytes, timeout: float = 5) -> tuple[bytes, float]:
    """Send C{request} to the metrics port; the answer (until closed) and how long it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, time.monotonic() - started


def metricsPort(server: ServerProcess) -> int:
    return int(server.waitForLine(r"metrics on .*port=(\d+)", 20).group(1))


def sample(answer: bytes, name: str) -> float:
    for line in answer.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in {answer!r}")


class StoppedMasterTests(WorkerCase):
    def test_workersKeepServingWhileTheMasterIsStopped(self) -> None:
        """
        The master stopped, and a flood of malformed PROXY headers makes the
        workers log: their clients still get every message, and a new one
        is welcomed.
        """
        server = self.start("--interval", "0.2", port="haproxy:tcp:0:interface=127.0.0.1")
        clients = []
        for i in range(10):
            sock = self.connect(server, f"127.0.0.{2 + i}")
            sock.sendall(PROXY)
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
            clients.append(sock)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for i in range(400):
                with connectFrom(server.port, f"127.0.1.{1 + i % 200}") as bad:
                    bad.sendall(b"PROXY TCP4 a b c d\r\n")
            started = time.monotonic()
            for sock in clients:
                got = recvExactly(sock, len(MESSAGE) * 5, timeout=3)
                self.assertEqual(got, MESSAGE * 5)
            self.assertLess(time.monotonic() - started, 3)
            fresh = self.connect(server, "127.0.0.100")
            fresh.sendall(PROXY)
            self.assertEqual(recvExactly(fresh, len(WELCOME), timeout=3), WELCOME)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        server.stop(signal.SIGTERM, timeout=20)
        self.assertEqual(server.stopFigures()["closed"], 11)


class WorkerLogTests(WorkerCase):
    def test_clientEventsAreRateLimitedInTheWorker(self) -> None:
        """Refusals are logged by each worker as by a single process: 20 lines per 10 s."""
        server = self.start("--max-connections", "1")
        held = [self.connect(server, f"127.0.0.{2 + i}") for i in range(4)]
        for i in range(200):
            with connectFrom(server.port, f"127.0.1.{1 + i % 200}") as sock:
                recvExactly(sock, 13)
        del held
        time.sleep(1)
        refusals = server.output.count("refused connection from")
        self.assertGreater(refusals, 0)
        self.assertLessEqual(refusals, 2 * 20)


class StoppedWorkerTests(WorkerCase):
    def test_scrapesAnswerWithinTheDeadline(self) -> None:
        server = self.start("--metrics", "tcp:0:interface=127.0.0.1")
        port = metricsPort(server)
        get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        answer, _ = httpRequest(port, get)
        self.assertEqual(sample(answer, 'timerserver_worker_up{worker="2"}'), 1)
        time.sleep(1.1)  # past the period a scrape is reused for
        worker = self.workerPids(server)[2]
        os.kill(worker, signal.SIGSTOP)
        try:
            abandoned = socket.create_connection(("127.0.0.1", port), timeout=5)
            abandoned.sendall(get)
            abandoned.close()  # a scraper that gives up mid-scrape
            answer, took = httpRequest(port, get)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer[:200])
            self.assertLess(took, 3.0)  # the 1 s deadline, and a margin
            self.assertEqual(sample(answer, 'timerserver_worker_up{worker="2"}'), 0)
            self.assertEqual(sample(answer, 'timerserver_worker_up{worker="1"}'), 1)
        finally:
            os.kill(worker, signal.SIGCONT)
        time.sleep(1.1)
        answer, _ = httpRequest(port, get)
        self.assertEqual(sample(answer, 'timerserver_worker_up{worker="2"}'), 1)
        server.stop(signal.SIGTERM, timeout=20)
        self.assertNotIn("Unhandled", server.output)
        self.assertNotIn("Traceback", server.output)

    def test_sigtermEndsTheMasterWhateverItsWorkersDo(self) -> None:
        server = self.start("--shutdown-timeout", "1")
        pids = self.workerPids(server)
        os.kill(pids[1], signal.SIGSTOP)
        started = time.monotonic()
        server.stop(signal.SIGTERM, timeout=1 + 5)
        self.assertLess(time.monotonic() - started, 1 + 5)
        self.assertIn("worker 1 did not stop; killing it", server.output)
        self.assertEqual(server.stopFigures()["unreported"], 1)
        self.waitGone(list(pids.values()), 5)


class WorkerFileLimitTests(WorkerCase):
    def test_aScrapeAtTheOpenFileLimitLeavesTheWorkerServing(self) -> None:
        """
        Worker 1's open-file limit lowered to what it holds (prlimit), then
        the first scrape: its figures are still answered, and it serves on.
        Before, the scrape was the first use of the metrics module, whose
        import failed with EMFILE; the error escaped the control channel and
        the worker shut down, dropping its clients.
        """
        server = self.start("--interval", "0.5", "--metrics", "tcp:0:interface=127.0.0.1")
        port = metricsPort(server)
        pids = self.workerPids(server)
        time.sleep(1.0)  # both have reported: steered evenly
        clients = [self.connect(server, f"127.0.0.{2 + i}") for i in range(20)]
        for sock in clients:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        mine = [sock for sock in clients if self.ownedBy(sock, pids[1])]
        self.assertTrue(mine)  # all 20 on worker 2: one chance in a million
        one = psutil.Process(pids[1])
        soft, hard = one.rlimit(psutil.RLIMIT_NOFILE)
        one.rlimit(psutil.RLIMIT_NOFILE, (one.num_fds(), hard))
        try:
            get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            for _ in range(2):  # the first scrape, and one past the period it is reused for
                answer, _ = httpRequest(port, get)
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer[:200])
                self.assertEqual(sample(answer, 'timerserver_worker_up{worker="1"}'), 1)
                time.sleep(1.1)
            for sock in mine:  # still served: only periodic messages so far, and more coming
                sock.setblocking(False)
                held = b""
                while True:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break  # closed
                    held += chunk
                self.assertEqual(held, MESSAGE * (len(held) // len(MESSAGE)))
                self.assertEqual(recvExactly(sock, len(MESSAGE), timeout=3), MESSAGE)
            self.assertTrue(one.is_running() and one.status() != psutil.STATUS_ZOMBIE)
        finally:
            try:
                one.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
            except psutil.NoSuchProcess:
                pass  # it died: the test has failed already
        self.assertNotIn("worker 1 exited", server.output)
        self.assertNotIn("Unhandled", server.output)
        self.assertNotIn("Traceback", server.output)


class FailedSpawnTests(WorkerCase):
    def test_spawnWithoutDescriptorsIsRetried(self) -> None:
        """
        With the master's open-file limit at its current use, a killed worker
        is replaced by the spare (already started); the spare's own
        replacement, and then a second replacement, fail to spawn, are one
        line each and are retried until the limit is restored.
        """
        server = self.start("--metrics", "tcp:0:interface=127.0.0.1")
        server.waitForLine(r"spare worker started, pid", 20)
        master = psutil.Process(server.pid)
        soft, hard = master.rlimit(psutil.RLIMIT_NOFILE)
        master.rlimit(psutil.RLIMIT_NOFILE, (master.num_fds(), hard))
        try:
            os.kill(self.workerPids(server)[1], signal.SIGKILL)
            server.waitForLine(r"worker 1 started, pid \d+ \(the spare\)", 10)
            server.waitForLine(r"spare worker could not be started: .*retrying in", 10)
            server.waitForLine(r"worker 1: timerserver listening", 10, occurrence=2)
            sock = self.connect(server)  # the spare serves, the limit still pinned
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
            os.kill(self.workerPids(server)[1], signal.SIGKILL)  # and now no spare is left
            server.waitForLine(r"worker 1 could not be started: .*retrying in", 10)
            server.waitForLine(r"worker 1 could not be started: .*retrying in", 10, occurrence=2)
        finally:
            master.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        server.waitForLine(r"worker 1: timerserver listening", 40, occurrence=3)
        sock = self.connect(server)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        answer, _ = httpRequest(metricsPort(server), b"GET /metrics HTTP/1.1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer[:200])
        server.stop(signal.SIGTERM, timeout=20)
        self.assertNotIn("did not stop", server.output)
        self.assertNotIn("Traceback", server.output)


class OutOfMemoryTests(WorkerCase):
    def test_aWorkerOutOfMemoryExitsAndIsReplaced(self) -> None:
        """
        Twisted logs a MemoryError and goes on: once epoll's poll could not
        allocate, every turn failed for ever, at a full core, serving nobody.
        """
        raiseFileLimit()
        server = self.start("--interval", "5")
        victim = self.workerPids(server)[1]
        with open(f"/proc/{victim}/status") as status:
            size = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
        limit = (size + 2 * 1024) * 1024  # 2 MiB more address space than it has
        resource.prlimit(victim, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        held: list[socket.socket] = []
        deadline = time.monotonic() + 30
        while "exited with status 70" not in server.output and time.monotonic() < deadline:
            try:  # worker 1 takes its share: each costs it a connection and an echo
                sock = connectFrom(server.port, f"127.0.{len(held) // 250}.{2 + len(held) % 250}")
                held.append(sock)
                recvExactly(sock, len(WELCOME), timeout=2)
                sock.sendall(b"y" * 3000)
            except OSError:
                time.sleep(0.01)
            if len(held) >= 9000:
                break
        for sock in held:
            sock.close()
        server.waitForLine(r"worker 1 exited with status 70", 10)
        self.assertIn("out of memory (MemoryError): exiting with status 70", server.output)
        server.waitForLine(r"worker 1 started, pid \d+ \(the spare\)", 10)
        fresh = self.connect(server)
        self.assertEqual(recvExactly(fresh, len(WELCOME)), WELCOME)


class MetricsPortTests(WorkerCase):
    def test_aHugePostIsRefusedAtOnce(self) -> None:
        server = self.start("--metrics", "tcp:0:interface=127.0.0.1")
        port = metricsPort(server)
        post = b"POST /metrics HTTP/1.1\r\nContent-Length: 100000000000\r\n\r\n" + b"x" * 65536
        answer, took = httpRequest(port, post)
        self.assertTrue(answer.startswith(b"HTTP/1.1 405"), answer[:200])
        self.assertLess(took, 3.0)
        answer, _ = httpRequest(port, b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:200])
        answer, _ = httpRequest(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer[:200])
        self.assertTrue(answer.endswith(b"\r\n\r\n"))  # no body
