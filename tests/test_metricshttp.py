"""
The metrics port's HTTP, driven by StringTransport and task.Clock: what it
answers, what it refuses before reading a body, and its deadlines and limits;
and a scraper's half-close over a real loopback connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from timerserver.metricshttp import (
    FAILURE_LOG_INTERVAL,
    LINGER,
    LINGER_BYTES,
    MAX_HEAD,
    REQUEST_TIMEOUT,
    MetricsHTTP,
    MetricsHTTPFactory,
)

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class HalfClosingTransport(StringTransport):
    """A StringTransport that records a half-close and an abort."""

    writeClosed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True


class FakePort:
    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class Harness:
    def __init__(self, answer: Any = None, maxConnections: int = 16) -> None:
        self.clock = Clock()
        self.renders: list[tuple[str, defer.Deferred[tuple[str, bytes]]]] = []
        self.answer = answer
        self.factory = MetricsHTTPFactory(self.render, self.clock, maxConnections=maxConnections)
        self.factory.port = FakePort()

    def render(self, accept: str) -> defer.Deferred[tuple[str, bytes]]:
        if self.answer is not None:
            return defer.succeed(self.answer)
        d: defer.Deferred[tuple[str, bytes]] = defer.Deferred()
        self.renders.append((accept, d))
        return d

    def connect(self) -> tuple[MetricsHTTP, HalfClosingTransport]:
        proto = self.factory.buildProtocol(ADDRESS)
        assert isinstance(proto, MetricsHTTP)
        transport = HalfClosingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def lose(self, proto: MetricsHTTP) -> None:
        proto.connectionLost(None)


def status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


class AnswerTests(SynchronousTestCase):
    def test_get(self) -> None:
        h = Harness(("text/plain; version=0.0.4", b"metric 1\n"))
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertEqual(status(transport), 200)
        self.assertIn(b"Content-Type: text/plain; version=0.0.4", head)
        self.assertIn(b"Content-Length: 9", head)
        self.assertIn(b"Connection: close", head)
        self.assertEqual(body, b"metric 1\n")
        self.assertTrue(transport.writeClosed)
        h.lose(proto)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_headHasNoBody(self) -> None:
        h = Harness(("text/plain", b"metric 1\n"))
        proto, transport = h.connect()
        proto.dataReceived(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 9", head)
        self.assertEqual(body, b"")

    def test_acceptAndQueryArePassedOn(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics?x=1 HTTP/1.0\r\nAccept: application/openmetrics-text")
        self.assertEqual(h.renders, [])  # the head is not complete yet
        proto.dataReceived(b"\r\n\r\n")
        [(accept, d)] = h.renders
        self.assertEqual(accept, "application/openmetrics-text")
        d.callback(("application/openmetrics-text", b"# EOF\n"))
        self.assertEqual(status(transport), 200)

    def test_aRenderThatRaisesIs500AndFailuresAreLoggedOnceAMinute(self) -> None:
        """Whatever a scraper sends, no traceback per request: one line a minute at most."""
        h = Harness()

        def render(accept: str) -> defer.Deferred[tuple[str, bytes]]:
            raise TypeError(accept)

        h.factory.render = render
        for _ in range(5):
            proto, transport = h.connect()
            proto.dataReceived(b"GET /metrics HTTP/1.1\r\nAccept: what\r\n\r\n")
            self.assertEqual(status(transport), 500)
            h.lose(proto)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        h.clock.advance(FAILURE_LOG_INTERVAL)
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        self.assertEqual(status(transport), 500)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_renderFailureIs500AndLogged(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        h.renders[0][1].errback(RuntimeError("no figures"))
        self.assertEqual(status(transport), 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RefusalTests(SynchronousTestCase):
    def refused(self, request: bytes) -> tuple[Harness, MetricsHTTP, HalfClosingTransport]:
        h = Harness(("text/plain", b"x"))
        proto, transport = h.connect()
        proto.dataReceived(request)
        self.assertEqual(h.renders, [])
        self.assertTrue(transport.writeClosed)
        return h, proto, transport

    def test_otherMethodsAre405BeforeTheBody(self) -> None:
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"BREW"):
            request = method + b" /metrics HTTP/1.1\r\nContent-Length: 100000000000\r\n\r\n"
            _, _, transport = self.refused(request)
            self.assertEqual(status(transport), 405)
            self.assertIn(b"Allow: GET, HEAD", transport.value())

    def test_bodyOfAGetIs413(self) -> None:
        for header in (b"Content-Length: 10", b"Transfer-Encoding: chunked"):
            _, _, transport = self.refused(b"GET /metrics HTTP/1.1\r\n" + header + b"\r\n\r\n")
            self.assertEqual(status(transport), 413)

    def test_otherPathsAre404(self) -> None:
        for path in (b"/", b"/metricsx", b"/metrics/", b"/../metrics"):
            _, _, transport = self.refused(b"GET " + path + b" HTTP/1.1\r\n\r\n")
            self.assertEqual(status(transport), 404)

    def test_malformedIs400(self) -> None:
        for request in (b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"):
            _, _, transport = self.refused(request)
            self.assertEqual(status(transport), 400)

    def test_bodyIsThrownAwayThenTheConnectionAborted(self) -> None:
        h, proto, transport = self.refused(
            b"POST /metrics HTTP/1.1\r\nContent-Length: 100000000000\r\n\r\n" + b"x" * 1000
        )
        answer = transport.value()
        for _ in range(LINGER_BYTES // 4096 + 1):
            if transport.aborted:
                break
            proto.dataReceived(b"x" * 4096)
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), answer)  # one answer, nothing more
        self.assertEqual(proto.buffer, b"")  # nothing of the body was kept
        h.lose(proto)

    def test_lingerEndsWithAnAbort(self) -> None:
        h, proto, transport = self.refused(b"DELETE /metrics HTTP/1.1\r\n\r\n")
        h.clock.advance(LINGER - 0.01)
        self.assertFalse(transport.aborted)
        h.clock.advance(0.02)
        self.assertTrue(transport.aborted)
        h.lose(proto)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_headTooLargeIs431(self) -> None:
        h = Harness(("text/plain", b"x"))
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n")
        proto.dataReceived(b"X-Pad: " + b"a" * MAX_HEAD)
        self.assertEqual(status(transport), 431)


class HalfCloseTests(SynchronousTestCase):
    def test_halfClosedWhileRendering(self) -> None:
        """The scraper waits for its answer; it is closed once written."""
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        proto.readConnectionLost()
        self.assertFalse(transport.disconnecting or transport.aborted)
        h.renders[0][1].callback(("text/plain", b"metric 1\n"))
        self.assertEqual(status(transport), 200)
        self.assertTrue(transport.disconnecting)
        proto.writeConnectionLost()
        h.lose(proto)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_halfClosedBeforeAWholeRequest(self) -> None:
        h = Harness(("text/plain", b"x"))
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n")
        proto.readConnectionLost()
        self.assertTrue(transport.aborted)
        self.assertEqual((transport.value(), h.renders), (b"", []))


class HalfCloseOverTCPTests(TestCase):
    """Over a real loopback connection: Twisted tells a protocol of a half-close only if it asks."""

    def test_aScraperThatHalfClosesAfterItsRequestGetsItsAnswer(self) -> defer.Deferred[None]:
        from twisted.internet import reactor
        from twisted.internet.protocol import ClientFactory

        factory = MetricsHTTPFactory(
            lambda accept: defer.succeed(("text/plain", b"metric 1\n")), reactor
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        received: defer.Deferred[bytes] = defer.Deferred()

        class Scraper(Protocol):
            data = b""

            def connectionMade(self) -> None:
                self.transport.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                self.transport.loseWriteConnection()  # like nc -N

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: object = None) -> None:
                received.callback(self.data)

        client = ClientFactory.forProtocol(Scraper)
        reactor.connectTCP("127.0.0.1", port.getHost().port, client, timeout=5)

        def check(answer: bytes) -> None:
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
            self.assertTrue(answer.endswith(b"\r\n\r\nmetric 1\n"), answer)

        return received.addTimeout(10, reactor).addCallback(check)


class DeadlineTests(SynchronousTestCase):
    def test_headMustArriveInTime(self) -> None:
        h = Harness(("text/plain", b"x"))
        proto, transport = h.connect()
        for _ in range(int(REQUEST_TIMEOUT) - 1):
            proto.dataReceived(b"G")  # trickling does not push the deadline back
            h.clock.advance(1)
        self.assertEqual(transport.value(), b"")
        h.clock.advance(1.01)
        self.assertEqual(status(transport), 408)

    def test_answerNotReadyInTimeIs503(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        h.clock.advance(h.factory.answerTimeout + 0.01)
        self.assertEqual(status(transport), 503)
        h.renders[0][1].callback(("text/plain", b"late"))  # too late: nothing written
        self.assertNotIn(b"late", transport.value())
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_scraperGoneBeforeTheAnswer(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        h.lose(proto)
        h.renders[0][1].callback(("text/plain", b"metric 1\n"))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.factory.open, 0)


class LimitTests(SynchronousTestCase):
    def test_portPausedAtTheLimitAndResumed(self) -> None:
        h = Harness(("text/plain", b"x"), maxConnections=3)
        port = h.factory.port
        conns = [h.connect() for _ in range(2)]
        self.assertTrue(port.reading)
        conns.append(h.connect())
        self.assertFalse(port.reading)  # the kernel's queue holds the next ones
        conns.append(h.connect())  # accepted in the same turn: served, not reset
        h.lose(conns[0][0])
        self.assertFalse(port.reading)
        h.lose(conns[1][0])
        self.assertTrue(port.reading)
        self.assertEqual(h.factory.open, 2)
