"""
L{timerserver.policies.TimeoutMixin}: Twisted's own C{TimeoutMixinTests}
(twisted/test/test_policies.py), written again for this mixin and run
against both queues, and what the queue adds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from timerserver import ReactorTimerQueue, TimerQueueCounters, TimerWheel
from timerserver.policies import TimeoutMixin, sharedTimerQueue


class TimeoutTester(protocol.Protocol, TimeoutMixin):
    """Twisted's TimeoutTester, with a timer queue instead of callLater."""

    timeOut = 3
    timedOut = False

    def __init__(self, queue: Any) -> None:
        self.timerQueue = queue

    def connectionMade(self) -> None:
        self.setTimeout(self.timeOut)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        protocol.Protocol.dataReceived(self, data)

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self.timedOut = True


class TimeoutMixinTestsMixin:
    """Twisted's TimeoutMixinTests; C{makeQueue(clock, monitor)} picks the queue."""

    makeQueue: Any

    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = TimerQueueCounters()
        self.queue = self.makeQueue(self.clock, monitor=self.counters)
        self.proto = TimeoutTester(self.queue)

    def test_overriddenQueue(self) -> None:
        """The queue in C{timerQueue} is used, not the global reactor."""
        self.proto.setTimeout(10)
        self.assertEqual(self.counters.pending, 1)
        self.assertEqual(len(self.clock.calls), 1)  # type: ignore[attr-defined]

    def test_timeout(self) -> None:
        self.proto.makeConnection(StringTransport())
        self.clock.pump([0, 0.5, 1.0, 1.0])
        self.assertFalse(self.proto.timedOut)
        self.clock.pump([0, 1.0])
        self.assertTrue(self.proto.timedOut)

    def test_noTimeout(self) -> None:
        self.proto.makeConnection(StringTransport())
        self.clock.pump([0, 0.5, 1.0, 1.0])
        self.assertFalse(self.proto.timedOut)
        self.proto.dataReceived(b"hello there")
        self.clock.pump([0, 1.0, 1.0, 0.5])
        self.assertFalse(self.proto.timedOut)
        self.clock.pump([0, 1.0])
        self.assertTrue(self.proto.timedOut)

    def test_resetTimeout(self) -> None:
        self.proto.timeOut = None
        self.proto.makeConnection(StringTransport())
        self.proto.setTimeout(1)
        self.assertEqual(self.proto.timeOut, 1)
        self.clock.pump([0, 0.9])
        self.assertFalse(self.proto.timedOut)
        self.clock.pump([0, 0.2])
        self.assertTrue(self.proto.timedOut)

    def test_cancelTimeout(self) -> None:
        self.proto.timeOut = 5
        self.proto.makeConnection(StringTransport())
        self.proto.setTimeout(None)
        self.assertIsNone(self.proto.timeOut)
        self.clock.pump([0, 5, 5, 5])
        self.assertFalse(self.proto.timedOut)

    def test_setTimeoutReturn(self) -> None:
        self.proto.timeOut = 5
        self.assertEqual(self.proto.setTimeout(10), 5)
        self.assertEqual(self.proto.setTimeout(None), 10)
        self.assertIsNone(self.proto.setTimeout(1))
        self.assertEqual(self.proto.timeOut, 1)
        self.proto.setTimeout(None)

    def test_setTimeoutCancelAlreadyCancelled(self) -> None:
        """Cancelled from elsewhere (the queue shut down): setTimeout(None) still cleans up."""
        self.proto.setTimeout(3)
        self.assertEqual(self.queue.shutdown(), 1)
        self.assertIsNotNone(self.proto.timeOut)
        self.proto.setTimeout(None)
        self.assertIsNone(self.proto.timeOut)
        self.assertEqual(self.counters.live, 0)

    # What the queue adds.

    def test_nothingLeftBehind(self) -> None:
        """No handle and no reactor call once a timeout is cancelled or has fired."""
        self.proto.makeConnection(StringTransport())
        self.proto.dataReceived(b"x")
        self.proto.connectionLost()
        self.assertEqual((self.counters.live, self.counters.pending), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        other = TimeoutTester(self.queue)
        other.makeConnection(StringTransport())
        self.clock.advance(3.1)
        self.assertTrue(other.timedOut)
        self.assertEqual((self.counters.live, self.counters.pending), (0, 0))
        other.resetTimeout()  # after expiry: nothing to reset, as in Twisted
        other.connectionLost()
        self.assertEqual((self.counters.live, self.clock.getDelayedCalls()), (0, []))

    def test_resetGoesThroughOneHandle(self) -> None:
        self.proto.makeConnection(StringTransport())
        for _ in range(100):
            self.proto.dataReceived(b"x")
        self.assertEqual((self.counters.created, self.counters.pending), (1, 1))
        self.proto.connectionLost()

    def test_defaultTimeoutConnectionLosesTheConnection(self) -> None:
        class Plain(protocol.Protocol, TimeoutMixin):
            timerQueue = self.queue  # per class

        proto = Plain()
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.setTimeout(2)
        self.clock.advance(2.1)
        self.assertTrue(transport.disconnecting)

    def test_subclassNamesAreItsOwn(self) -> None:
        """
        A protocol's own C{_timedOut} (any name but the mixin's public ones)
        neither replaces the mixin's expiry nor is called by it: the mixin's
        private method is name-mangled, as Twisted's is.
        """
        own: list[str] = []

        class WithOwnNames(TimeoutTester):
            def _timedOut(self) -> None:
                own.append("_timedOut")

            def _handle(self) -> None:
                own.append("_handle")

        proto = WithOwnNames(self.queue)
        proto.makeConnection(StringTransport())
        self.clock.advance(3)
        self.assertTrue(proto.timedOut)
        self.assertEqual(own, [])
        self.assertEqual((self.counters.live, self.counters.pending), (0, 0))

    def test_badPeriodLeavesNothing(self) -> None:
        for bad in (-1, float("nan")):
            self.assertRaises(ValueError, self.proto.setTimeout, bad)
        self.assertRaises(TypeError, self.proto.setTimeout, "3")
        self.assertEqual(self.counters.live, 0)


class WheelTimeoutMixinTests(TimeoutMixinTestsMixin, SynchronousTestCase):
    makeQueue = TimerWheel


class ReactorQueueTimeoutMixinTests(TimeoutMixinTestsMixin, SynchronousTestCase):
    makeQueue = ReactorTimerQueue


class TwistedsTimeoutMixinTests(SynchronousTestCase):
    """What the test of a subclass's C{_timedOut} above asks of ours, Twisted's does."""

    def test_subclassTimedOutLeftAlone(self) -> None:
        from twisted.protocols.policies import TimeoutMixin as TwistedTimeoutMixin

        clock = Clock()
        own: list[str] = []

        class Twisteds(protocol.Protocol, TwistedTimeoutMixin):
            timedOut = False
            callLater = clock.callLater

            def _timedOut(self) -> None:
                own.append("_timedOut")

            def timeoutConnection(self) -> None:
                self.timedOut = True

        proto = Twisteds()
        proto.setTimeout(3)
        clock.advance(3)
        self.assertEqual((proto.timedOut, own), (True, []))


class SharedQueueTests(SynchronousTestCase):
    def test_unsetMeansTheSharedWheelOnTheGlobalReactor(self) -> None:
        from twisted.internet import reactor

        proto = TimeoutTester(None)
        proto.setTimeout(30)
        queue = sharedTimerQueue()
        self.assertIsInstance(queue, TimerWheel)
        self.assertIs(queue.clock, reactor)
        self.assertIs(sharedTimerQueue(), queue)
        self.assertIn("pending=1", repr(queue))
        proto.setTimeout(None)
        self.assertIn("pending=0", repr(queue))
