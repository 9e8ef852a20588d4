"""TimerWheel: the contract, plus granularity, long timeouts and its one call."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.contract import QueueContractMixin
from timerserver import TimerQueueCounters, TimerWheel
from timerserver.wheel import WheelTimerHandle


class TimerWheelContractTests(QueueContractMixin, SynchronousTestCase):
    tolerance = 0.01

    def makeQueue(self, clock: Clock, **kwargs: Any) -> TimerWheel:
        return TimerWheel(clock, **kwargs)


class SmallWheelContractTests(QueueContractMixin, SynchronousTestCase):
    """A tiny wheel, so that most timers go round it or wait in overflow."""

    tolerance = 0.05

    def makeQueue(self, clock: Clock, **kwargs: Any) -> TimerWheel:
        return TimerWheel(clock, granularity=0.05, slots=8, upperSlots=4, **kwargs)


class KeepCallWheelContractTests(QueueContractMixin, SynchronousTestCase):
    """A wheel that keeps its reactor call when it empties, as the server's does."""

    tolerance = 0.01

    def makeQueue(self, clock: Clock, **kwargs: Any) -> TimerWheel:
        return TimerWheel(clock, keepCall=True, **kwargs)

    def test_noReactorCallsWhenIdle(self) -> None:
        """Its call lapses at its time, once, and is not made again."""
        h = self.queue.createTimer()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.queue.setTimer(h, self.timer, 1)
        self.queue.cancelTimer(h)
        [call] = self.clock.getDelayedCalls()
        self.clock.advance(call.getTime() - self.clock.seconds())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TimerWheelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(500)
        self.fired: list[tuple[float, object]] = []

    def record(self, userData: object) -> None:
        self.fired.append((self.clock.seconds(), userData))

    def test_handleClass(self) -> None:
        """Its handles are WheelTimerHandles, importable from this module as before."""
        self.assertIs(type(TimerWheel(self.clock).createTimer()), WheelTimerHandle)

    def test_badConstruction(self) -> None:
        for kwargs in (
            {"granularity": 0},
            {"granularity": -0.01},
            {"granularity": float("nan")},
            {"granularity": float("inf")},
            {"slots": 0},
            {"slots": 1000},
            {"upperSlots": 1},
            {"upperSlots": 3},
            {"maximumTimeout": 0},
            {"maximumTimeout": float("inf")},
            {"granularity": 1e-9, "maximumTimeout": 1e9},
            {"granularity": 10**400},  # too large for a float: not an OverflowError
            {"maximumTimeout": 10**400},
        ):
            self.assertRaises(ValueError, TimerWheel, self.clock, **kwargs)
        for kwargs in ({"granularity": "0.1"}, {"slots": 8.0}, {"maximumTimeout": None}):
            self.assertRaises(TypeError, TimerWheel, self.clock, **kwargs)

    def test_firesWithinOneGranularity(self) -> None:
        wheel = TimerWheel(self.clock, granularity=0.1)
        for i in range(1, 40):
            wheel.setTimer(wheel.createTimer(), self.record, i * 0.037, 500 + i * 0.037)
        while self.clock.getDelayedCalls():
            # Jump straight to each wake-up, as an idle reactor would.
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.assertEqual(len(self.fired), 39)
        for firedAt, deadline in self.fired:
            self.assertGreaterEqual(firedAt, deadline)  # type: ignore[operator]
            self.assertLess(firedAt - deadline, 0.1 + 1e-9)  # type: ignore[operator]

    def test_atMostOneDelayedCall(self) -> None:
        wheel = TimerWheel(self.clock, slots=16)
        for i in range(200):
            wheel.setTimer(wheel.createTimer(), self.record, (i * 7919 % 1000) / 10)
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        wheel.setOneShotTimer(self.record, 0.5)
        for _ in range(12000):
            self.clock.advance(0.01)
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.fired), 201)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_emptyWheelSchedulesNothing(self) -> None:
        wheel = TimerWheel(self.clock)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        handles = [wheel.createTimer() for _ in range(3)]
        for h in handles:
            wheel.setTimer(h, self.record, 1)
        wheel.cancelTimer(handles[0])
        wheel.destroyTimer(handles[1])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        wheel.cancelTimer(handles[2])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keptCallServesTheNextTimer(self) -> None:
        """
        With keepCall, an emptied wheel keeps its call; a later timer waits
        for it (no new call), a sooner one moves it; each fires on time.
        """
        wheel = TimerWheel(self.clock, keepCall=True)
        h = wheel.createTimer()
        wheel.setTimer(h, self.record, 1, "cancelled")
        [kept] = self.clock.getDelayedCalls()
        wheel.cancelTimer(h)
        self.assertEqual(self.clock.getDelayedCalls(), [kept])
        wheel.setTimer(h, self.record, 2, "later")
        self.assertEqual(self.clock.getDelayedCalls(), [kept])
        self.clock.advance(kept.getTime() - self.clock.seconds())
        self.assertEqual(self.fired, [])
        [call] = self.clock.getDelayedCalls()
        self.clock.advance(call.getTime() - self.clock.seconds())
        self.assertEqual(self.fired, [(502.0, "later")])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # it fired: nothing to keep

        wheel.setTimer(h, self.record, 2, "cancelled")
        wheel.cancelTimer(h)
        wheel.setTimer(h, self.record, 0.5, "sooner")
        [call] = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime(), 502.5)
        self.clock.advance(0.5)
        self.assertEqual(self.fired[1:], [(502.5, "sooner")])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the moved call was cancelled

    def test_shutdownCancelsTheKeptCall(self) -> None:
        wheel = TimerWheel(self.clock, keepCall=True)
        h = wheel.createTimer()
        wheel.setTimer(h, self.record, 1)
        wheel.destroyTimer(h)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(wheel.shutdown(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wakesOnlyForTicksWithTimers(self) -> None:
        """A sparse wheel sleeps until its next timer or cascade, not tick by tick."""
        wheel = TimerWheel(self.clock)  # level 0 turns every 10.24 s
        wheel.setTimer(wheel.createTimer(), self.record, 3, "3")
        wheel.setTimer(wheel.createTimer(), self.record, 30, "30")
        [call] = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime(), 503)
        wakes = 0
        while self.clock.getDelayedCalls():
            [call] = self.clock.getDelayedCalls()
            self.clock.advance(call.getTime() - self.clock.seconds())
            wakes += 1
        self.assertEqual([u for _, u in self.fired], ["3", "30"])
        self.assertAlmostEqual(self.fired[1][0], 530)
        self.assertLessEqual(wakes, 5)

    def test_soonerTimerMovesTheWakeUp(self) -> None:
        wheel = TimerWheel(self.clock)
        wheel.setTimer(wheel.createTimer(), self.record, 10, "late")
        wheel.setTimer(wheel.createTimer(), self.record, 1, "early")
        [call] = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime(), 501)

    def test_longTimeoutsBeyondARevolution(self) -> None:
        """Timeouts of many revolutions wait in overflow and fire on time."""
        wheel = TimerWheel(self.clock, granularity=0.5, slots=4, upperSlots=2)
        timeouts = [0.5, 1.9, 2.1, 7.3, 100.0, 1000.25]
        for t in timeouts:
            wheel.setTimer(wheel.createTimer(), self.record, t, 500 + t)
        cancelled = wheel.createTimer()
        wheel.setTimer(cancelled, self.record, 50, "cancelled")
        wheel.cancelTimer(cancelled)
        for _ in range(3000):
            self.clock.advance(0.5)
        self.assertEqual([u for _, u in self.fired], [500 + t for t in timeouts])
        for firedAt, deadline in self.fired:
            self.assertGreaterEqual(firedAt, deadline)  # type: ignore[operator]
            self.assertLessEqual(firedAt - deadline, 0.5)  # type: ignore[operator]

    def test_stalledReactorCatchesUpInOrder(self) -> None:
        wheel = TimerWheel(self.clock, granularity=0.01, slots=16)
        for i in range(50):
            wheel.setTimer(wheel.createTimer(), self.record, 50 - i, 50 - i)
        self.clock.advance(100)  # one turn after a long stall
        self.assertEqual([u for _, u in self.fired], list(range(1, 51)))

    def test_overflowCompaction(self) -> None:
        """Re-arming long timers over and over does not grow the overflow."""
        counters = TimerQueueCounters()
        wheel = TimerWheel(self.clock, slots=8, upperSlots=2, monitor=counters)
        h = wheel.createTimer()
        for i in range(10000):
            wheel.setTimer(h, self.record, 60 + i / 1000)
        self.assertLess(len(wheel._overflow), 200)
        self.clock.advance(100)
        self.assertEqual(len(self.fired), 1)
        self.assertEqual(counters.pending, 0)

    def test_aDeadlineOnATickFiresAtThatTick(self) -> None:
        """
        Timeouts of whole ticks (0.07 s: 0.07 / 0.01 is 7.000000000000001;
        0.35 s: 35 * 0.01 is 0.35000000000000003) fire when the clock reads
        the deadline, from level 0, level 1 (past 10.24 s) and another epoch.
        """
        for start in (0.0, 1000.0):
            missed = []
            for k in range(1, 2001):
                timeout = round(k * 0.01, 2)
                clock, fired = Clock(), []
                clock.advance(start)
                wheel = TimerWheel(clock)
                wheel.setTimer(wheel.createTimer(), fired.append, timeout, k)
                clock.advance(timeout)
                if fired != [k]:
                    missed.append(timeout)
            self.assertEqual(missed, [], start)

    def test_theWakeForATickIsAtItsTime(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock)
        wheel.setTimer(wheel.createTimer(), self.record, 0.35, "on the tick")
        [call] = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 0.35)

    def test_aDeadlineAHairPastATickIsNeverEarly(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock)
        fired: list[float] = []
        for timeout in (0.07, 0.35, 1.0):
            after = math.nextafter(timeout, math.inf)
            wheel.setTimer(wheel.createTimer(), lambda _: fired.append(clock.seconds()), after)
        while clock.getDelayedCalls():
            clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        self.assertEqual(fired, [0.08, 0.36, 1.01])

    def test_idleWheelSkipsAhead(self) -> None:
        """After a long idle time, a new timer goes straight into its slot."""
        wheel = TimerWheel(self.clock, slots=16)
        self.clock.advance(10000)
        wheel.setTimer(wheel.createTimer(), self.record, 0.05, "soon")
        self.clock.advance(0.06)
        self.assertEqual([u for _, u in self.fired], ["soon"])


class RealReactorTests(TestCase):
    @defer.inlineCallbacks
    def test_firesAndShutsDownClean(self) -> Any:
        wheel = TimerWheel(reactor)  # type: ignore[arg-type]
        fired: list[object] = []
        wheel.setTimer(wheel.createTimer(), fired.append, 0.01, "real")
        wheel.setTimer(wheel.createTimer(), fired.append, 30)
        wheel.setOneShotTimer(fired.append, 3000)
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(fired, ["real"])
        self.assertEqual(wheel.shutdown(), 2)
