"""
The L{IQueueTimers} contract of DESIGN.md, written once and mixed into a
test case for every implementation.
"""

from __future__ import annotations

import math
import random
import weakref
from fractions import Fraction
from typing import Any

from twisted.internet.task import Clock
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

from timerserver import (
    InvalidTimerHandle,
    IQueueTimers,
    ITimer,
    SetTimerIf,
    TimerHandle,
    TimerQueueCounters,
    UpdateTimerIf,
)


@implementer(ITimer)
class RecordingTimer:
    """An L{ITimer} that records each call with the clock's time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, object]] = []

    def onTimer(self, userData: object) -> None:
        self.calls.append((self.clock.seconds(), userData))


class QueueContractMixin:
    """
    Mixed into a L{SynchronousTestCase}; the implementation's test case sets
    C{tolerance}, how late a timer may fire, and defines C{makeQueue}.
    """

    tolerance = 0.0

    def makeQueue(self, clock: Clock, **kwargs: Any) -> Any:
        raise NotImplementedError

    # Helpers

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.counters = TimerQueueCounters()
        self.queue = self.makeQueue(self.clock, monitor=self.counters)
        self.timer = RecordingTimer(self.clock)
        self.fired: list[object] = []

    def advanceTo(self, when: float) -> None:
        """
        Move the clock to C{when}, stopping at each delayed call on the way,
        as a reactor would.
        """
        for _ in range(100000):
            now = self.clock.seconds()
            if now >= when:
                return
            due = [c.getTime() for c in self.clock.getDelayedCalls()]
            self.clock.advance(max(0.0, min([when, *due]) - now))
        raise AssertionError("the queue keeps scheduling calls without end")

    def settle(self, seconds: float) -> None:
        """Advance C{seconds} plus the tolerance."""
        self.advanceTo(self.clock.seconds() + seconds + self.tolerance + 1e-9)

    def assertFiresAt(self, deadline: float, expected: list[tuple[float, object]] | None = None):
        """The recording timer did not fire before C{deadline}, then fired once."""
        self.advanceTo(deadline - 1e-6)
        self.assertEqual(self.timer.calls, [])
        self.advanceTo(deadline + self.tolerance + 1e-6)
        self.assertEqual(len(self.timer.calls), 1, self.timer.calls)
        firedAt, userData = self.timer.calls[0]
        self.assertGreaterEqual(firedAt, deadline)
        self.assertLessEqual(firedAt, deadline + self.tolerance + 1e-6)
        return userData

    # The interface

    def test_providesInterface(self: Any) -> None:
        self.assertTrue(verifyObject(IQueueTimers, self.queue))

    def test_createTimer(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertIsInstance(h, TimerHandle)
        self.assertFalse(self.queue.isSet(h))
        self.assertIn("idle", repr(h))
        self.assertIsNot(h, self.queue.createTimer())

    def test_handleRepr(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 5)
        self.assertIn("pending", repr(h))
        self.queue.destroyTimer(h)
        self.assertIn("destroyed", repr(h))

    def test_handlesHaveNoDict(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertRaises(AttributeError, setattr, h, "extra", 1)

    # setTimer

    def test_setTimerFiresOnceAfterTimeout(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.queue.setTimer(h, self.timer, 5, "data"))
        self.assertTrue(self.queue.isSet(h))
        self.assertEqual(self.assertFiresAt(1005, None), "data")
        self.assertFalse(self.queue.isSet(h))
        self.settle(100)
        self.assertEqual(len(self.timer.calls), 1)

    def test_setTimerCallable(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 1, "x")
        self.settle(1)
        self.assertEqual(self.fired, ["x"])

    def test_anInstanceProvidingITimerLeavesItsClassCallable(self: Any) -> None:
        """
        An object of a plain callable class that provides L{ITimer} itself
        gets C{onTimer}; another object of that class is still called, and an
        object of a class that implements L{ITimer} always gets C{onTimer}.
        """
        got: list[tuple[str, object]] = []

        class Callable:
            def __init__(self, name: str) -> None:
                self.name = name

            def __call__(self, userData: object) -> None:
                got.append((f"{self.name} called", userData))

            def onTimer(self, userData: object) -> None:
                got.append((f"{self.name} onTimer", userData))

        provider, plain = Callable("provider"), Callable("plain")
        alsoProvides(provider, ITimer)
        another = RecordingTimer(self.clock)
        for name, timer in [
            ("provider", provider),
            ("plain", plain),
            ("recording", self.timer),
            ("recording again", another),
        ]:
            self.queue.setTimer(self.queue.createTimer(), timer, 1, name)
            self.settle(1)
        self.assertEqual(got, [("provider onTimer", "provider"), ("plain called", "plain")])
        self.assertEqual([data for _, data in self.timer.calls], ["recording"])
        self.assertEqual([data for _, data in another.calls], ["recording again"])

    def test_setTimerPendingRearms(self: Any) -> None:
        """A pending timer is re-armed with the new timeout, timer and data."""
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 5, "old")
        self.assertTrue(self.queue.setTimer(h, self.timer, 10, "new"))
        self.assertEqual(self.assertFiresAt(1010), "new")
        self.assertEqual(self.fired, [])

    def test_setTimerPendingRearmsSooner(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 10, "old")
        self.assertTrue(self.queue.setTimer(h, self.timer, 3, "new"))
        self.assertEqual(self.assertFiresAt(1003), "new")
        self.settle(20)
        self.assertEqual(len(self.timer.calls), 1)

    def test_setTimerIfNotSetWhenIdle(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.queue.setTimer(h, self.timer, 4, "a", SetTimerIf.IF_NOT_SET))
        self.assertEqual(self.assertFiresAt(1004), "a")

    def test_setTimerIfNotSetWhenPending(self: Any) -> None:
        """A pending timer is left exactly as it was."""
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 4, "a")
        self.assertTrue(self.queue.setTimer(h, self.fired.append, 1, "b", SetTimerIf.IF_NOT_SET))
        self.assertEqual(self.assertFiresAt(1004), "a")
        self.assertEqual(self.fired, [])

    def test_setTimerBadWhen(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertRaises(TypeError, self.queue.setTimer, h, self.timer, 1, None, "always")
        self.assertRaises(
            TypeError, self.queue.setTimer, h, self.timer, 1, None, UpdateTimerIf.ALWAYS
        )
        self.assertFalse(self.queue.isSet(h))

    # updateTimer

    def test_updateTimerNotPendingSetsForEveryMode(self: Any) -> None:
        for when in UpdateTimerIf:
            h = self.queue.createTimer()
            self.assertFalse(self.queue.updateTimer(h, self.fired.append, 1, when, when))
            self.assertTrue(self.queue.isSet(h), when)
        self.settle(1)
        self.assertEqual(
            sorted(w.value for w in self.fired), sorted(w.value for w in UpdateTimerIf)
        )

    def _pendingUpdate(self: Any, when: UpdateTimerIf, timeout: float) -> tuple[bool, Any]:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 5, "old")
        wasPending = self.queue.updateTimer(h, self.timer, timeout, "new", when)
        return wasPending, h

    def test_updateTimerAlways(self: Any) -> None:
        for timeout in (2, 8):
            self.setUp()
            wasPending, _ = self._pendingUpdate(UpdateTimerIf.ALWAYS, timeout)
            self.assertTrue(wasPending)
            self.assertEqual(self.assertFiresAt(1000 + timeout), "new")
            self.assertEqual(self.fired, [])

    def test_updateTimerIfSoonerWhenSooner(self: Any) -> None:
        wasPending, _ = self._pendingUpdate(UpdateTimerIf.IF_SOONER, 2)
        self.assertTrue(wasPending)
        self.assertEqual(self.assertFiresAt(1002), "new")
        self.settle(10)
        self.assertEqual(self.fired, [])

    def test_updateTimerIfSoonerWhenLater(self: Any) -> None:
        wasPending, _ = self._pendingUpdate(UpdateTimerIf.IF_SOONER, 8)
        self.assertTrue(wasPending)
        self.advanceTo(1005 - 1e-6)
        self.assertEqual(self.fired, [])
        self.advanceTo(1005 + self.tolerance + 1e-6)
        self.assertEqual(self.fired, ["old"])
        self.settle(10)
        self.assertEqual(self.timer.calls, [])

    def test_updateTimerIfLaterWhenLater(self: Any) -> None:
        wasPending, _ = self._pendingUpdate(UpdateTimerIf.IF_LATER, 8)
        self.assertTrue(wasPending)
        self.assertEqual(self.assertFiresAt(1008), "new")
        self.assertEqual(self.fired, [])

    def test_updateTimerIfLaterWhenSooner(self: Any) -> None:
        wasPending, _ = self._pendingUpdate(UpdateTimerIf.IF_LATER, 2)
        self.assertTrue(wasPending)
        self.advanceTo(1005 - 1e-6)
        self.assertEqual(self.fired, [])
        self.advanceTo(1005 + self.tolerance + 1e-6)
        self.assertEqual(self.fired, ["old"])
        self.assertEqual(self.timer.calls, [])

    def test_updateTimerNoTimeoutChange(self: Any) -> None:
        """The expiry stays; the timer and user data change."""
        for timeout in (1, 9):
            self.setUp()
            wasPending, _ = self._pendingUpdate(UpdateTimerIf.NO_TIMEOUT_CHANGE, timeout)
            self.assertTrue(wasPending)
            self.assertEqual(self.assertFiresAt(1005), "new")
            self.assertEqual(self.fired, [])

    def test_updateTimerBadWhen(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertRaises(
            TypeError, self.queue.updateTimer, h, self.timer, 1, None, SetTimerIf.ALWAYS
        )
        self.assertFalse(self.queue.isSet(h))

    # cancelTimer and destroyTimer

    def test_cancelPending(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 1)
        self.assertTrue(self.queue.cancelTimer(h))
        self.assertFalse(self.queue.isSet(h))
        self.settle(5)
        self.assertEqual(self.timer.calls, [])

    def test_cancelNeverSetAndFired(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.queue.cancelTimer(h))
        self.queue.setTimer(h, self.timer, 1)
        self.settle(1)
        self.assertFalse(self.queue.cancelTimer(h))
        self.assertFalse(self.queue.cancelTimer(h))

    def test_handleUsableAfterCancel(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 1, "first")
        self.queue.cancelTimer(h)
        self.assertFalse(self.queue.setTimer(h, self.timer, 2, "second"))
        self.assertEqual(self.assertFiresAt(1002), "second")

    def test_destroyPending(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 1)
        self.assertTrue(self.queue.destroyTimer(h))
        self.settle(5)
        self.assertEqual(self.timer.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_destroyNeverSetAndFired(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.queue.destroyTimer(h))
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 1)
        self.settle(1)
        self.assertFalse(self.queue.destroyTimer(h))

    def test_destroyLetsGoOfTheTimerAndUserData(self: Any) -> None:
        """
        A handle kept after destroyTimer (a protocol's attribute) keeps
        neither its timer nor its user data alive, pending when destroyed or
        fired before.
        """

        class Target:
            def __call__(self, userData: object) -> None:
                pass

        for fireFirst in (False, True):
            h = self.queue.createTimer()
            timer, data = Target(), Target()
            self.queue.setTimer(h, timer, 1, data)
            if fireFirst:
                self.settle(1)
            self.queue.destroyTimer(h)
            refs = weakref.ref(timer), weakref.ref(data)
            del timer, data
            self.assertEqual([ref() for ref in refs], [None, None], fireFirst)
            self.assertIn("destroyed", repr(h))

    def test_destroyedHandleIsInvalidEverywhere(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.destroyTimer(h)
        self.assertInvalidEverywhere(h)

    def assertInvalidEverywhere(self: Any, handle: object) -> None:
        q = self.queue
        for call in (
            lambda: q.isSet(handle),
            lambda: q.setTimer(handle, self.timer, 1),
            lambda: q.updateTimer(handle, self.timer, 1),
            lambda: q.cancelTimer(handle),
            lambda: q.destroyTimer(handle),
        ):
            e = self.assertRaises(InvalidTimerHandle, call)
            self.assertIsInstance(e, ValueError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invalidHandles(self: Any) -> None:
        other = self.makeQueue(self.clock)
        for handle in (None, object(), 1, "handle", TimerHandle(), other.createTimer()):
            self.assertInvalidEverywhere(handle)

    # Bad arguments

    def test_invalidTimeouts(self: Any) -> None:
        """Bad timeouts raise and change nothing: the pending timer stays."""
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 5, "kept")
        maximum = self.queue.maximumTimeout
        bad = [
            (ValueError, -1),
            (ValueError, -1e-9),
            (ValueError, math.nan),
            (ValueError, math.inf),
            (ValueError, -math.inf),
            (ValueError, maximum * 1.0001),
            (ValueError, 10**400),  # too large for a float: not an OverflowError
            (ValueError, -(10**400)),
            (ValueError, Fraction(10**400, 3)),
            (TypeError, "1"),
            (TypeError, None),
            (TypeError, True),
            (TypeError, [1]),
            (TypeError, 1j),
        ]
        for exception, timeout in bad:
            q = self.queue
            self.assertRaises(exception, q.setTimer, h, self.fired.append, timeout, "x")
            self.assertRaises(exception, q.updateTimer, h, self.fired.append, timeout, "x")
            self.assertRaises(exception, q.setOneShotTimer, self.fired.append, timeout, "x")
        self.assertEqual(self.assertFiresAt(1005), "kept")
        self.assertEqual(self.fired, [])
        self.assertEqual(self.counters.pending, 0)

    def test_aTimeoutTooLargeForAFloatIsAValueErrorNamingIt(self: Any) -> None:
        """Shortened if its repr is long, and even past Python's int-to-str limit."""
        h = self.queue.createTimer()
        for timeout, named in (
            (10**400, "1000000000"),
            (Fraction(10**400, 3), "Fraction(1000000000"),
            (10**5000, "an int of 16610 bits"),
        ):
            q = self.queue
            for call, args in (
                (q.setTimer, (h, self.timer, timeout)),
                (q.updateTimer, (h, self.timer, timeout)),
                (q.setOneShotTimer, (self.timer, timeout)),
            ):
                e = self.assertRaises(ValueError, call, *args)
                self.assertIn(named, str(e))
                self.assertLess(len(str(e)), 200)
        self.assertFalse(self.queue.isSet(h))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invalidTimer(self: Any) -> None:
        h = self.queue.createTimer()
        for timer in (None, 1, "onTimer", object()):
            self.assertRaises(TypeError, self.queue.setTimer, h, timer, 1)
            self.assertRaises(TypeError, self.queue.updateTimer, h, timer, 1)
            self.assertRaises(TypeError, self.queue.setOneShotTimer, timer, 1)
        self.assertFalse(self.queue.isSet(h))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_maximumTimeoutAccepted(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.queue.setTimer(h, self.timer, self.queue.maximumTimeout))
        self.assertTrue(self.queue.isSet(h))
        self.settle(self.queue.maximumTimeout / 2)
        self.assertEqual(self.timer.calls, [])

    def test_numbersOtherThanFloat(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, Fraction(3, 2), "f")
        self.assertEqual(self.assertFiresAt(1001.5), "f")

    # Time

    def test_timeoutZeroFiresOnALaterTurn(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 0, "now")
        self.queue.setOneShotTimer(self.fired.append, 0, "one-shot")
        self.assertEqual(self.fired, [])
        self.settle(0)
        self.assertEqual(self.fired, ["now", "one-shot"])

    def test_manyTimersFireInDeadlineOrder(self: Any) -> None:
        rng = random.Random(4)
        deadlines = rng.sample(range(1, 5000), 300)
        for d in deadlines:
            h = self.queue.createTimer()
            self.queue.setTimer(h, self.timer, d / 100, d / 100)
        self.settle(50)
        self.assertEqual([u for _, u in self.timer.calls], sorted(d / 100 for d in deadlines))
        for firedAt, timeout in self.timer.calls:
            self.assertGreaterEqual(firedAt, 1000 + timeout)  # type: ignore[operator]
            self.assertLessEqual(firedAt, 1000 + timeout + self.tolerance + 1e-6)  # type: ignore[operator]

    def test_longTimeout(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 100000.25, "long")
        self.clock.advance(99999)
        self.assertEqual(self.timer.calls, [])
        self.assertEqual(self.assertFiresAt(101000.25), "long")

    # One-shots

    def test_oneShot(self: Any) -> None:
        self.assertIsNone(self.queue.setOneShotTimer(self.timer, 3, "once"))
        self.assertEqual(self.assertFiresAt(1003), "once")
        self.settle(10)
        self.assertEqual(len(self.timer.calls), 1)

    # Re-entrancy

    def test_insideOnTimerNotPendingAndRearmable(self: Any) -> None:
        h = self.queue.createTimer()
        seen: list[tuple[bool, bool]] = []

        def onTimer(userData: object) -> None:
            pendingInside = self.queue.isSet(h)
            wasPending = self.queue.setTimer(h, onTimer, 1) if len(seen) < 2 else True
            seen.append((pendingInside, wasPending))

        self.queue.setTimer(h, onTimer, 1)
        self.settle(1)
        self.settle(1)
        self.settle(1)
        self.assertEqual(seen, [(False, False), (False, False), (False, True)])
        self.assertFalse(self.queue.isSet(h))

    def test_callbackCancelsAndDestroysOthersInSameBatch(self: Any) -> None:
        """Timers cancelled or destroyed before their turn in a batch do not fire."""
        a, b, c, d = (self.queue.createTimer() for _ in range(4))
        order: list[str] = []

        def first(_: object) -> None:
            order.append("a")
            self.assertTrue(self.queue.cancelTimer(b))
            self.assertTrue(self.queue.destroyTimer(c))
            self.queue.setTimer(d, order.append, 5, "d-rearmed")

        self.queue.setTimer(a, first, 1.0)
        self.queue.setTimer(b, order.append, 1.0001, "b")
        self.queue.setTimer(c, order.append, 1.0002, "c")
        self.queue.setTimer(d, order.append, 1.0003, "d")
        self.settle(1.001)
        self.assertEqual(order, ["a"])
        self.settle(5)
        self.assertEqual(order, ["a", "d-rearmed"])

    def test_callbackDestroysItsOwnHandle(self: Any) -> None:
        h = self.queue.createTimer()

        def onTimer(_: object) -> None:
            self.fired.append(self.queue.destroyTimer(h))

        self.queue.setTimer(h, onTimer, 1)
        self.settle(1)
        self.assertEqual(self.fired, [False])
        self.assertRaises(InvalidTimerHandle, self.queue.isSet, h)
        self.assertEqual(self.counters.live, 0)

    def test_callbackSetsAnotherWithZeroTimeout(self: Any) -> None:
        """A timer set to 0 from a callback fires on a later turn, not in the batch."""
        a, b = self.queue.createTimer(), self.queue.createTimer()

        def first(_: object) -> None:
            self.queue.setTimer(b, self.fired.append, 0, "b")
            self.fired.append("a")

        self.queue.setTimer(a, first, 1)
        self.advanceTo(1001 + self.tolerance + 1e-9)
        self.assertEqual(self.fired[0], "a")
        self.settle(0)
        self.assertEqual(self.fired, ["a", "b"])

    def test_raisingCallbackIsLoggedAndHarmless(self: Any) -> None:
        a, b = self.queue.createTimer(), self.queue.createTimer()
        self.queue.setTimer(a, lambda _: 1 / 0, 1)
        self.queue.setTimer(b, self.fired.append, 1.0001, "b")
        self.queue.setOneShotTimer(lambda _: 1 / 0, 1)
        self.settle(1.001)
        self.assertEqual(self.fired, ["b"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.queue.setTimer(a, self.fired.append, 1, "a again")
        self.settle(1)
        self.assertEqual(self.fired, ["b", "a again"])

    # Shutdown

    def test_shutdown(self: Any) -> None:
        handles = [self.queue.createTimer() for _ in range(5)]
        for i, h in enumerate(handles[:3]):
            self.queue.setTimer(h, self.timer, i + 1)
        self.queue.setOneShotTimer(self.timer, 2)
        self.queue.setOneShotTimer(self.timer, 100000)
        self.assertEqual(self.queue.shutdown(), 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.counters.pending, 0)
        self.assertFalse(any(self.queue.isSet(h) for h in handles))
        self.settle(200000)
        self.assertEqual(self.timer.calls, [])
        for call in (
            lambda: self.queue.setTimer(handles[0], self.timer, 1),
            lambda: self.queue.updateTimer(handles[0], self.timer, 1),
            lambda: self.queue.setOneShotTimer(self.timer, 1),
        ):
            self.assertRaises(RuntimeError, call)
        self.assertFalse(self.queue.cancelTimer(handles[1]))
        self.assertFalse(self.queue.destroyTimer(handles[1]))
        self.assertEqual(self.queue.shutdown(), 0)

    def test_shutdownRunsNoCodeOfTheReactorsOtherCalls(self: Any) -> None:
        """
        Another call on the same reactor, whose callable has an C{__eq__}
        that raises, is neither compared, nor cancelled, nor counted; the
        queue's own timers are all cancelled.
        """
        compared: list[object] = []

        class Job:
            def __eq__(self, other: object) -> bool:
                compared.append(other)
                raise AttributeError("not comparable")

            __hash__ = object.__hash__

            def __call__(self) -> None:
                pass

        foreign = self.clock.callLater(10, Job())
        handles = [self.queue.createTimer() for _ in range(2)]
        for h in handles:
            self.queue.setTimer(h, self.timer, 5)
        self.queue.setOneShotTimer(self.timer, 5)
        self.assertEqual(self.queue.shutdown(), 3)
        self.assertEqual(compared, [])
        self.assertFalse(any(self.queue.isSet(h) for h in handles))
        self.assertEqual(self.clock.getDelayedCalls(), [foreign])
        self.assertTrue(foreign.active())
        foreign.cancel()
        self.settle(10)
        self.assertEqual(self.timer.calls, [])

    def test_shutdownFromACallback(self: Any) -> None:
        a, b = self.queue.createTimer(), self.queue.createTimer()
        self.queue.setTimer(a, lambda _: self.fired.append(self.queue.shutdown()), 1)
        self.queue.setTimer(b, self.fired.append, 1.0001, "b")
        self.settle(5)
        self.assertEqual(self.fired, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_shutdownFromACallbackWithAnotherDueAtTheSameTime(self: Any) -> None:
        """The other timer of the same moment is cancelled, counted, and never fires."""
        a, b = self.queue.createTimer(), self.queue.createTimer()
        self.queue.setTimer(a, lambda _: self.fired.append(self.queue.shutdown()), 1)
        self.queue.setTimer(b, self.fired.append, 1, "b")
        self.settle(5)
        self.assertEqual(self.fired, [1])
        self.assertFalse(self.queue.isSet(b))
        self.assertEqual((self.counters.pending, self.counters.cancelled), (0, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aCallbackRaisingABaseExceptionLosesNoOtherTimer(self: Any) -> None:
        """
        A reactor logs a SystemExit or KeyboardInterrupt from a timed call
        and goes on: the timers due with it, and later ones, still fire.
        """

        def bail(_: object) -> None:
            raise KeyboardInterrupt

        a, b = self.queue.createTimer(), self.queue.createTimer()
        self.queue.setTimer(a, bail, 1)
        self.queue.setTimer(b, self.fired.append, 1, "b")
        self.assertRaises(KeyboardInterrupt, self.settle, 1)
        self.settle(1)
        self.assertEqual(self.fired, ["b"])
        self.queue.setTimer(a, self.fired.append, 1, "later")
        self.settle(1)
        self.assertEqual(self.fired, ["b", "later"])
        self.assertEqual(self.counters.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aTimerSetAfterTheClockWentBackFiresOnTime(self: Any) -> None:
        """
        With nothing pending, a clock stepped back an hour does not hold a
        new timer back by the hour (pending ones are, as Twisted's own are).
        """
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 1, "before")
        self.settle(1)
        self.clock.advance(-3600)
        self.queue.setTimer(h, self.timer, 1)
        self.assertFiresAt(self.clock.seconds() + 1)

    def test_aStalledReactorCatchesUpInDeadlineOrderAfterAPushBack(self: Any) -> None:
        """A timer pushed back past another fires after it, in one catch-up turn."""
        idle, a = self.queue.createTimer(), self.queue.createTimer()
        self.queue.setTimer(idle, self.fired.append, 0.5, "idle")
        self.queue.setTimer(a, self.fired.append, 2.0, "a")
        self.clock.advance(0.1)
        self.queue.setTimer(idle, self.fired.append, 2.5, "idle")
        self.clock.advance(5)  # one turn after a stall
        self.assertEqual(self.fired, ["a", "idle"])

    def test_theNextTimerIsNotLateByTheTimeCallbacksTook(self: Any) -> None:
        """A slow callback does not push back the reactor call of the next timer."""

        def slow(_: object) -> None:
            self.clock.rightNow += 0.008  # time passes in the callback

        a = self.queue.createTimer()
        self.queue.setTimer(a, slow, 1)
        self.queue.setTimer(self.queue.createTimer(), self.timer, 1.011)
        self.clock.advance(1)
        self.assertFiresAt(self.clock.seconds() - 1.008 + 1.011)

    # The monitor

    def test_monitorCountsEveryOperation(self: Any) -> None:
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 1)
        self.queue.setTimer(h, self.timer, 2, None, SetTimerIf.IF_NOT_SET)
        self.queue.updateTimer(h, self.timer, 3, None, UpdateTimerIf.IF_SOONER)
        self.queue.setOneShotTimer(self.timer, 1)
        c = self.counters
        self.assertEqual((c.created, c.set, c.updated, c.oneShotSet, c.pending), (1, 2, 1, 1, 2))
        self.settle(1)
        self.assertEqual((c.fired, c.pending), (2, 0))
        self.queue.setTimer(h, self.timer, 1)
        self.assertTrue(self.queue.cancelTimer(h))
        self.queue.setTimer(h, self.timer, 1)
        self.queue.destroyTimer(h)
        self.assertEqual((c.cancelled, c.destroyed, c.pending, c.live), (1, 1, 0, 0))

    def test_noReactorCallsWhenIdle(self: Any) -> None:
        h = self.queue.createTimer()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.queue.setTimer(h, self.timer, 1)
        self.queue.cancelTimer(h)
        self.assertEqual(self.clock.getDelayedCalls(), [])
