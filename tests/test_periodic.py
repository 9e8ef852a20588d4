"""L{Periodic}: a drift-free periodic call on one queue handle."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests import helpers
from timerserver import ReactorTimerQueue, ThreadSafeTimerQueue, TimerQueueCounters, TimerWheel
from timerserver.periodic import Periodic


class PeriodicTestsMixin:
    makeQueue: Any

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.counters = TimerQueueCounters()
        self.queue = self.makeQueue(self.clock, monitor=self.counters)
        self.calls: list[tuple[float, float, int]] = []
        self.periodic = Periodic(self.queue, 1.0, self.record)

    def record(self, late: float, skipped: int) -> None:
        self.calls.append((self.clock.seconds(), late, skipped))

    def elapse(self, seconds: float, step: float = 0.01) -> None:
        helpers.elapse(self.clock, seconds, step)

    def test_firstCallOneIntervalAfterStart(self) -> None:
        self.periodic.start()
        self.elapse(0.99)
        self.assertEqual(self.calls, [])
        self.elapse(0.03)
        self.assertEqual(len(self.calls), 1)

    def test_noDrift(self) -> None:
        """Each call is due one interval after the previous was due, not after it ran."""
        self.periodic.start()
        self.elapse(10.005)
        times = [at for at, _, _ in self.calls]
        self.assertEqual(len(times), 10)
        for k, at in enumerate(times, 1):
            self.assertGreaterEqual(at, 100 + k - 1e-9)
            self.assertLess(at, 100 + k + 0.02)
        self.assertEqual(self.periodic.skipped, 0)

    def test_dueIsWhenTheCallBeingMadeWasDue(self) -> None:
        seen: list[tuple[float, float]] = []

        def record(late: float, skipped: int) -> None:
            seen.append((periodic.due, late))

        periodic = Periodic(self.queue, 1.0, record)
        periodic.start()
        self.assertEqual(periodic.due, 101.0)
        self.clock.advance(1.25)
        self.clock.advance(3.5)  # stuck: the calls due at 102 and 103 are skipped
        self.assertEqual(seen, [(101.0, 0.25), (104.0, 0.75)])
        self.assertEqual(periodic.due, 105.0)

    def test_aStallSkipsTheOlderCalls(self) -> None:
        self.periodic.start()
        self.clock.advance(5.5)  # the reactor was stuck for 5.5 intervals
        [(at, late, skipped)] = self.calls
        self.assertAlmostEqual(at, 105.5)
        self.assertEqual(skipped, 4)  # due at 1..5: the one at 5 is made, 1..4 skipped
        self.assertAlmostEqual(late, 0.5)
        self.assertEqual(self.periodic.skipped, 4)
        self.elapse(0.6)
        self.assertEqual(len(self.calls), 2)  # back on schedule: due at 6
        self.assertEqual(self.calls[1][2], 0)

    def test_oneIntervalLateIsNotASkip(self) -> None:
        self.periodic.start()
        self.clock.advance(1.9)
        self.assertEqual([s for _, _, s in self.calls], [0])
        self.clock.advance(0.2)  # the one due at 2 goes out at once: two back to back
        self.assertEqual([s for _, _, s in self.calls], [0, 0])

    def test_oneUlpUnderTwoIntervalsLateIsNotASkip(self) -> None:
        self.periodic.start()  # due at 101.0
        self.clock.advance(math.nextafter(103.0, 0.0) - 100.0)
        late, skipped = self.calls[0][1:]
        self.assertEqual((late, skipped), (2.0 - 2.0**-46, 0))
        self.assertEqual(self.periodic.skipped, 0)

    def test_exactlyTwoIntervalsLateIsASkipForAnyInterval(self) -> None:
        """At the first float at or past two intervals late, and for intervals
        that are not exact in binary, two calls are skipped, never one."""
        for interval in (0.1, 0.3, 1 / 3, 0.7, 1.1):
            calls: list[tuple[float, int]] = []
            p = Periodic(self.queue, interval, lambda late, s, into=calls: into.append((late, s)))
            p.start()
            due = self.clock.seconds() + interval
            now = due + 2.0 * interval
            while now - due < 2.0 * interval:
                now = math.nextafter(now, math.inf)
            while math.nextafter(now, 0.0) - due >= 2.0 * interval:
                now = math.nextafter(now, 0.0)
            self.clock.rightNow = now
            self.clock.advance(0)
            self.assertEqual([s for _, s in calls], [2], interval)
            self.assertGreaterEqual(calls[0][0], 0.0)
            self.assertLess(calls[0][0], interval)
            p.close()

    def test_stopStartClose(self) -> None:
        self.periodic.start()
        self.elapse(1.05)
        self.periodic.stop()
        self.assertFalse(self.periodic.running)
        self.elapse(3)
        self.assertEqual(len(self.calls), 1)
        self.periodic.start()
        self.elapse(1.05)
        self.assertEqual(len(self.calls), 2)
        self.periodic.close()
        self.elapse(3)
        self.assertEqual(len(self.calls), 2)
        self.assertEqual((self.counters.live, self.counters.pending), (0, 0))
        self.assertRaises(RuntimeError, self.periodic.start)

    def test_theFunctionMayStopIt(self) -> None:
        periodic = Periodic(self.queue, 0.5, lambda late, skipped: periodic.stop())
        periodic.start()
        self.elapse(3)
        self.assertFalse(periodic.running)
        self.assertEqual(self.counters.pending, 0)

    def test_everyCallIsSetAgainThroughTheQueue(self) -> None:
        """Each re-arm is a set the queue's monitor counts, whichever way it is made."""
        self.periodic.start()
        self.elapse(5.005)
        self.assertEqual(len(self.calls), 5)
        self.assertEqual((self.counters.set, self.counters.fired), (6, 5))
        self.assertEqual(self.counters.pending, 1)

    def test_theFunctionMayRestartIt(self) -> None:
        """A stop and start from inside the function leaves one pending timer,
        and the schedule goes on."""

        def restart(late: float, skipped: int) -> None:
            self.record(late, skipped)
            if len(self.calls) == 1:
                self.periodic.stop()
                self.periodic.start()

        self.periodic.close()
        self.periodic = Periodic(self.queue, 1.0, restart)
        # Due at 101; restarted then, so due one interval after that call
        # (which the wheel may make up to a tick late): 102, 103, 104, not
        # an interval later.
        self.periodic.start()
        self.elapse(4.05)
        self.assertEqual(len(self.calls), 4)
        for k, (at, _, skipped) in enumerate(self.calls, 1):
            self.assertGreaterEqual(at, 100 + k - 1e-9)
            self.assertLess(at, 100 + k + 0.03)
            self.assertEqual(skipped, 0)
        self.assertEqual(self.counters.pending, 1)
        self.periodic.close()
        self.assertEqual((self.counters.live, self.counters.pending), (0, 0))

    def test_aQueueShutDownByTheFunctionIsNotSetAgain(self) -> None:
        """Re-arming on a queue shut down meanwhile fails as setTimer does: the
        queue logs the error, and nothing is pending."""

        def shutdown(late: float, skipped: int) -> None:
            self.record(late, skipped)
            self.queue.shutdown()

        self.periodic = Periodic(self.queue, 1.0, shutdown)
        self.periodic.start()
        self.elapse(3.005)
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # type: ignore[attr-defined]
        self.assertEqual(self.counters.pending, 0)

    def test_aRaisingFunctionStopsItAndSaysSo(self) -> None:
        """As a LoopingCall's: the queue logs the error, nothing is pending,
        running is False; start() starts again."""

        def bad(late: float, skipped: int) -> None:
            self.record(late, skipped)
            self.assertTrue(self.periodic.running)  # inside the call, it still runs
            if len(self.calls) == 2:
                raise ZeroDivisionError("one bad call")

        self.periodic = Periodic(self.queue, 1.0, bad)
        self.periodic.start()
        self.elapse(5.005)
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # type: ignore[attr-defined]
        self.assertFalse(self.periodic.running)
        self.assertEqual(self.counters.pending, 0)
        self.periodic.start()
        self.assertTrue(self.periodic.running)
        self.elapse(1.05)
        self.assertEqual(len(self.calls), 3)

    def test_aFunctionThatRestartsItThenRaisesLeavesItRunning(self) -> None:
        def restartThenRaise(late: float, skipped: int) -> None:
            self.record(late, skipped)
            if len(self.calls) == 1:
                self.periodic.stop()
                self.periodic.start()
                raise ZeroDivisionError("after the restart")

        self.periodic = Periodic(self.queue, 1.0, restartThenRaise)
        self.periodic.start()
        self.elapse(3.05)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # type: ignore[attr-defined]
        self.assertTrue(self.periodic.running)
        self.assertEqual(len(self.calls), 3)

    def test_notRunningAfterTheFunctionShutsTheQueueDown(self) -> None:
        def shutdown(late: float, skipped: int) -> None:
            self.queue.shutdown()

        self.periodic = Periodic(self.queue, 1.0, shutdown)
        self.periodic.start()
        self.elapse(1.05)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # type: ignore[attr-defined]
        self.assertFalse(self.periodic.running)

    def test_startOnAQueueShutDownRaisesAndIsNotRunning(self) -> None:
        self.queue.shutdown()
        self.assertRaises(RuntimeError, self.periodic.start)
        self.assertFalse(self.periodic.running)

    def test_aSiblingRunsOnTheSameScheduleWithItsOwnHandle(self) -> None:
        """
        A sibling calls its own function every interval from its own handle;
        stopping one leaves the other running; a closed Periodic makes them too.
        """
        other: list[float] = []
        sibling = self.periodic.sibling(lambda late, skipped: other.append(self.clock.seconds()))
        self.assertEqual(
            (sibling.queue, sibling.clock, sibling.interval), (self.queue, self.clock, 1.0)
        )
        self.periodic.start()
        self.elapse(0.5)
        sibling.start()
        self.elapse(2.02)
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(len(other), 2)
        self.assertGreaterEqual(other[0], 101.5 - 1e-9)  # one interval after its own start
        self.assertLess(other[0], 101.5 + 0.02)
        self.periodic.close()
        self.elapse(1.0)
        self.assertEqual((len(self.calls), len(other)), (2, 3))
        late = self.periodic.sibling(self.record)
        late.start()
        self.assertTrue(self.queue.isSet(late._handle))
        late.close()
        sibling.close()
        self.assertEqual(self.queue.shutdown(), 0)  # nothing left pending

    def test_aSiblingStartedOnAQueueShutDownRaisesAndIsNotRunning(self) -> None:
        sibling = self.periodic.sibling(self.record)
        self.queue.shutdown()
        self.assertRaises(RuntimeError, sibling.start)
        self.assertFalse(sibling.running)

    def test_startChecksAnIntervalChangedSinceItWasMade(self) -> None:
        """An interval set after the checks of its making is checked by start()."""
        for bad in (-1.0, float("nan"), 1e300):
            periodic = self.periodic.sibling(self.record)
            periodic.interval = bad
            self.assertRaises(ValueError, periodic.start)
            self.assertFalse(periodic.running)
        self.assertEqual(self.queue.shutdown(), 0)  # nothing was set

    def test_badInterval(self) -> None:
        for bad in (0, -1, float("nan"), float("inf"), "1"):
            self.assertRaises(ValueError, Periodic, self.queue, bad, self.record)


