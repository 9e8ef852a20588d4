"""
L{TimerWheel}: a hashed timing wheel implementing L{IQueueTimers}.

Time is cut into ticks of C{granularity} seconds, counted from the reactor's
epoch.  A timer due at C{deadline} belongs to tick C{ceil(deadline /
granularity)}, so it never fires early and, when the reactor is not stalled,
at most one granularity late.  The wheel has C{slots} slots (a power of two);
slot C{tick % slots} holds, in a dict, the timers of that tick.  Set, update
and cancel are O(1) dict operations.

Timeouts longer than one revolution (C{slots * granularity} seconds, 40.96 s
by default) wait in an overflow heap, ordered by tick, and move into the wheel
once they come within a revolution: O(log n) for those long timers only, and
the expiry work stays proportional to the timers that expire, never to all
pending ones.  Cancelled overflow entries are dropped lazily and the heap is
compacted when they outnumber the live ones.

The wheel holds at most one reactor C{DelayedCall}, due at the next tick that
has a timer, and none while it is empty.
"""

from __future__ import annotations

import heapq
import itertools
import math
import numbers
from collections.abc import Iterator
from operator import attrgetter
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from timerserver._queuebase import (
    DEFAULT_MAXIMUM_TIMEOUT,
    QueueHandle,
    TimerQueueBase,
)
from timerserver.interfaces import IMonitorTimerQueue, IQueueTimers

_Slot = dict["WheelTimerHandle", None]
_Entry = list[Any]  # [tick, sequence, handle or None when cancelled]

