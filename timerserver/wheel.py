"""
L{TimerWheel}: a hierarchical hashed timing wheel implementing L{IQueueTimers}.

A timer due at C{deadline} waits in the slot of the first tick of
C{granularity} seconds at or after it (L{timerserver._wheelslots}, which
keeps the slots: set, update and cancel are O(1) dict operations for any
timeout up to C{slots * upperSlots * granularity}, 11.6 hours by default), so
it never fires early and, when the reactor is not stalled, at most one
granularity late; a deadline that falls on a tick fires at that tick.
Expiry work is proportional to the timers that expire and the ones that
cascade, never to all pending ones.

The wheel holds at most one reactor C{DelayedCall}, due at the next tick that
has work, and none while it is empty (unless made with C{keepCall=True}: then
the call of a wheel that empties is left to lapse at its time).
"""

from __future__ import annotations

import math
from operator import attrgetter

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from timerserver._arguments import positiveFinite
from timerserver._queuebase import DEFAULT_MAXIMUM_TIMEOUT, TimerQueueBase
from timerserver._wheelslots import Slot, WheelSlots, WheelTimerHandle
from timerserver.interfaces import IMonitorTimerQueue, IQueueTimers

__all__ = ["TimerWheel", "WheelTimerHandle"]

_byDeadline = attrgetter("deadline")
_MAXIMUM_TICKS = 2**52
"""Beyond this many ticks a float deadline no longer maps to one tick."""