class WheelPeriodicTests(PeriodicTestsMixin, SynchronousTestCase):
    makeQueue = TimerWheel

    def test_latenessWithinTheGranularityIsNotASkip(self) -> None:
        assertLatenessWithinTheGranularityIsNotASkip(self, TimerWheel)


def assertLatenessWithinTheGranularityIsNotASkip(case: SynchronousTestCase, makeQueue: Any) -> None:
    """An interval under half the tick: a call late by almost a tick (more
    than two intervals) is made, not skipped."""
    clock = Clock()
    calls: list[tuple[float, int]] = []
    periodic = Periodic(
        makeQueue(clock, granularity=0.01), 0.004, lambda late, s: calls.append((late, s))
    )
    clock.advance(0.0061)
    periodic.start()  # due at 0.0101: the wheel's tick of 0.02
    clock.advance(0.0139)
    [(late, skipped)] = calls
    case.assertEqual(skipped, 0)
    case.assertAlmostEqual(late, 0.0099)
    case.assertEqual(periodic.skipped, 0)


class ReactorQueuePeriodicTests(PeriodicTestsMixin, SynchronousTestCase):
    makeQueue = ReactorTimerQueue

    def test_aQueueWhoseGranularityIsNotANumberIsTakenAsExact(self) -> None:
        """A third party's queue may use the name for something else."""
        queue = ReactorTimerQueue(self.clock)
        queue.granularity = "fine"  # type: ignore[attr-defined]
        calls: list[float] = []
        periodic = Periodic(queue, 1.0, lambda late, skipped: calls.append(late))
        periodic.start()
        self.clock.advance(1.0)
        self.assertEqual(calls, [0.0])


