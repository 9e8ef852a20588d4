"""
Every queue against a reference model (hypothesis): random sequences of set,
update, cancel, destroy and time passing.  Each return value must match the
model, and each timer must fire once, never early, at most the queue's
tolerance late, with the user data of its latest arming.  L{ThreadSafeTimerQueue}
runs over both queues, on the direct path (a test clock's one thread) and on
the cross-thread path (every change reaches the queue on a later turn).
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from timerserver import (
    InvalidTimerHandle,
    ReactorTimerQueue,
    SetTimerIf,
    ThreadSafeTimerQueue,
    TimerQueueCounters,
    TimerWheel,
    UpdateTimerIf,
)

HANDLES = 4
index = st.integers(0, HANDLES - 1)
# Short ones stay in the wheel's first level; longer ones cascade or overflow.
timeout = st.one_of(st.floats(0, 2), st.floats(0, 60), st.integers(0, 400))
operation = st.one_of(
    st.tuples(st.just("set"), index, timeout, st.sampled_from(list(SetTimerIf))),
    st.tuples(st.just("update"), index, timeout, st.sampled_from(list(UpdateTimerIf))),
    st.tuples(st.just("cancel"), index),
    st.tuples(st.just("destroy"), index),
    st.tuples(st.just("advance"), st.floats(0, 30)),
)


class ModelMixin:
    tolerance = 0.0
    # Whether every change reaches the queue (and its monitor) within the call.
    immediate = True

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        raise NotImplementedError

    # Each subclass runs it on its own queue: nothing is shared between them.
    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
    )
    @given(st.lists(operation, max_size=60))
    def test_matchesTheModel(self, ops: list[tuple[Any, ...]]) -> None:
        clock, counters = Clock(), TimerQueueCounters()
        clock.advance(1000.123)
        queue = self.makeQueue(clock, counters)
        handles = [queue.createTimer() for _ in range(HANDLES)]
        destroyed = [False] * HANDLES
        pending: dict[int, tuple[float, int]] = {}  # handle -> (deadline, token)
        tokens = itertools.count()
        fired: list[tuple[float, int, int]] = []  # (time, handle, token)

        def timer(userData: tuple[int, int]) -> None:
            fired.append((clock.seconds(), *userData))

        def checkFired() -> None:
            for at, i, token in fired:
                deadline, expected = pending.pop(i)
                self.assertEqual(token, expected)
                self.assertGreaterEqual(at, deadline)
                self.assertLessEqual(at, deadline + self.tolerance + 1e-6)
            fired.clear()

        for op in ops:
            kind, *args = op
            if kind == "advance":
                target = clock.seconds() + args[0]
                while clock.seconds() < target:
                    due = [c.getTime() for c in clock.getDelayedCalls()]
                    clock.advance(max(0.0, min([target, *due]) - clock.seconds()))
                    checkFired()
                overdue = [d for d, _ in pending.values() if d + self.tolerance + 1e-6 < target]
                self.assertEqual(overdue, [])
                continue
            i = args[0]
            h = handles[i]
            if destroyed[i]:
                self.assertRaises(InvalidTimerHandle, queue.cancelTimer, h)
                continue
            was = i in pending
            now = clock.seconds()
            if kind == "set":
                _, t, when = args
                token = next(tokens)
                self.assertEqual(queue.setTimer(h, timer, t, (i, token), when), was)
                if not was or when is SetTimerIf.ALWAYS:
                    pending[i] = (now + t, token)
            elif kind == "update":
                _, t, when = args
                token = next(tokens)
                self.assertEqual(queue.updateTimer(h, timer, t, (i, token), when), was)
                old = pending.get(i)
                if old is None or when is UpdateTimerIf.ALWAYS:
                    pending[i] = (now + t, token)
                elif when is UpdateTimerIf.NO_TIMEOUT_CHANGE:
                    pending[i] = (old[0], token)
                elif (when is UpdateTimerIf.IF_SOONER and now + t < old[0]) or (
                    when is UpdateTimerIf.IF_LATER and now + t > old[0]
                ):
                    pending[i] = (now + t, token)
            elif kind == "cancel":
                self.assertEqual(queue.cancelTimer(h), was)
                pending.pop(i, None)
            else:
                self.assertEqual(queue.destroyTimer(h), was)
                pending.pop(i, None)
                destroyed[i] = True
            self.assertEqual(queue.isSet(h) if not destroyed[i] else False, i in pending)
            if self.immediate:
                self.assertEqual(counters.pending, len(pending))
        self.assertEqual(queue.shutdown(), len(pending))
        clock.advance(0)  # the shutdown's own hop, if it took one
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(counters.pending, 0)
        self.assertEqual(fired, [])


class ReactorTimerQueueModelTests(ModelMixin, SynchronousTestCase):
    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return ReactorTimerQueue(clock, monitor=monitor)


class TimerWheelModelTests(ModelMixin, SynchronousTestCase):
    tolerance = 0.01

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return TimerWheel(clock, monitor=monitor)


class TinyTimerWheelModelTests(ModelMixin, SynchronousTestCase):
    """A 0.4 s first level and a 1.6 s second: most timers cascade or overflow."""

    tolerance = 0.05

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return TimerWheel(clock, granularity=0.05, slots=8, upperSlots=4, monitor=monitor)


class ThreadSafeWheelModelTests(ModelMixin, SynchronousTestCase):
    """Over a test clock every call takes the direct path: the clock has one thread."""

    tolerance = 0.01

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return ThreadSafeTimerQueue(TimerWheel(clock, monitor=monitor))


class ThreadSafeReactorQueueModelTests(ModelMixin, SynchronousTestCase):
    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return ThreadSafeTimerQueue(ReactorTimerQueue(clock, monitor=monitor))


def crossThread(clock: Clock) -> Clock:
    """Give C{clock} a C{callFromThread} that runs the call on its next turn, as a reactor's."""
    clock.callFromThread = lambda f, *a: clock.callLater(0, f, *a)  # type: ignore[attr-defined]
    return clock


class CrossThreadWheelModelTests(ModelMixin, SynchronousTestCase):
    """Every call as if from another thread: answered at once, applied on a later turn."""

    tolerance = 0.01
    immediate = False

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        return ThreadSafeTimerQueue(TimerWheel(crossThread(clock), monitor=monitor), None, never)


class CrossThreadReactorQueueModelTests(ModelMixin, SynchronousTestCase):
    immediate = False

    def makeQueue(self, clock: Clock, monitor: TimerQueueCounters) -> Any:
        inner = ReactorTimerQueue(crossThread(clock), monitor=monitor)
        return ThreadSafeTimerQueue(inner, None, never)


def never() -> bool:
    return False