@implementer(IQueueTimers)
class TimerWheel(TimerQueueBase[WheelTimerHandle], WheelSlots):
    """
    A hierarchical hashed timing wheel: O(1) set, update and cancel, and one
    reactor call for all its timers.

    @param granularity: seconds per tick; timers fire at most this late.
    @param slots: ticks per revolution of level 0, a power of two.
    @param upperSlots: revolutions of level 1, a power of two.
    @param keepCall: when the last pending timer is cancelled, leave the
        reactor call to lapse at its time (it wakes the wheel once, to find
        nothing to do) instead of cancelling it.  A wheel that empties and
        fills again many times a second, as a server's whose only
        connections come and go, then saves a C{callLater} and a cancel each
        time.  L{shutdown} cancels the call either way.  Off by default, so
        that a test that cancels its timers leaves a clean reactor without
        calling L{shutdown}.
    """

    _handleClass = WheelTimerHandle

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        granularity: float = 0.01,
        maximumTimeout: float = DEFAULT_MAXIMUM_TIMEOUT,
        monitor: IMonitorTimerQueue | None = None,
        slots: int = 1024,
        upperSlots: int = 4096,
        keepCall: bool = False,
    ) -> None:
        granularity = positiveFinite("granularity", granularity)
        WheelSlots.__init__(self, granularity, slots, upperSlots)
        TimerQueueBase.__init__(self, reactor, maximumTimeout, monitor)
        now = self._reactor.seconds()
        if (now + self.maximumTimeout) / granularity > _MAXIMUM_TICKS:
            raise ValueError(
                f"maximumTimeout {maximumTimeout!r} is too long for granularity "
                f"{granularity!r}: deadlines would no longer map to ticks"
            )
        self._tick = math.floor(now / granularity)
        self._call: IDelayedCall | None = None
        self._callTick: int = 0
        self._keepCall = bool(keepCall)
        self._advancing: bool = False
        self._firing: Slot | None = None
        """The batch L{_fire} is expiring, taken out of its slot: its unfired timers are pending."""

    def __repr__(self) -> str:
        pending = self._inSlots + self._inUpper + self._overflowLive
        return f"<TimerWheel at {id(self):#x}, granularity={self.granularity}, pending={pending}>"

    def _arm(self, h: WheelTimerHandle, timeout: float, now: float) -> None:
        deadline = now + timeout
        if h.slot is not None:
            if deadline >= h.deadline:  # type: ignore[operator]
                # Later: leave it in its slot, which re-places it when it comes
                # due (as DelayedCall.reset does), so that an idle timeout
                # pushed back on every read costs no slot move.
                h.deadline = deadline
                return
            self._unplace(h)
        elif not (self._advancing or self._inSlots or self._inUpper or self._overflowLive):
            # Nothing pending (and so no reactor call, or a kept one that will
            # find nothing to do): the wheel starts again from now, past its
            # idle ticks or back after the clock went back.
            self._tick = math.floor(now / self.granularity)
        h.deadline = deadline
        tick = math.ceil(deadline * self._perSecondDown)
        if tick <= self._tick:
            tick = self._tick + 1
        wake = self._place(h, tick)
        if not self._advancing and (self._call is None or wake < self._callTick):
            self._schedule(wake, now)

    def _disarm(self, h: WheelTimerHandle) -> None:
        self._unplace(h)
        h.deadline = None
        if (
            self._call is not None
            and not self._keepCall
            and not (self._inSlots or self._inUpper or self._overflowLive)
        ):
            self._call.cancel()
            self._call = None

    def _cancelAll(self) -> list[WheelTimerHandle]:
        pending = self._unplaceAll()
        firing = self._firing
        if firing is not None:  # shut down by a callback: the rest of its batch too
            rest = [h for h in firing if h.slot is firing]
            for h in rest:
                h.slot = None
            pending.extend(rest)
        if self._call is not None:
            self._call.cancel()
            self._call = None
        return pending

    # Time

    def _schedule(self, tick: int, now: float) -> None:
        """Have the reactor wake the wheel at C{tick}, replacing any call."""
        if self._call is not None:
            self._call.cancel()
        self._callTick = tick
        self._call = self._reactor.callLater(max(0.0, tick / self._perSecond - now), self._advance)

    def _advance(self) -> None:
        """Fire every timer of every tick up to now, then sleep until the next."""
        self._call = None
        now = self._reactor.seconds()
        nowTick = max(math.floor(now / self.granularity), self._callTick)
        self._advancing = True
        try:
            self._runThrough(nowTick, now)
        finally:
            # Even past a callback's BaseException; and from when the
            # callbacks are done, not from when they began.
            self._advancing = False
            wake = self._nextWake()
            if wake is not None:
                self._schedule(wake, self._reactor.seconds())

    def _runThrough(self, nowTick: int, now: float) -> None:
        while self._tick < nowTick:
            if self._inSlots == 0:
                # Level 0 is empty: skip to just before the next tick with work.
                wake = self._nextWake()
                if wake is None:
                    self._tick = nowTick
                    return
                self._tick = max(self._tick, min(nowTick, wake - 1))
                if self._tick == nowTick:
                    return
            self._tick += 1
            if not self._tick & self._mask:
                self._cascade()
            index = self._tick & self._mask
            batch = self._slots[index]
            if batch:
                self._slots[index] = None
                self._fire(batch, now)

    def _fire(self, batch: Slot, now: float) -> None:
        """Expire the timers of one tick, in deadline order."""
        handles = sorted(batch, key=_byDeadline) if len(batch) > 1 else list(batch)
        # A stalled reactor catching up: a timer pushed back into a later
        # tick (by the "later" path of _arm) waits for that tick's turn.
        catchingUp = now >= (self._tick + 1) / self._perSecond  # past the next tick's time
        self._firing = batch
        try:
            for h in handles:
                if h.slot is not batch:
                    continue  # cancelled, re-armed or destroyed by an earlier callback
                self._inSlots -= 1
                h.slot = None
                deadline: float = h.deadline  # type: ignore[assignment]  # pending: not None
                if deadline > now or catchingUp:
                    # Re-armed later since it was placed (or a float rounding put
                    # it a hair early): place it where its deadline now belongs.
                    tick = self._tickOf(deadline)
                    if deadline > now or tick > self._tick:
                        self._place(h, max(tick, self._tick + 1))
                        continue
                h.deadline = None
                self._expire(h)
        except BaseException:
            # Only a BaseException gets past _expire (SystemExit, KeyboardInterrupt):
            # the rest of this tick's timers stay pending, for the next tick.
            for h in handles:
                if h.slot is batch:
                    self._inSlots -= 1
                    h.slot = None
                    self._place(h, self._tick + 1)
            raise
        finally:
            self._firing = None