def _threadSafeWheel(clock: Clock, monitor: TimerQueueCounters) -> ThreadSafeTimerQueue:
    return ThreadSafeTimerQueue(TimerWheel(clock, monitor=monitor))


class ThreadSafePeriodicTests(PeriodicTestsMixin, SynchronousTestCase):
    """A queue that is not one of the base's (re-armed through setTimer)."""

    makeQueue = staticmethod(_threadSafeWheel)

    def test_latenessWithinTheGranularityIsNotASkip(self) -> None:
        """The wrapper tells the wrapped wheel's granularity."""
        assertLatenessWithinTheGranularityIsNotASkip(
            self, lambda clock, **kw: ThreadSafeTimerQueue(TimerWheel(clock, **kw))
        )


class CountingWheel(TimerWheel):
    """A wheel whose own setTimer counts its calls."""

    sets = 0

    def setTimer(self, *args: Any, **kwargs: Any) -> bool:
        self.sets += 1
        return super().setTimer(*args, **kwargs)


class OtherClockPeriodicTests(SynchronousTestCase):
    def test_aQueueWithItsOwnSetTimerIsSetThroughIt(self) -> None:
        clock = Clock()
        queue = CountingWheel(clock)
        calls: list[float] = []
        periodic = Periodic(queue, 1.0, lambda late, skipped: calls.append(late))
        periodic.start()
        for _ in range(300):
            clock.advance(0.01)
        self.assertEqual(len(calls), 2)
        self.assertEqual(queue.sets, 3)  # start, then after each call

    def test_aScheduleOnAnotherClockIsSetThroughSetTimer(self) -> None:
        """With a clock that is not the queue's, each re-arm is a setTimer,
        timed by the queue's clock."""
        queueClock, scheduleClock = Clock(), Clock()
        scheduleClock.advance(1000)  # another time base: its seconds mean nothing to the queue
        counters = TimerQueueCounters()
        queue = TimerWheel(queueClock, monitor=counters)
        calls: list[float] = []
        periodic = Periodic(queue, 1.0, lambda late, skipped: calls.append(late), scheduleClock)
        periodic.start()
        for _ in range(300):
            queueClock.advance(0.01)
            scheduleClock.advance(0.01)
        self.assertEqual(len(calls), 2)
        self.assertEqual(counters.set, 3)
