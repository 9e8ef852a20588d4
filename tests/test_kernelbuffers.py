"""
The kernel's share of a connection's bounds: set on the listening socket,
inherited by every socket it accepts.
"""

from __future__ import annotations

import socket
import tempfile
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from timerserver.kernelbuffers import NOTSENT_LOWAT, TCP_NOTSENT_LOWAT, boundKernelBuffers


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

    def test_everyAcceptedSocketInheritsTheBounds(self) -> None:
        listening = self.listening()
        self.assertTrue(boundKernelBuffers(SimpleNamespace(socket=listening), 2.5))
        client = socket.create_connection(listening.getsockname())
        self.addCleanup(client.close)
        accepted, _ = listening.accept()
        self.addCleanup(accepted.close)
        self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT), NOTSENT_LOWAT)
        self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 3500)

    def test_theLongestStallTimeoutIsTheKernelsLongest(self) -> None:
        listening = self.listening()
        self.assertTrue(boundKernelBuffers(SimpleNamespace(socket=listening), 4294967.294))
        timeout = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        self.assertEqual(timeout, 2**31 - 1)

    def test_notTCPIsLeftAlone(self) -> None:
        self.assertFalse(
            boundKernelBuffers(SimpleNamespace(socket=self.listening(socket.AF_UNIX)), 1)
        )
        self.assertFalse(boundKernelBuffers(object(), 1))

    def test_aSystemThatRefusesThemIsOneWarning(self) -> None:
        class Refusing(socket.socket):
            def setsockopt(self, *args: object) -> None:  # type: ignore[override]
                raise OSError(92, "Protocol not available")

        sock = Refusing()
        self.addCleanup(sock.close)
        events = captureLog(self)
        self.assertFalse(boundKernelBuffers(SimpleNamespace(socket=sock), 1))
        [event] = [e for e in events if "kernel" in e.get("log_format", "")]
        self.assertEqual(event["log_level"].name, "warn")
