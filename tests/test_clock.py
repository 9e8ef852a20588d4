"""
Wall-clock steps under a real C{ReactorBase} (its own DelayedCall heap and
C{runUntilCurrent}), whose wall clock a test steps by an hour either way
while a fake monotonic clock keeps real elapsed time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.base import ReactorBase
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests import helpers
from timerserver import ReactorTimerQueue, TimerQueueCounters, TimerWheel, useMonotonicTime
from timerserver.clock import isMonotonic
from timerserver.config import DEFAULT_MESSAGE
from timerserver.eventlog import EventLog
from timerserver.factory import TimerServerFactory
from timerserver.tap import Options, makeService

HOUR = 3600.0


class SteppedReactor(ReactorBase):
    """A reactor whose wall clock (C{wall}) a test sets; C{mono} only moves forward."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1_000.0
        ReactorBase.__init__(self)
        self.seconds = lambda: self.wall  # type: ignore[method-assign]
        self.listening: list[Any] = []

    def installWaker(self) -> None:
        pass

    def doIteration(self, delay: float | None) -> None:
        pass

    def monotonic(self) -> float:
        return self.mono

    def step(self, seconds: float) -> None:
        """Step the wall clock only, as NTP or a resumed VM does."""
        self.wall += seconds

    def elapse(self, seconds: float, step: float = 0.01) -> None:
        """Let real time pass, running due calls as the reactor loop would."""
        for _ in range(round(seconds / step)):
            self.wall += step
            self.mono += step
            self.runUntilCurrent()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self.listening.append(factory)
        return _Port()


class _Port:
    def getHost(self) -> str:
        return "stepped"

    def stopListening(self) -> None:
        pass


def monotonicReactor() -> SteppedReactor:
    reactor = SteppedReactor()
    assert useMonotonicTime(reactor, monotonic=reactor.monotonic)
    return reactor


class TheDefectTests(SynchronousTestCase):
    """Without the switch, a step moves every reactor call: what we fix."""

    def test_stepForwardFiresEverythingAtOnce(self) -> None:
        reactor = SteppedReactor()
        fired: list[float] = []
        reactor.callLater(10, lambda: fired.append(reactor.mono))
        reactor.step(HOUR)
        reactor.elapse(0.02)
        self.assertEqual(len(fired), 1)

    def test_stepBackHoldsEverythingBack(self) -> None:
        reactor = SteppedReactor()
        fired: list[float] = []
        reactor.callLater(1, lambda: fired.append(reactor.mono))
        reactor.step(-HOUR)
        reactor.elapse(5, step=0.1)
        self.assertEqual(fired, [])


class UseMonotonicTimeTests(SynchronousTestCase):
    def test_callsKeepTheirScheduleAcrossSteps(self) -> None:
        for step in (HOUR, -HOUR):
            reactor = SteppedReactor()
            fired: list[str] = []
            reactor.callLater(2, fired.append, "before the switch")
            useMonotonicTime(reactor, monotonic=reactor.monotonic)
            reactor.callLater(2, fired.append, "after the switch")
            reactor.elapse(1)
            reactor.step(step)
            reactor.elapse(0.95)
            self.assertEqual(fired, [])
            reactor.elapse(0.1)
            self.assertEqual(sorted(fired), ["after the switch", "before the switch"])

    def test_secondsStillReadsAsTheEpoch(self) -> None:
        reactor = SteppedReactor()
        wall = reactor.seconds()
        useMonotonicTime(reactor, monotonic=reactor.monotonic)
        self.assertAlmostEqual(reactor.seconds(), wall)
        reactor.step(HOUR)
        reactor.elapse(1)
        self.assertAlmostEqual(reactor.seconds(), wall + 1, places=6)

    def test_idempotent(self) -> None:
        reactor = monotonicReactor()
        seconds = reactor.seconds
        self.assertTrue(useMonotonicTime(reactor, monotonic=reactor.monotonic))
        self.assertIs(reactor.seconds, seconds)
        self.assertTrue(isMonotonic(reactor))

    def test_testClocksAreLeftAlone(self) -> None:
        clock = Clock()
        self.assertFalse(useMonotonicTime(clock))
        self.assertFalse(isMonotonic(clock))
        clock.advance(5)
        self.assertEqual(clock.seconds(), 5)

    def test_theGlobalReactorByDefault(self) -> None:
        from twisted.internet import reactor

        self.assertTrue(useMonotonicTime())
        self.assertTrue(isMonotonic(reactor))


