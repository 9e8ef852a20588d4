"""
The metrics port's HTTP, driven by StringTransport and task.Clock: what it
answers, what it refuses before reading a body, and its deadlines and limits;
and a scraper's half-close over a real loopback connection.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from timerserver.eventlog import EventLog
from timerserver.metricshttp import (
    FAILURE_LOG_INTERVAL,
    LINGER,
    LINGER_BYTES,
    MAX_HEAD,
    REQUEST_TIMEOUT,
    MetricsHTTP,
    MetricsHTTPFactory,
)
from timerserver.scrapeslots import DELIVERY_CHECK, DROP_LOG_INTERVAL, EVICT_GRACE, LISTEN_BACKLOG
from timerserver.transport import unacknowledged

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
        logged: list[dict[str, Any]] = []
        h.factory.log = Logger(observer=logged.append)
        h.clock.advance(LINGER - 0.01)
        self.assertFalse(transport.aborted)
        h.clock.advance(0.02)
        self.assertTrue(transport.aborted)
        self.assertEqual([e["counts"] for e in logged], ["1 held after the answer"])
        h.lose(proto)
        h.factory.stopFactory()  # the log's once-a-minute window
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


class OverTLSTests(TestCase):
    """An C{ssl:} metrics port, over a real loopback connection."""

    def test_aScrapeOverTLSEndsWithoutAnError(self) -> defer.Deferred[None]:
        """
        The scraper reads its answer, then sends its close_notify (as curl
        does): before, the answer's half-close reached past TLS to the socket,
        and Twisted's TLS layer raised on that close_notify (an unhandled
        error logged per scrape, which fails this test).
        """
        import ssl

        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.task import deferLater
        from twisted.internet.threads import deferToThread

        from tests.tlshelpers import Certificates

        certs = Certificates()
        factory = MetricsHTTPFactory(
            lambda accept: defer.succeed(("text/plain", b"metric 1\n")), reactor
        )

        def scrape(port: int) -> bytes:
            sock = certs.connect(port)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"metric 1\n"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            try:
                sock.unwrap()  # close_notify, as curl sends it
            except (OSError, ssl.SSLError):
                pass
            sock.close()
            return answer

        def listening(port: Any) -> defer.Deferred[None]:
            self.addCleanup(port.stopListening)
            return deferToThread(scrape, port.getHost().port).addCallback(check)

        def check(answer: bytes) -> defer.Deferred[None]:
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
            return deferLater(reactor, 0.5, lambda: None)  # the server reads the close_notify

        endpoint = serverFromString(reactor, certs.endpoint())
        return endpoint.listen(factory).addCallback(listening)


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


class AcceptingPort(FakePort):
    """
    Stands for C{tcp.Port}: C{doRead} accepts up to C{numberAccepts} of the
    C{waiting} connections in one turn, as Twisted's accept loop does.
    """

    def __init__(self, factory: MetricsHTTPFactory, waiting: int = 0) -> None:
        FakePort.__init__(self)
        self.factory = factory
        self.waiting = waiting
        self.numberAccepts = 100
        self.backlog = 50
        self.accepted: list[tuple[MetricsHTTP, HalfClosingTransport]] = []
        self.refused = 0

    def doRead(self) -> None:
        for _ in range(self.numberAccepts):
            if not self.waiting:
                return
            self.waiting -= 1
            proto = self.factory.buildProtocol(ADDRESS)
            if proto is None:
                self.refused += 1
                continue
            assert isinstance(proto, MetricsHTTP)
            transport = HalfClosingTransport()
            proto.makeConnection(transport)
            self.accepted.append((proto, transport))

    def turn(self) -> None:
        """One reactor turn: the port is read if it is reading and a connection waits."""
        if self.reading and self.waiting:
            self.doRead()  # the factory's wrapper, once listening


def bounded(
    maxConnections: int = 3, waiting: int = 0, answer: Any = ("text/plain", b"x")
) -> tuple[Harness, AcceptingPort, list[dict[str, Any]]]:
    h = Harness(answer, maxConnections=maxConnections)
    logged: list[dict[str, Any]] = []
    h.factory.log = Logger(observer=logged.append)
    port = AcceptingPort(h.factory, waiting)
    h.factory.listening(port)
    return h, port, logged


class AcceptBoundTests(SynchronousTestCase):
    def test_aTurnAcceptsNoMoreThanTheFreeSlots(self) -> None:
        """Twisted accepts 100 a turn (and more after a full turn): only the free slots here."""
        h, port, _ = bounded(maxConnections=16, waiting=100)
        port.turn()
        self.assertEqual((h.factory.open, len(port.accepted), port.refused), (16, 16, 0))
        self.assertEqual(port.waiting, 84)  # still in the listen queue, not refused
        self.assertFalse(port.reading)
        h.lose(port.accepted[0][0])
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual((h.factory.open, len(port.accepted), port.refused), (16, 17, 0))

    def test_pastTheLimitNothingIsBuilt(self) -> None:
        """A backstop: a port that accepted past the free slots gets no protocol."""
        h, port, _ = bounded(maxConnections=2, waiting=2)
        port.turn()
        self.assertIsNone(h.factory.buildProtocol(ADDRESS))
        self.assertEqual(h.factory.open, 2)

    def test_theListenQueueIsRaised(self) -> None:
        class Socket:
            backlog = 0

            def listen(self, backlog: int) -> None:
                self.backlog = backlog

        port = AcceptingPort(Harness().factory)
        port.socket = Socket()
        port.factory.listening(port)
        self.assertEqual((port.backlog, port.socket.backlog), (LISTEN_BACKLOG, LISTEN_BACKLOG))

    def test_theAcceptLogIsRateLimited(self) -> None:
        """Out of descriptors, Twisted logs every socket it closes: 20 lines per 10 s here."""
        from twisted.internet import tcp

        factory = Harness().factory
        logged: list[dict[str, Any]] = []
        factory.events = EventLog(factory.clock, Logger(observer=logged.append))
        port = tcp.Port(0, factory, interface="127.0.0.1")
        factory.listening(port)
        for n in range(500):
            port._logger.info(
                "EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", n)
            )
        self.assertEqual(factory.events.totals["dropped"], 500)
        self.assertEqual(len(logged), 20)
        factory.stopFactory()
        self.assertEqual(len(logged), 21)  # and one line with the count


class EvictionTests(SynchronousTestCase):
    def test_aWaitingConnectionEvictsThoseOnceTheirGraceIsOver(self) -> None:
        h, port, _ = bounded(maxConnections=3, waiting=10)
        port.turn()
        self.assertFalse(port.reading)  # none is past its grace: paused
        h.clock.advance(EVICT_GRACE / 2)
        self.assertFalse(port.reading)
        h.clock.advance(EVICT_GRACE / 2)
        self.assertTrue(port.reading)  # resumed when the oldest's grace ended
        port.turn()
        self.assertEqual([t.aborted for _, t in port.accepted], [True, True, True])
        self.assertEqual((h.factory.open, h.factory.evicted, port.waiting), (3, 3, 7))
        self.assertFalse(port.reading)  # until the evicted ones' descriptors are closed
        port.turn()
        self.assertEqual(len(port.accepted), 3)
        for proto, _ in port.accepted:
            h.lose(proto)
        port.turn()  # all three slots in one turn
        self.assertEqual((h.factory.open, len(port.accepted), port.waiting), (3, 6, 4))

    def test_aNewConnectionIsSafeForItsGrace(self) -> None:
        """A scraper just accepted, its request on its way, is not evicted for the next one."""
        h, port, _ = bounded(maxConnections=2, waiting=1)
        port.turn()
        h.clock.advance(EVICT_GRACE / 2)
        port.waiting = 5
        port.turn()
        first = port.accepted[0][0]
        h.clock.advance(EVICT_GRACE / 2)
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual([t.aborted for _, t in port.accepted], [True, False])
        h.lose(first)
        port.turn()
        self.assertEqual([t.aborted for _, t in port.accepted], [True, False, False])
        self.assertFalse(port.reading)
        h.clock.advance(EVICT_GRACE / 2)
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual([t.aborted for _, t in port.accepted], [True, True, False])

    def test_anAnswerBeingRenderedIsNeverEvictedAndAnAnsweredOneAGraceAfter(self) -> None:
        """
        One answered keeps its slot a grace after its answer was written,
        for the scraper to read it, whether or not it reads.
        """
        h, port, _ = bounded(maxConnections=2, waiting=10, answer=None)
        port.turn()
        for proto, _ in port.accepted:
            proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        h.clock.advance(EVICT_GRACE * 10)
        self.assertFalse(port.reading)
        self.assertEqual(h.clock.getDelayedCalls()[0].getTime(), h.factory.answerTimeout)
        h.renders[0][1].callback(("text/plain", b"x"))
        h.clock.advance(EVICT_GRACE - DELIVERY_CHECK)
        self.assertFalse(port.reading)
        h.clock.advance(DELIVERY_CHECK)
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual([t.aborted for _, t in port.accepted], [True, False])
        self.assertEqual(h.factory.evicted, 1)

    def test_aSilentOneBehindAnswersIsEvictedAfterItsGrace(self) -> None:
        """
        The other slots are answering: the last connection in, silent, is the
        one to evict, and the port reads again once its grace is over (before,
        no timer was set for it, and it held the slot to its head deadline).
        """
        h, port, _ = bounded(maxConnections=2, waiting=1, answer=None)
        port.turn()
        port.accepted[0][0].dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")  # rendering
        port.waiting = 1
        port.turn()  # a silent one takes the last slot
        port.waiting = 1  # and a scraper waits
        h.clock.advance(EVICT_GRACE)
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual([t.aborted for _, t in port.accepted], [False, True])
        self.assertEqual(h.factory.evicted, 1)

    def test_aTimeoutAfterTheStopLeavesNoTimer(self) -> None:
        """A connection that times out after the port stopped: counted, no 60 s log timer."""
        h, port, _ = bounded(maxConnections=2, waiting=1)
        port.turn()
        h.factory.stopFactory()
        h.clock.advance(REQUEST_TIMEOUT)
        self.assertEqual(port.accepted[0][1].value()[:12], b"HTTP/1.1 408")
        self.assertEqual(h.clock.getDelayedCalls()[1:], [])  # the linger's at most
        self.assertTrue(all(c.getTime() <= REQUEST_TIMEOUT + 1 for c in h.clock.getDelayedCalls()))

    def test_noEvictionWhileNoneWaits(self) -> None:
        h, port, _ = bounded(maxConnections=2, waiting=2)
        port.turn()
        h.clock.advance(REQUEST_TIMEOUT - 0.01)
        port.turn()  # nothing waits: not read
        self.assertEqual([t.value() for _, t in port.accepted], [b"", b""])
        self.assertEqual(h.factory.evicted, 0)

    def test_evictionsAndTimeoutsAreLoggedOnceAMinuteWithTheCounts(self) -> None:
        h, port, logged = bounded(maxConnections=2, waiting=1000)
        port.turn()
        for _ in range(25):
            h.clock.advance(EVICT_GRACE)
            port.turn()
            for proto, transport in port.accepted:
                if transport.aborted and not proto.gone:
                    h.lose(proto)
            port.turn()
        self.assertEqual(h.factory.evicted, 50)
        self.assertEqual(len(logged), 1)  # the first, at once
        h.clock.advance(REQUEST_TIMEOUT)  # the last two time out
        h.clock.advance(DROP_LOG_INTERVAL)
        self.assertEqual(len(logged), 2)
        self.assertEqual(
            (logged[1]["count"], logged[1]["counts"]),
            (53, "49 evicted, 2 held after the answer, 2 timed out"),
        )
        self.assertEqual(h.factory.answers, {408: 2})


class DeliveredAnswerTests(SynchronousTestCase):
    """An answered connection whose client has all of its answer gives its slot to a waiting one."""

    def answeredAndHeld(self, left: list[int]) -> tuple[Harness, AcceptingPort]:
        """Two answered connections that never close, C{left[0]} bytes of each undelivered."""
        h, port, _ = bounded(maxConnections=2, waiting=3)
        port.turn()
        for proto, _ in port.accepted:
            proto.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
            proto.undelivered = lambda: left[0]  # type: ignore[method-assign]
        h.factory.stateChanged()
        return h, port

    def test_aDeliveredAnswerIsEvictedForAWaitingConnection(self) -> None:
        h, port = self.answeredAndHeld([0])
        self.assertTrue(port.reading)  # one waits, and they may be evicted
        port.turn()
        self.assertEqual(h.factory.evicted, 2)
        self.assertTrue(all(t.aborted for _, t in port.accepted))

    def test_anAnswerOnItsWayIsNotEvictedAndIsLookedAtAgain(self) -> None:
        left = [5000]
        h, port = self.answeredAndHeld(left)
        self.assertFalse(port.reading)
        self.assertEqual(h.factory.evicted, 0)
        left[0] = 0
        h.clock.advance(DELIVERY_CHECK)  # the acknowledgement came
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual(h.factory.evicted, 2)

    def assertEvictedAGraceAfterTheAnswer(self, reads: int | None) -> None:
        """
        Two answered connections that still have 50,000 bytes to read, and
        read C{reads} bytes more at every look (C{None}: cannot tell), are
        evicted a grace after their answers, not at the end of the linger
        (16 such clients a second kept a scrape waiting for seconds).
        """
        left: list[int | None] = [None if reads is None else 50_000]
        h, port = self.answeredAndHeld(left)  # type: ignore[arg-type]
        for _ in range(int(EVICT_GRACE / DELIVERY_CHECK)):  # to just before the grace
            h.clock.advance(DELIVERY_CHECK)
            self.assertFalse(port.reading)
            if reads is not None:
                left[0] -= reads  # type: ignore[operator]
        h.clock.advance(DELIVERY_CHECK)
        self.assertTrue(port.reading)
        port.turn()
        self.assertEqual(h.factory.evicted, 2)
        self.assertTrue(all(t.aborted for _, t in port.accepted))

    def test_anAnswerNobodyReadsIsEvictedAGraceAfterIt(self) -> None:
        """A client with a small receive window that reads none of it."""
        self.assertEvictedAGraceAfterTheAnswer(reads=0)

    def test_anAnswerReadAFewBytesAtATimeIsEvictedAGraceAfterIt(self) -> None:
        """A client that reads a little at a time kept its answer moving for the whole linger."""
        self.assertEvictedAGraceAfterTheAnswer(reads=10)

    def test_anAnswerWhoseDeliveryCannotBeToldIsEvictedAGraceAfterIt(self) -> None:
        self.assertEvictedAGraceAfterTheAnswer(reads=None)

    def test_unacknowledgedIsWhatTheClientsKernelDoesNotHaveYet(self) -> None:
        import socket

        from twisted.internet import tcp

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.addCleanup(listener.close)
        client = socket.socket()
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        client.connect(listener.getsockname())
        sock, _ = listener.accept()
        self.addCleanup(sock.close)
        # Small buffers both ways: a few hundred KiB of kernel buffers, read
        # through a 4 KiB window, took 98 s.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        server = tcp.Server.__new__(tcp.Server)
        server.socket, server.dataBuffer, server._tempDataLen = sock, b"", 0
        self.assertEqual(unacknowledged(server), 0)  # nothing written
        sock.setblocking(False)
        sent = 0
        try:
            while True:
                sent += sock.send(b"x" * 65536)
        except BlockingIOError:
            pass
        self.assertGreater(unacknowledged(server), 0)  # the client reads none of it
        while sent:
            sent -= len(client.recv(65536))
        deadline = time.monotonic() + 5
        while unacknowledged(server) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(unacknowledged(server), 0)
        server._tempDataLen = 7  # and what Twisted still holds counts
        self.assertEqual(unacknowledged(server), 7)
        self.assertIsNone(unacknowledged(object()))  # no socket to ask


class SilentSocketsOverTCPTests(TestCase):
    """Over real loopback sockets: clients that hold slots do not keep a scrape waiting."""

    def serve(self, body: bytes) -> tuple[MetricsHTTPFactory, tuple[str, int], list[Any]]:
        """A metrics port answering C{body}; the sockets to close when the test ends."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        factory = MetricsHTTPFactory(lambda accept: defer.succeed(("text/plain", body)), reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        factory.listening(port)
        sockets: list[Any] = []

        async def closeAll() -> None:
            for s in sockets:
                s.close()
            for _ in range(200):  # each server side ends once it sees the close
                if factory.open == 0:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            await port.stopListening()

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(closeAll()))
        return factory, ("127.0.0.1", port.getHost().port), sockets

    def scrape(self, address: tuple[str, int], timeout: float) -> defer.Deferred[bytes]:
        """The answer a scraper gets, or a timeout after C{timeout} seconds."""
        from twisted.internet import reactor
        from twisted.internet.protocol import ClientFactory

        received: defer.Deferred[bytes] = defer.Deferred()

        class Scraper(Protocol):
            data = b""

            def connectionMade(self) -> None:
                self.transport.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: object = None) -> None:
                received.callback(self.data)

        reactor.connectTCP(*address, ClientFactory.forProtocol(Scraper), timeout=5)
        return received.addTimeout(timeout, reactor)

    def test_aScrapeIsAnsweredBesideSilentSockets(self) -> defer.Deferred[None]:
        import socket

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        factory, address, silent = self.serve(b"metric 1\n")

        def connectSilent(count: int) -> None:
            for _ in range(count):
                s = socket.socket()
                silent.append(s)
                s.setblocking(False)
                s.connect_ex(address)

        async def scrape() -> bytes:
            connectSilent(40)
            for _ in range(100):  # until the port holds all it may
                if factory.open >= factory.maxConnections:
                    break
                await deferLater(reactor, 0.02, lambda: None)
            connectSilent(20)  # behind them in the listen queue
            await deferLater(reactor, 0.05, lambda: None)
            # Before: the scrape waited for the silent ones' request timeout.
            return await self.scrape(address, 3)

        def check(answer: bytes) -> None:
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
            self.assertLessEqual(factory.open, factory.maxConnections)
            self.assertGreater(factory.evicted, 0)

        return defer.Deferred.fromCoroutine(scrape()).addCallback(check)

    def test_aScrapeIsAnsweredBesideClientsThatNeverReadTheirAnswers(
        self,
    ) -> defer.Deferred[None]:
        """
        Each of them sends a request and reads nothing, with a small receive
        window: their answers stay in the server's send queues.  Before, each
        held its slot for the whole linger (1 s), three rounds of them
        before the scrape.
        """
        import socket

        factory, address, holders = self.serve(b"x" * 200_000)
        for _ in range(3 * factory.maxConnections):
            s = socket.socket()
            holders.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.connect(address)  # loopback: connected at once, in the listen queue
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")

        def check(answer: bytes) -> None:
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:100])
            self.assertTrue(answer.endswith(b"x" * 200_000))
            self.assertGreaterEqual(factory.evicted, 2 * factory.maxConnections)

        return self.scrape(address, 2.5).addCallback(check)
