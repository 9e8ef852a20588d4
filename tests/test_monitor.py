"""TimerQueueCounters on its own, and shared by several queues."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from timerserver import (
    IMonitorTimerQueue,
    ReactorTimerQueue,
    SetTimerIf,
    TimerQueueCounters,
    TimerWheel,
)


class CountersTests(SynchronousTestCase):
    def test_providesInterface(self) -> None:
        self.assertTrue(verifyObject(IMonitorTimerQueue, TimerQueueCounters()))

    def test_pendingFollowsWasPending(self) -> None:
        c = TimerQueueCounters()
        c.timerCreated()
        c.timerSet(False)  # armed
        c.timerSet(True)  # re-armed: still one
        c.timerUpdated(True, False)  # unchanged
        self.assertEqual((c.pending, c.live, c.set, c.updated), (1, 1, 2, 1))
        c.timerCancelled(True)
        c.timerCancelled(False)
        self.assertEqual((c.pending, c.cancelled), (0, 2))
        c.timerUpdated(False, True)
        c.oneShotTimerSet()
        c.timerFired()
        c.timerDestroyed(True)
        self.assertEqual((c.pending, c.live, c.fired, c.destroyed), (0, 0, 1, 1))
        self.assertIn("pending=0", repr(c))

    def test_sharedByTwoQueues(self) -> None:
        clock, c = Clock(), TimerQueueCounters()
        queues = [ReactorTimerQueue(clock, monitor=c), TimerWheel(clock, monitor=c)]
        handles = [q.createTimer() for q in queues for _ in range(3)]
        for q, h in zip([queues[0]] * 3 + [queues[1]] * 3, handles, strict=True):
            q.setTimer(h, lambda _: None, 1)
            q.setTimer(h, lambda _: None, 2, None, SetTimerIf.IF_NOT_SET)
        self.assertEqual((c.pending, c.live, c.set), (6, 6, 12))
        clock.advance(1.5)
        self.assertEqual((c.pending, c.fired), (0, 6))
        for q, h in zip([queues[0]] * 3 + [queues[1]] * 3, handles, strict=True):
            q.destroyTimer(h)
        self.assertEqual(c.live, 0)