class QueueStepTests(SynchronousTestCase):
    def check(self, makeQueue: Any, step: float) -> None:
        reactor = monotonicReactor()
        queue = makeQueue(reactor)
        fired: list[float] = []
        handle = queue.createTimer()
        queue.setTimer(handle, lambda _: fired.append(reactor.mono), 5.0)
        queue.setOneShotTimer(lambda _: fired.append(reactor.mono), 3.0)
        start = reactor.mono
        reactor.elapse(1)
        reactor.step(step)
        reactor.elapse(1.9)
        self.assertEqual(fired, [])
        reactor.elapse(0.2)
        self.assertEqual(len(fired), 1)
        reactor.step(-step)
        reactor.elapse(1.8)
        self.assertEqual(len(fired), 1)
        reactor.elapse(0.3)
        self.assertEqual(len(fired), 2)
        self.assertGreaterEqual(fired[0] - start, 3.0 - 1e-6)
        self.assertGreaterEqual(fired[1] - start, 5.0 - 1e-6)
        queue.shutdown()

    def test_wheel(self) -> None:
        for step in (HOUR, -HOUR):
            self.check(TimerWheel, step)

    def test_reactorQueue(self) -> None:
        for step in (HOUR, -HOUR):
            self.check(ReactorTimerQueue, step)

    def test_switchAfterTheQueueWasMade(self) -> None:
        """The queue reads its clock on every call, so a later switch still holds."""
        reactor = SteppedReactor()
        queue = TimerWheel(reactor)
        useMonotonicTime(reactor, monotonic=reactor.monotonic)
        fired: list[object] = []
        queue.setOneShotTimer(fired.append, 2.0, "x")
        reactor.step(HOUR)
        reactor.elapse(1.9)
        self.assertEqual(fired, [])
        reactor.elapse(0.2)
        self.assertEqual(fired, ["x"])


class ServerStepTests(SynchronousTestCase):
    def connect(self, factory: TimerServerFactory) -> tuple[Any, StringTransport]:
        return helpers.connect(factory)

    def test_periodicAndIdleKeepTheirScheduleAcrossSteps(self) -> None:
        for makeQueue in (TimerWheel, ReactorTimerQueue):
            for step in (HOUR, -HOUR):
                reactor = monotonicReactor()
                counters = TimerQueueCounters()
                factory = TimerServerFactory(
                    makeQueue(reactor, monitor=counters),
                    welcome=None,
                    interval=0.5,
                    idleTimeout=3.0,
                )
                proto, transport = self.connect(factory)
                reactor.elapse(1.2)
                reactor.step(step)
                reactor.elapse(1.5)  # 2.7 s in, 0 s since the last read: not idle yet
                self.assertEqual(transport.value(), DEFAULT_MESSAGE * 5)
                self.assertFalse(transport.disconnecting)
                self.assertEqual(factory.skippedMessages, 0)
                proto.dataReceived(b"x")
                reactor.step(-step)
                reactor.elapse(2.9)
                self.assertFalse(transport.disconnecting)
                reactor.elapse(0.2)
                self.assertTrue(transport.value().endswith(b"Idle timeout\r\n"))
                self.assertEqual(factory.skippedMessages, 0)
                proto.connectionLost(None)
                self.assertEqual((counters.pending, counters.live), (0, 0))

    def test_shutdownTimeoutAcrossASteps(self) -> None:
        reactor = monotonicReactor()
        factory = TimerServerFactory(TimerWheel(reactor), welcome=None)
        proto, transport = self.connect(factory)
        d = factory.closeAll(5.0)
        reactor.step(HOUR)
        reactor.elapse(4.9)
        self.assertFalse(transport.disconnected)
        self.assertNoResult(d)
        reactor.elapse(0.2)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(None)
        self.successResultOf(d)

    def test_eventLogWindowAcrossSteps(self) -> None:
        reactor = monotonicReactor()
        log = EventLog(reactor, Logger(), interval=10.0, burst=1)
        log.event("refused", "peer")
        log.event("refused", "peer")
        reactor.step(HOUR)
        reactor.elapse(9.9, step=0.1)
        self.assertEqual(sum(log._suppressed.values()), 1)
        reactor.elapse(0.2)
        self.assertEqual(sum(log._suppressed.values()), 0)

    def test_makeServiceSwitchesTheReactor(self) -> None:
        reactor = SteppedReactor()
        options = Options(reactor=reactor)
        options.parseOptions(["-p", "tcp:5059:interface=127.0.0.1"])
        makeService(options)
        self.assertTrue(isMonotonic(reactor))

    def test_theServiceKeepsItsScheduleAcrossSteps(self) -> None:
        reactor = monotonicReactor()
        options = Options(reactor=reactor)
        options.parseOptions(["-p", "tcp:5059:interface=127.0.0.1", "-i", "1"])
        service = makeService(options)
        service.privilegedStartService()
        [factory] = reactor.listening
        proto, transport = self.connect(factory)
        reactor.step(HOUR)
        reactor.elapse(0.9)
        self.assertNotIn(DEFAULT_MESSAGE, transport.value())
        reactor.elapse(0.2)
        self.assertTrue(transport.value().endswith(DEFAULT_MESSAGE))
        proto.connectionLost(None)
        self.successResultOf(service.stopService())


class OneTimeSourceTests(SynchronousTestCase):
    def test_factoryReadsTheQueuesClock(self) -> None:
        clock = Clock()
        factory = TimerServerFactory(TimerWheel(clock))
        self.assertIs(factory.clock, clock)

    def test_anotherClockIsRefused(self) -> None:
        self.assertRaises(ValueError, TimerServerFactory, TimerWheel(Clock()), reactor=Clock())