_byDeadline = attrgetter("deadline")
_MAXIMUM_TICKS = 2**52
"""Beyond this many ticks a float deadline no longer maps to one tick."""


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
    A hashed timing wheel: O(1) set, update and cancel, one reactor call.

    @param granularity: seconds per tick; timers fire at most this late.
    @param slots: ticks per revolution, a power of two.
    """

    _handleClass = WheelTimerHandle

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        granularity: float = 0.01,
        maximumTimeout: float = DEFAULT_MAXIMUM_TIMEOUT,
        monitor: IMonitorTimerQueue | None = None,
        slots: int = 4096,
    ) -> None:
        if isinstance(granularity, bool) or not isinstance(granularity, numbers.Real):
            raise TypeError(f"granularity must be a number, not {granularity!r}")
        if not (0 < granularity < math.inf):
            raise ValueError(f"granularity must be finite and > 0, not {granularity!r}")
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"slots must be an int, not {slots!r}")
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two >= 2, not {slots!r}")
        TimerQueueBase.__init__(self, reactor, maximumTimeout, monitor)
        granularity = float(granularity)
        now = self._seconds()
        if (now + self.maximumTimeout) / granularity > _MAXIMUM_TICKS:
            raise ValueError(
                f"maximumTimeout {maximumTimeout!r} is too long for granularity "
                f"{granularity!r}: deadlines would no longer map to ticks"
            )
        self.granularity: float = granularity
        self._size: int = slots
        self._mask: int = slots - 1
        self._slots: list[_Slot | None] = [None] * slots
        self._tick: int = math.floor(now / granularity)  # every tick <= this is done
        self._inSlots: int = 0
        self._overflow: list[_Entry] = []
        self._overflowLive: int = 0
        self._sequence: Iterator[int] = itertools.count()
        self._call: IDelayedCall | None = None
        self._callTick: int = 0
        self._advancing: bool = False

    def __repr__(self) -> str:
        return (
            f"<TimerWheel at {id(self):#x}, granularity={self.granularity}, "
            f"pending={self._inSlots + self._overflowLive}>"
        )

    # Placement

    def _place(self, h: WheelTimerHandle, tick: int) -> None:
        """Put the not-placed C{h} into the slot or overflow entry of C{tick}."""
        if tick - self._tick < self._size:
            index = tick & self._mask
            slot = self._slots[index]
            if slot is None:
                slot = self._slots[index] = {}
            slot[h] = None
            h.slot = slot
            self._inSlots += 1
        else:
            entry = [tick, next(self._sequence), h]
            heapq.heappush(self._overflow, entry)
            h.slot = entry
            self._overflowLive += 1

    def _unplace(self, h: WheelTimerHandle) -> None:
        slot = h.slot
        if type(slot) is dict:
            del slot[h]
            self._inSlots -= 1
        else:
            slot[2] = None  # type: ignore[index]
            self._overflowLive -= 1
            if self._overflowLive * 2 < len(self._overflow) - 64:
                self._overflow = [e for e in self._overflow if e[2] is not None]
                heapq.heapify(self._overflow)
        h.slot = None

    def _arm(self, h: WheelTimerHandle, timeout: float, now: float) -> None:
        if h.slot is not None:
            self._unplace(h)
        elif not self._advancing and self._inSlots == 0 and self._overflowLive == 0:
            # Nothing pending: the wheel may skip the idle ticks.
            self._tick = max(self._tick, math.floor(now / self.granularity))
        deadline = now + timeout
        tick = math.ceil(deadline / self.granularity)
        if tick <= self._tick:
            tick = self._tick + 1
        h.deadline = deadline
        self._place(h, tick)
        if not self._advancing and (self._call is None or tick < self._callTick):
            self._schedule(tick, now)

    def _disarm(self, h: WheelTimerHandle) -> None:
        self._unplace(h)
        h.deadline = None
        if self._inSlots == 0 and self._overflowLive == 0 and self._call is not None:
            self._call.cancel()
            self._call = None

    def _cancelAll(self) -> list[WheelTimerHandle]:
        pending = [h for slot in self._slots if slot for h in slot]
        pending.extend(e[2] for e in self._overflow if e[2] is not None)
        for h in pending:
            h.slot = None
        # In place: a wheel shut down by a callback is still walking this list.
        self._slots[:] = [None] * self._size
        self._overflow = []
        self._inSlots = self._overflowLive = 0
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
        self._call = self._reactor.callLater(max(0.0, tick * self.granularity - now), self._advance)

    def _advance(self) -> None:
        """Fire every timer of every tick up to now, then sleep until the next."""
        self._call = None
        now = self._seconds()
        nowTick = max(math.floor(now / self.granularity), self._callTick)
        self._advancing = True
        try:
            self._runThrough(nowTick, now)
        finally:
            self._advancing = False
        if self._inSlots:
            tick = self._tick + 1
            while not self._slots[tick & self._mask]:
                tick += 1
            self._schedule(tick, now)
        elif self._overflowLive:
            self._schedule(self._firstOverflowTick(), now)

    def _firstOverflowTick(self) -> int:
        overflow = self._overflow
        while overflow[0][2] is None:
            heapq.heappop(overflow)
        tick: int = overflow[0][0]
        return tick

    def _runThrough(self, nowTick: int, now: float) -> None:
        slots, mask, size = self._slots, self._mask, self._size
        while self._tick < nowTick:
            if self._inSlots == 0:
                if self._overflowLive == 0:
                    self._tick = nowTick
                    return
                # Skip the empty ticks before the first overflow timer.
                self._tick = max(self._tick, min(nowTick, self._firstOverflowTick() - 1))
                if self._tick == nowTick:
                    return
            self._tick += 1
            overflow = self._overflow
            while overflow and overflow[0][0] - self._tick < size:
                entry = heapq.heappop(overflow)
                h = entry[2]
                if h is not None:
                    self._overflowLive -= 1
                    self._place(h, entry[0])
            index = self._tick & mask
            batch = slots[index]
            if batch:
                slots[index] = None
                self._fire(batch, now)

    def _fire(self, batch: _Slot, now: float) -> None:
        """Expire the timers of one tick, in deadline order."""
        handles = sorted(batch, key=_byDeadline) if len(batch) > 1 else list(batch)
        for h in handles:
            if h.slot is not batch:
                continue  # cancelled, re-armed or destroyed by an earlier callback
            self._inSlots -= 1
            h.slot = None
            if h.deadline > now:  # type: ignore[operator]
                # A float rounding put it a hair early: fire it next tick.
                self._place(h, self._tick + 1)
                continue
            h.deadline = None
            self._expire(h)
