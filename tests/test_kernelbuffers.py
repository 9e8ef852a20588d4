"""
The kernel's share of a connection's bounds: the unsent data it takes, set
on the listening socket and inherited by every socket it accepts; and how
long it keeps what a closed connection left unacknowledged.
"""

from __future__ import annotations

import socket
import tempfile
from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from timerserver.kernelbuffers import (
    NOTSENT_LOWAT,
    TCP_NOTSENT_LOWAT,
    boundKernelBuffers,
)
from timerserver.listener import Listener
from timerserver.workersockets import WorkerSockets


class BoundKernelBuffersTests(SynchronousTestCase):
    def listening(self, family: int = socket.AF_INET) -> socket.socket:
        sock = socket.socket(family)
        self.addCleanup(sock.close)
        if family == socket.AF_UNIX:
            sock.bind(tempfile.mktemp(dir=tempfile.mkdtemp()))
        else:
            sock.bind(("127.0.0.1", 0))
        sock.listen()
        return sock

    def accept(self, listening: socket.socket) -> socket.socket:
        client = socket.create_connection(listening.getsockname())
        self.addCleanup(client.close)
        accepted, _ = listening.accept()
        self.addCleanup(accepted.close)
        return accepted

    def test_everyAcceptedSocketInheritsTheBound(self) -> None:
        for port in (SimpleNamespace(socket=self.listening()), self.listening()):
            self.assertTrue(boundKernelBuffers(port))
            listening = port if isinstance(port, socket.socket) else port.socket
            accepted = self.accept(listening)
            lowat = accepted.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
            self.assertEqual(lowat, NOTSENT_LOWAT)
            # Live connections keep the kernel's own retransmission timeout.
            self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 0)

    def test_aWorkerPoolsSocketsAreBoundBeforeTheyListen(self) -> None:
        """Clients accepted by the kernel before a worker runs inherit it too."""
        sockets = WorkerSockets(Listener.parse("tcp:0:interface=127.0.0.1"), Clock(), 2)
        sockets.listen()
        self.addCleanup(sockets.close)
        for sock in sockets._sockets:
            lowat = sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
            self.assertEqual(lowat, NOTSENT_LOWAT)

    def test_notTCPIsLeftAlone(self) -> None:
        self.assertFalse(boundKernelBuffers(self.listening(socket.AF_UNIX)))
        self.assertFalse(boundKernelBuffers(object()))

    def test_aSystemThatRefusesItIsOneWarning(self) -> None:
        class Refusing(socket.socket):
            def setsockopt(self, *args: object) -> None:  # type: ignore[override]
                raise OSError(92, "Protocol not available")

        sock = Refusing()
        self.addCleanup(sock.close)
        events = captureLog(self)
        self.assertFalse(boundKernelBuffers(sock))
        [event] = [e for e in events if "kernel" in e.get("log_format", "")]
        self.assertEqual(event["log_level"].name, "warn")
