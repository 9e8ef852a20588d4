"""ReactorTimerQueue: the contract, plus what is its own."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.contract import QueueContractMixin
from timerserver import IQueueTimers, ReactorTimerQueue


class ReactorTimerQueueContractTests(QueueContractMixin, SynchronousTestCase):
    def makeQueue(self, clock: Clock, **kwargs: Any) -> ReactorTimerQueue:
        return ReactorTimerQueue(clock, **kwargs)


class ReactorTimerQueueTests(SynchronousTestCase):
    def test_adapter(self) -> None:
        clock = Clock()
        queue = IQueueTimers(clock)
        self.assertIsInstance(queue, ReactorTimerQueue)
        h = queue.createTimer()
        queue.setTimer(h, lambda _: None, 1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_maximumTimeout(self) -> None:
        self.assertEqual(ReactorTimerQueue(Clock()).maximumTimeout, 4294967.294)

    def test_badMaximumTimeout(self) -> None:
        for bad in (0, -1, float("nan"), float("inf"), 10**400):
            self.assertRaises(ValueError, ReactorTimerQueue, Clock(), bad)
        self.assertRaises(TypeError, ReactorTimerQueue, Clock(), "10")

    def test_oneDelayedCallPerPendingTimer(self) -> None:
        clock = Clock()
        queue = ReactorTimerQueue(clock)
        handles = [queue.createTimer() for _ in range(3)]
        for h in handles:
            queue.setTimer(h, lambda _: None, 5)
            queue.setTimer(h, lambda _: None, 7)  # later: reset in place
            queue.setTimer(h, lambda _: None, 2)  # sooner: a new call
        self.assertEqual(len(clock.getDelayedCalls()), 3)
        self.assertEqual(sorted(c.getTime() for c in clock.getDelayedCalls()), [2, 2, 2])

    def test_rearmLaterUsesReset(self) -> None:
        clock = Clock()
        queue = ReactorTimerQueue(clock)
        h = queue.createTimer()
        queue.setTimer(h, lambda _: None, 5)
        [call] = clock.getDelayedCalls()
        queue.setTimer(h, lambda _: None, 9)
        self.assertEqual(clock.getDelayedCalls(), [call])
        self.assertEqual(call.getTime(), 9)

    def test_rearmSoonerDoesNotReset(self) -> None:
        """Sooner cancels and calls again: reset sooner scans the reactor heap."""
        clock = Clock()
        queue = ReactorTimerQueue(clock)
        h = queue.createTimer()
        queue.setTimer(h, lambda _: None, 5)
        [old] = clock.getDelayedCalls()
        queue.setTimer(h, lambda _: None, 1)
        [new] = clock.getDelayedCalls()
        self.assertIsNot(old, new)
        self.assertTrue(old.cancelled)
        self.assertEqual(new.getTime(), 1)


class RealReactorTests(TestCase):
    """Against the real reactor: shutdown leaves it clean for trial's janitor."""

    @defer.inlineCallbacks
    def test_firesAndShutsDownClean(self) -> Any:
        queue = ReactorTimerQueue(reactor)  # type: ignore[arg-type]
        fired: list[object] = []
        h = queue.createTimer()
        queue.setTimer(h, fired.append, 0.01, "real")
        for _ in range(3):
            queue.setTimer(queue.createTimer(), fired.append, 30)
        queue.setOneShotTimer(fired.append, 30)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(fired, ["real"])
        self.assertEqual(queue.shutdown(), 4)
