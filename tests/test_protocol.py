"""TimerServerProtocol and TimerServerFactory, over StringTransport and Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests import helpers
from timerserver import ReactorTimerQueue, TimerQueueCounters, TimerWheel
from timerserver.config import DEFAULT_MESSAGE, DEFAULT_WELCOME
from timerserver.factory import TimerServerFactory
from timerserver.protocol import TimerServerProtocol

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class ProtocolTestsMixin:
    """Run against each queue; C{makeQueue} and C{tolerance} come from the case."""

    tolerance = 0.0

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.counters = TimerQueueCounters()
        self.queue = self.makeQueue(self.clock, self.counters)
        self.factory = TimerServerFactory(self.queue, interval=2.0, reactor=self.clock)

    def connect(self, factory: TimerServerFactory | None = None) -> tuple[Any, StringTransport]:
        return helpers.connect(factory or self.factory)

    def lose(self, proto: Any) -> None:
        helpers.lose(proto)

    def elapse(self: Any, seconds: float, step: float = 0.01) -> None:
        helpers.elapse(self.clock, seconds, step)

    def test_welcome(self: Any) -> None:
        _, transport = self.connect()
        self.assertEqual(transport.value(), DEFAULT_WELCOME)

    def test_noWelcome(self: Any) -> None:
        factory = TimerServerFactory(self.queue, welcome=None, reactor=self.clock)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"")
        factory = TimerServerFactory(self.queue, welcome=b"", reactor=self.clock)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"")

    def test_echoIsByteExact(self: Any) -> None:
        proto, transport = self.connect()
        transport.clear()
        data = bytes(range(256)) + b"\xff\xfe\x00invalid \xc3\x28 utf-8\r\n"
        proto.dataReceived(data)
        proto.dataReceived(b"")
        proto.dataReceived(b"{name} %s")
        self.assertEqual(transport.value(), data + b"{name} %s")

    def test_periodicMessages(self: Any) -> None:
        """One message per interval, on schedule, and no drift over many."""
        _, transport = self.connect()
        transport.clear()
        arrivals: list[float] = []
        original = transport.write

        def write(data: bytes) -> None:
            arrivals.append(self.clock.seconds())
            original(data)

        transport.write = write  # type: ignore[method-assign]
        self.elapse(1.99)
        self.assertEqual(transport.value(), b"")
        self.elapse(19.9)
        self.assertEqual(transport.value(), DEFAULT_MESSAGE * 10)
        for k, at in enumerate(arrivals, 1):
            self.assertGreaterEqual(at, 100 + 2 * k - 1e-9)
            self.assertLessEqual(at, 100 + 2 * k + self.tolerance + 0.01 + 1e-9)

    def test_skipsMissedMessagesAfterAStall(self: Any) -> None:
        factory = TimerServerFactory(self.queue, welcome=None, reactor=self.clock)
        _, transport = self.connect(factory)
        self.clock.advance(9)  # the reactor stalled for four intervals
        self.clock.advance(0.05)
        self.assertEqual(transport.value(), DEFAULT_MESSAGE)
        self.assertEqual(factory.skippedMessages, 3)  # due at 102, 104, 106; 108 was sent
        self.elapse(0.9)
        self.assertEqual(transport.value(), DEFAULT_MESSAGE)  # next due at 110, not now
        self.elapse(1.1)
        self.assertEqual(transport.value(), DEFAULT_MESSAGE * 2)

    def test_lateByLessThanTwoIntervalsSkipsNothing(self: Any) -> None:
        factory = TimerServerFactory(self.queue, welcome=None, reactor=self.clock)
        _, transport = self.connect(factory)
        self.clock.advance(5.0)  # the message due at 102 goes out at 105,
        self.clock.advance(0.05)  # and the one due at 104 right after it
        self.assertEqual(transport.value(), DEFAULT_MESSAGE * 2)
        self.assertEqual(factory.skippedMessages, 0)
        self.elapse(0.9)  # then back on schedule: the next is due at 106
        self.assertEqual(transport.value(), DEFAULT_MESSAGE * 2)
        self.elapse(0.1)
        self.assertEqual(transport.value(), DEFAULT_MESSAGE * 3)

    def test_customMessageAndInterval(self: Any) -> None:
        factory = TimerServerFactory(
            self.queue, welcome=b"hi\n", message=b"tick\n", interval=0.5, reactor=self.clock
        )
        _, transport = self.connect(factory)
        self.elapse(1.6)
        self.assertEqual(transport.value(), b"hi\ntick\ntick\ntick\n")

    def test_halfClose(self: Any) -> None:
        """The client's half-close stops the messages and closes after the echo."""
        proto, transport = self.connect()
        self.assertTrue(IHalfCloseableProtocol.providedBy(proto))
        proto.dataReceived(b"last words")
        proto.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)  # else the close would wait for it
        self.assertEqual(transport.value(), DEFAULT_WELCOME + b"last words")
        self.elapse(5)
        self.assertEqual(transport.value(), DEFAULT_WELCOME + b"last words")
        self.assertEqual(self.counters.pending, 1)  # only the close watchdog
        self.lose(proto)
        self.assertEqual((self.counters.pending, self.counters.live), (0, 0))

    def test_halfCloseThatNeverFlushesIsAborted(self: Any) -> None:
        proto, transport = self.connect()
        proto.readConnectionLost()
        self.elapse(29.9, step=0.1)
        self.assertFalse(transport.disconnected)
        self.elapse(0.2)
        self.assertTrue(transport.disconnected)

    def test_connectionLostBetweenTicks(self: Any) -> None:
        proto, transport = self.connect()
        self.elapse(3)
        self.lose(proto)
        written = transport.value()
        self.elapse(10)
        self.assertEqual(transport.value(), written)
        self.assertEqual((self.counters.pending, self.counters.live), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_thousandConnectionsLeaveNoTimers(self: Any) -> None:
        protos = [self.connect()[0] for _ in range(1000)]
        # One handle each: the periodic timer.  The watchdog is made the first
        # time a timeout is armed (idle, stall, close): none is here.
        self.assertEqual((self.counters.pending, self.counters.live), (1000, 1000))
        self.elapse(2.5, step=0.05)
        self.assertEqual(self.counters.fired, 1000)
        for i, proto in enumerate(protos):
            if i % 2:
                proto.readConnectionLost()  # a close to watch: these get a watchdog
            self.lose(proto)
        self.assertEqual((self.counters.pending, self.counters.live), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReactorQueueProtocolTests(ProtocolTestsMixin, SynchronousTestCase):
    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return ReactorTimerQueue(clock, monitor=monitor)


class WheelProtocolTests(ProtocolTestsMixin, SynchronousTestCase):
    tolerance = 0.01

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return TimerWheel(clock, monitor=monitor)


class FactoryTests(SynchronousTestCase):
    def test_badArguments(self) -> None:
        queue = TimerWheel(Clock())
        clock = Clock()
        for kwargs in (
            {"interval": 0},
            {"interval": -1},
            {"interval": float("nan")},
            {"interval": float("inf")},
            {"interval": 1e10},
        ):
            self.assertRaises(ValueError, TimerServerFactory, queue, reactor=clock, **kwargs)
        for kwargs in (
            {"interval": "2"},
            {"interval": True},
            {"welcome": "text"},
            {"message": "text"},
            {"message": None},
        ):
            self.assertRaises(TypeError, TimerServerFactory, queue, reactor=clock, **kwargs)
        self.assertRaises(TypeError, TimerServerFactory, object(), reactor=clock)

    def test_builds(self) -> None:
        factory = TimerServerFactory(TimerWheel(Clock()))
        self.assertIsInstance(factory.buildProtocol(PEER), TimerServerProtocol)
        self.assertEqual(factory.interval, 2.0)
