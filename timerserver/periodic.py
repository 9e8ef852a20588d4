"""
L{Periodic}: call a function every C{interval} seconds from one handle of an
L{IQueueTimers}, on a schedule that does not drift.

How it differs from C{twisted.internet.task.LoopingCall}:

 - It re-arms one queue handle; C{LoopingCall} makes a new C{DelayedCall}
   (about 430 bytes) on every tick.  On a L{TimerWheel}, 10,000 of them
   cost one reactor call between them.
 - The first call comes one interval after L{start} (C{LoopingCall.start}
   calls at once unless C{now=False}).
 - Each call is due one interval after the previous one was due, not after
   it ran.  A call is made less than two intervals late: when it is later
   than that (a stalled reactor), the older calls are skipped, counted in
   L{skipped} and passed to the function, and the schedule goes on from the
   latest one due, so at most two calls go out back to back.  Lateness within
   the queue's granularity never counts as a skip (C{LoopingCall} counts
   every missed interval): the limit is one interval plus the granularity
   when that is more than two intervals.  But a queue fires a handle at most
   once a tick, so an interval shorter than its granularity cannot be kept:
   one call a tick is made, and the others fall behind until they are
   skipped and counted.
 - The function gets how late the call is and how many were skipped just
   before it; it is not given a Deferred to wait for.
 - When the function raises, the queue logs the error and the calls stop,
   as C{LoopingCall}'s do: L{running} becomes False, and L{start} starts
   again.
 - A L{Periodic} belongs to the reactor thread, as C{LoopingCall} does, even
   over a L{ThreadSafeTimerQueue
   <timerserver.threadsafe.ThreadSafeTimerQueue>}: call L{start
   <Periodic.start>}, L{stop <Periodic.stop>} and L{close <Periodic.close>}
   there (from another thread, through C{reactor.callFromThread}).  From
   another thread, a L{stop <Periodic.stop>} made while the function runs
   can be undone by the re-arm that follows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from timerserver._queuebase import TimerQueueBase
from timerserver.interfaces import IQueueTimers, ITimer, TimerHandle


def _closed(late: float, skipped: int) -> None:
    """The function of a closed L{Periodic}."""


@implementer(ITimer)
class Periodic:
    """
    Calls C{function(late, skipped)} every C{interval} seconds once started.
    Start, stop and close it in the reactor thread, whatever its queue (see
    the module's docstring): it has no lock of its own.

    @param queue: the queue the handle is taken from.
    @param interval: seconds between calls, > 0.
    @param function: called with C{late}, the seconds this call is behind
        its due time, and C{skipped}, how many calls were skipped just before.
    @param clock: the clock of the schedule: the queue's own (C{queue.clock})
        if C{None}, so that there is one time source.
    @ivar skipped: calls skipped since this was made.
    @ivar due: when the next call is due, on C{clock}; inside the function,
        when the call being made was due (it ran C{late} seconds after).
    @ivar running: whether its next call is set: True from L{start} until
        L{stop} or L{close}, or until the function raises (the calls stop)
        or leaves the queue shut down; inside the function, True unless it
        stopped it.  A queue shut down from outside cancels the call without
        telling it.
    """

    __slots__ = (
        "_handle", "_ours", "_skipAfter", "clock", "due", "function", "interval", "queue",
        "running", "skipped",
    )  # fmt: skip

    def __init__(
        self,
        queue: IQueueTimers,
        interval: float,
        function: Callable[[float, int], object],
        clock: IReactorTime | None = None,
    ) -> None:
        if not (isinstance(interval, (int, float)) and 0 < interval <= queue.maximumTimeout):
            raise ValueError(
                f"interval must be > 0 and <= {queue.maximumTimeout}, not {interval!r}"
            )
        if clock is None:
            clock = getattr(queue, "clock", None)
        if clock is None:
            raise TypeError(f"{queue!r} has no clock: pass clock=")
        self.queue = queue
        self.clock: IReactorTime = clock
        self.interval = float(interval)
        # Late by this much, or more, a call skips the older ones: two
        # intervals, or one plus the queue's granularity if that is more,
        # so that lateness within the granularity is never a skip.
        try:
            past = self.interval + getattr(queue, "granularity", 0.0)
        except TypeError:  # a third party's queue may use the name for something else
            past = self.interval
        twice = 2.0 * self.interval
        self._skipAfter = past if past > twice else twice
        self.function = function
        self.skipped = 0
        self.running = False
        self.due = 0.0
        self._handle: TimerHandle | None = queue.createTimer()
        # One of our own queues (its setTimer not overridden) on the same
        # clock is set again without setTimer's checks, which cannot fail
        # for our handle and our timeout; any other queue through setTimer.
        ours: TimerQueueBase[Any] | None = queue if isinstance(queue, TimerQueueBase) else None
        if ours is not None and (
            type(ours).setTimer is not TimerQueueBase.setTimer or clock is not ours.clock
        ):
            ours = None
        self._ours = ours

    def sibling(self, function: Callable[[float, int], object]) -> Periodic:
        """
        Another L{Periodic} (this class, not a subclass) on this one's
        queue, clock and interval, calling C{function}, with a handle of its
        own: made without checking them again, as a server making one a
        connection would.  A closed L{Periodic} makes siblings too.
        """
        p = Periodic.__new__(Periodic)
        p.queue = self.queue
        p.clock = self.clock
        p.interval = self.interval
        p._skipAfter = self._skipAfter
        p._ours = self._ours
        p.function = function
        p.skipped = 0
        p.running = False
        p.due = 0.0
        p._handle = self.queue.createTimer()
        return p

    def start(self) -> None:
        """Call the function every interval, the first time one interval from now."""
        handle = self._handle
        if handle is None:
            raise RuntimeError("start() after close()")
        # Running once set: setTimer raises on a queue that was shut down,
        # and then nothing is set.
        self.running = False
        now = self.clock.seconds()
        self.due = now + self.interval
        if self._ours is not None:
            self._ours._setOwn(handle, self, self.interval, now)
        else:
            self.queue.setTimer(handle, self, self.interval)
        self.running = True

    def stop(self) -> None:
        """Stop calling; L{start} may start again."""
        self.running = False
        if self._handle is not None:
            self.queue.cancelTimer(self._handle)

    def close(self) -> None:
        """Stop for good and give the handle back to the queue."""
        self.running = False
        handle, self._handle = self._handle, None
        if handle is not None:
            self.queue.destroyTimer(handle)
        # The function is usually a method of whoever holds this Periodic:
        # drop it, so that the pair is freed at once, not by the collector.
        self.function = _closed

    def onTimer(self, userData: object) -> None:
        interval = self.interval
        now = self.clock.seconds()
        late = now - self.due
        skipped = 0
        if late >= self._skipAfter:
            # Two intervals or more late (a stall, not the queue's granularity):
            # this call stands for the latest one due; the older ones are skipped.
            skipped = math.floor(late / interval)
            self.skipped += skipped
            self.due += skipped * interval
            late -= skipped * interval
        due = self.due
        try:  # free unless it raises (CPython 3.11's exceptions)
            self.function(late, skipped)
            # Unless the function stopped, closed or restarted it (start() moves
            # the schedule and sets the handle itself).
            if self.running and self._handle is not None and self.due == due:
                due = self.due = due + interval
                if self._ours is not None:
                    self._ours._setAgain(self._handle, due - now if due > now else 0.0, now)
                else:
                    self.queue.setTimer(self._handle, self, due - now if due > now else 0.0)
        except BaseException:
            self._raised()
            raise

    def _raised(self) -> None:
        """
        The function, or setting the next call, raised: the calls go on only
        if the function set them again itself (a restart before it raised).
        """
        handle = self._handle
        try:
            self.running = handle is not None and self.queue.isSet(handle)
        except Exception:
            self.running = False
