"""
L{TimerWheel}: a hierarchical hashed timing wheel implementing L{IQueueTimers}.

Time is cut into ticks of C{granularity} seconds, counted from the reactor's
epoch: tick C{n} is at C{n / (1 / granularity)} seconds (with a granularity
of 0.01, tick 35 is at 0.35, not at C{35 * 0.01 == 0.35000000000000003}).  A
timer due at C{deadline} belongs to the first tick at or after it, so it
never fires early and, when the reactor is not stalled, at most one
granularity late; a deadline that falls on a tick fires at that tick.

Two levels of slots, each a dict of handles, make set, update and cancel O(1)
dict operations for any timeout up to C{slots * upperSlots * granularity}
(11.6 hours by default):

 - level 0 has C{slots} slots of one tick each, for timers due within one
   revolution (C{slots} ticks, 10.24 s by default);
 - level 1 has C{upperSlots} slots of one revolution each.  When level 0
   starts a revolution, the level-1 slot of that revolution is moved down
   into level 0 ("cascaded"): each timer moves down at most once.

Longer timeouts wait in an overflow heap ordered by tick (O(log n), and only
for them) and move up into the wheel once they come within reach.  Cancelled
overflow entries are dropped lazily; the heap is compacted when they
outnumber the live ones.  Expiry work is proportional to the timers that
expire and the ones that cascade, never to all pending ones.

The wheel holds at most one reactor C{DelayedCall}, due at the next tick that
has work, and none while it is empty.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from operator import attrgetter
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from timerserver._arguments import positiveFinite
from timerserver._queuebase import DEFAULT_MAXIMUM_TIMEOUT, QueueHandle, TimerQueueBase
from timerserver.interfaces import IMonitorTimerQueue, IQueueTimers

_Slot = dict["WheelTimerHandle", None]
_Entry = list[Any]  # [tick, sequence, handle or None when cancelled]


class _UpperSlot(dict["WheelTimerHandle", None]):
    """A level-1 slot: a dict of its own type, so a handle knows its level."""

    __slots__ = ()


_byDeadline = attrgetter("deadline")
_MAXIMUM_TICKS = 2**52
"""Beyond this many ticks a float deadline no longer maps to one tick."""


def _powerOfTwo(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 2 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 2, not {value!r}")
    return value


class WheelTimerHandle(QueueHandle):
    """
    A handle of a L{TimerWheel}.  C{slot} is the slot dict or overflow entry
    it waits in, C{None} while not pending.
    """

    __slots__ = ("slot",)

    def __init__(self, queue: object) -> None:
        QueueHandle.__init__(self, queue)
        self.slot: _Slot | _Entry | None = None


@implementer(IQueueTimers)
class TimerWheel(TimerQueueBase[WheelTimerHandle]):
    """
    A hierarchical hashed timing wheel: O(1) set, update and cancel, and one
    reactor call for all its timers.

    @param granularity: seconds per tick; timers fire at most this late.
    @param slots: ticks per revolution of level 0, a power of two.
    @param upperSlots: revolutions of level 1, a power of two.
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
    ) -> None:
        granularity = positiveFinite("granularity", granularity)
        _powerOfTwo("slots", slots)
        _powerOfTwo("upperSlots", upperSlots)
        TimerQueueBase.__init__(self, reactor, maximumTimeout, monitor)
        now = self._reactor.seconds()
        if (now + self.maximumTimeout) / granularity > _MAXIMUM_TICKS:
            raise ValueError(
                f"maximumTimeout {maximumTimeout!r} is too long for granularity "
                f"{granularity!r}: deadlines would no longer map to ticks"
            )
        self.granularity: float = granularity
        self._perSecond: float = 1.0 / granularity
        """Ticks a second: tick C{n} is at C{n / _perSecond} seconds."""
        self._perSecondDown: float = self._perSecond * (1.0 - 2.0**-50)
        """
        A hair less, for L{_arm}: C{ceil(deadline * _perSecondDown)} is the
        tick of a deadline on a tick's time, whatever the rounding (at most
        3 * 2**-53 of it), or one tick early for a deadline a few ulps past
        one, which L{_fire} then moves on: never late, never early, and no
        dearer than C{ceil(deadline / granularity)}.
        """
        self._size: int = slots
        self._mask: int = slots - 1
        self._shift: int = slots.bit_length() - 1
        self._upperSize: int = upperSlots
        self._upperMask: int = upperSlots - 1
        self._slots: list[_Slot | None] = [None] * slots
        self._upper: list[_UpperSlot | None] = [None] * upperSlots
        self._tick: int = math.floor(now / granularity)  # every tick <= this is done
        self._inSlots: int = 0
        self._inUpper: int = 0
        self._overflow: list[_Entry] = []
        self._overflowLive: int = 0
        self._sequence: Iterator[int] = itertools.count()
        self._call: IDelayedCall | None = None
        self._callTick: int = 0
        self._advancing: bool = False
        self._firing: _Slot | None = None
        """The batch L{_fire} is expiring, taken out of its slot: its unfired timers are pending."""

    def __repr__(self) -> str:
        pending = self._inSlots + self._inUpper + self._overflowLive
        return f"<TimerWheel at {id(self):#x}, granularity={self.granularity}, pending={pending}>"

    # Placement

    def _place(self, h: WheelTimerHandle, tick: int) -> int:
        """
        Put the unplaced C{h} where C{tick} belongs; return the tick at which
        the wheel must wake up for it.
        """
        if tick - self._tick < self._size:
            index = tick & self._mask
            slot = self._slots[index]
            if slot is None:
                slot = self._slots[index] = {}
            slot[h] = None
            h.slot = slot
            self._inSlots += 1
            return tick
        revolution = tick >> self._shift
        if revolution - (self._tick >> self._shift) < self._upperSize:
            index = revolution & self._upperMask
            upper = self._upper[index]
            if upper is None:
                upper = self._upper[index] = _UpperSlot()
            upper[h] = None
            h.slot = upper
            self._inUpper += 1
            return revolution << self._shift
        entry = [tick, next(self._sequence), h]
        heapq.heappush(self._overflow, entry)
        h.slot = entry
        self._overflowLive += 1
        return (revolution - self._upperSize + 1) << self._shift

    def _tickOf(self, deadline: float) -> int:
        """The first tick at or after C{deadline}: L{_arm}'s, checked."""
        tick = math.ceil(deadline * self._perSecondDown)
        return tick + 1 if tick / self._perSecond < deadline else tick

    def _unplace(self, h: WheelTimerHandle) -> None:
        slot: Any = h.slot  # a level-0 slot, a level-1 slot or an overflow entry
        kind = type(slot)
        if kind is dict:
            del slot[h]
            self._inSlots -= 1
        elif kind is _UpperSlot:
            del slot[h]
            self._inUpper -= 1
        else:
            slot[2] = None
            self._overflowLive -= 1
            if self._overflowLive * 2 < len(self._overflow) - 64:
                self._overflow = [e for e in self._overflow if e[2] is not None]
                heapq.heapify(self._overflow)
        h.slot = None

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
            # Nothing pending (and so no reactor call): the wheel starts again
            # from now, past its idle ticks or back after the clock went back.
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
        if self._call is not None and not (self._inSlots or self._inUpper or self._overflowLive):
            self._call.cancel()
            self._call = None

    def _cancelAll(self) -> list[WheelTimerHandle]:
        pending = [h for slot in self._slots if slot for h in slot]
        pending.extend(h for slot in self._upper if slot for h in slot)
        pending.extend(e[2] for e in self._overflow if e[2] is not None)
        firing = self._firing
        if firing is not None:  # shut down by a callback: the rest of its batch too
            pending.extend(h for h in firing if h.slot is firing)
        for h in pending:
            h.slot = None
        # In place: a wheel shut down by a callback is still walking these.
        self._slots[:] = [None] * self._size
        self._upper[:] = [None] * self._upperSize
        self._overflow = []
        self._inSlots = self._inUpper = self._overflowLive = 0
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

    def _nextRevolution(self) -> int:
        """The first tick of the next level-0 revolution: a cascade point."""
        return ((self._tick >> self._shift) + 1) << self._shift

    def _firstOverflowWake(self) -> int:
        overflow = self._overflow
        while overflow[0][2] is None:
            heapq.heappop(overflow)
        revolution: int = overflow[0][0] >> self._shift
        return max(revolution - self._upperSize + 1, 0) << self._shift

    def _nextWake(self) -> int | None:
        """The next tick with work to do, or C{None} if the wheel is empty."""
        if self._inSlots:
            tick = self._tick + 1
            while not self._slots[tick & self._mask]:
                tick += 1
            return tick
        if self._inUpper:
            return self._nextRevolution()
        if self._overflowLive:
            return max(self._firstOverflowWake(), self._tick + 1)
        return None

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

    def _cascade(self) -> None:
        """A new revolution: bring its timers down from level 1 and overflow."""
        revolution = self._tick >> self._shift
        overflow = self._overflow
        while overflow and (overflow[0][0] >> self._shift) - revolution < self._upperSize:
            entry = heapq.heappop(overflow)
            h = entry[2]
            if h is not None:
                self._overflowLive -= 1
                self._place(h, max(entry[0], self._tickOf(h.deadline)))
        index = revolution & self._upperMask
        upper = self._upper[index]
        if upper:
            self._upper[index] = None
            self._inUpper -= len(upper)
            tickOf = self._tickOf
            for h in upper:
                self._place(h, max(tickOf(h.deadline), self._tick))  # type: ignore[arg-type]

    def _fire(self, batch: _Slot, now: float) -> None:
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
