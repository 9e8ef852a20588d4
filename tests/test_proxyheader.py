"""The PROXY header is read before the server sees the connection."""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from timerserver import TimerQueueCounters, TimerWheel
from timerserver.endpoint import layered
from timerserver.factory import TimerServerFactory
from timerserver.protocol import BUSY, DEFAULT_WELCOME
from timerserver.proxyheader import DEFAULT_HEADER_TIMEOUT

PROXY_ADDRESS = IPv4Address("TCP", "10.0.0.1", 40000)


def v1(client: str, port: int = 50000) -> bytes:
    return f"PROXY TCP4 {client} 192.0.2.9 {port} 5050\r\n".encode()


def v2(client: str, port: int = 50000) -> bytes:
    body = socket.inet_aton(client) + socket.inet_aton("192.0.2.9") + struct.pack("!HH", port, 5050)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class Harness:
    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.counters = TimerQueueCounters()
        self.factory = TimerServerFactory(TimerWheel(self.clock, monitor=self.counters), **options)
        self.wrapper = layered(self.factory, proxy=True)
        self.logged: list[tuple[str, object, str]] = []
        self.factory.events.event = lambda *a: self.logged.append(a)  # type: ignore[method-assign]

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.wrapper.buildProtocol(PROXY_ADDRESS)
        transport = StringTransport(peerAddress=PROXY_ADDRESS)
        proto.makeConnection(transport)
        return proto, transport


class ProxyHeaderTests(SynchronousTestCase):
    def test_nothingBeforeTheHeader(self) -> None:
        h = Harness()
        _proto, transport = h.connect()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.factory.connections, set())
        self.assertEqual(h.counters.live, 0)

    def test_headerInPiecesThenWelcomeWithTheClientsAddress(self) -> None:
        for header in (v1("192.0.2.7"), v2("192.0.2.7")):
            h = Harness()
            proto, transport = h.connect()
            for i in range(len(header)):
                proto.dataReceived(header[i : i + 1])
            self.assertEqual(transport.value(), DEFAULT_WELCOME)
            [server] = h.factory.connections
            self.assertEqual(server.transport.getPeer().host, "192.0.2.7")
            self.assertEqual(h.factory.perPeer, {"192.0.2.7": 1})

    def test_dataAfterTheHeaderInTheSameReadIsEchoed(self) -> None:
        h = Harness(welcome=None)
        proto, transport = h.connect()
        proto.dataReceived(v2("192.0.2.7") + b"hello")
        self.assertEqual(transport.value(), b"hello")
        proto.dataReceived(b" again")
        self.assertEqual(transport.value(), b"hello again")

    def test_perPeerLimitUsesTheClientsAddress(self) -> None:
        h = Harness(maxPerPeer=1)
        first, t1 = h.connect()
        first.dataReceived(v1("192.0.2.7"))
        other, t2 = h.connect()
        other.dataReceived(v1("192.0.2.8"))
        again, t3 = h.connect()
        again.dataReceived(v1("192.0.2.7", 50001))
        self.assertEqual((t1.value(), t2.value()), (DEFAULT_WELCOME, DEFAULT_WELCOME))
        self.assertEqual(t3.value(), BUSY)
        [refused] = [e for e in h.logged if e[0] == "refused"]
        self.assertEqual(refused[1].host, "192.0.2.7")  # type: ignore[attr-defined]

    def test_invalidHeaderIsDroppedAndLogged(self) -> None:
        for garbage in (
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXY nonsense\r\n",
            b"\r\n\r\n\x00\r\nQUIT\n\x99\x11\x00\x00",
        ):
            h = Harness()
            proto, transport = h.connect()
            proto.dataReceived(garbage)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(transport.value(), b"")
            [(kind, peer, detail)] = h.logged
            self.assertEqual((kind, peer), ("dropped", PROXY_ADDRESS))
            self.assertIn("invalid PROXY header", detail)
            proto.connectionLost(None)
            self.assertEqual((h.counters.live, h.clock.getDelayedCalls()), (0, []))

    def test_noHeaderInTimeIsAborted(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"PRO")  # a start, never finished
        h.clock.advance(DEFAULT_HEADER_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnected)
        h.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertIn("no PROXY header", h.logged[0][2])
        proto.connectionLost(None)
        self.assertEqual(h.factory.connections, set())

    def test_closedBeforeTheHeader(self) -> None:
        h = Harness()
        proto, _transport = h.connect()
        proto.connectionLost(None)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.logged, [])
