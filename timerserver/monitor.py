"""
L{TimerQueueCounters}: an L{IMonitorTimerQueue} that counts.
"""

from __future__ import annotations

from zope.interface import implementer

from timerserver.interfaces import IMonitorTimerQueue


@implementer(IMonitorTimerQueue)
class TimerQueueCounters:
    """
    Counts each operation of the queues it monitors, and keeps how many
    timers are pending and how many handles are alive.

    One instance may monitor several queues; the figures are their sums.
    """

    __slots__ = (
        "cancelled",
        "created",
        "destroyed",
        "fired",
        "oneShotSet",
        "pending",
        "set",
        "updated",
    )

    def __init__(self) -> None:
        self.created = 0
        self.set = 0
        self.updated = 0
        self.oneShotSet = 0
        self.fired = 0
        self.cancelled = 0
        self.destroyed = 0
        self.pending = 0

    @property
    def live(self) -> int:
        """Handles created and not yet destroyed."""
        return self.created - self.destroyed

    def timerCreated(self) -> None:
        self.created += 1

    def timerSet(self, wasPending: bool) -> None:
        self.set += 1
        if not wasPending:
            self.pending += 1

    def timerUpdated(self, wasPending: bool, wasUpdated: bool) -> None:
        self.updated += 1
        if not wasPending:
            self.pending += 1

    def oneShotTimerSet(self) -> None:
        self.oneShotSet += 1
        self.pending += 1

    def timerFired(self) -> None:
        self.fired += 1
        self.pending -= 1

    def timerCancelled(self, wasPending: bool) -> None:
        self.cancelled += 1
        if wasPending:
            self.pending -= 1

    def timerDestroyed(self, wasPending: bool) -> None:
        self.destroyed += 1
        if wasPending:
            self.pending -= 1

    def __repr__(self) -> str:
        return (
            f"<TimerQueueCounters pending={self.pending} live={self.live} "
            f"created={self.created} set={self.set} updated={self.updated} "
            f"oneShotSet={self.oneShotSet} fired={self.fired} "
            f"cancelled={self.cancelled} destroyed={self.destroyed}>"
        )
