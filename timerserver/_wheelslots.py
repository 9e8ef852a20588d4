"""
L{WheelSlots}: where each pending timer of a L{timerserver.wheel.TimerWheel}
waits, by tick, and nothing else: no reactor, no callbacks.

Time is cut into ticks of C{granularity} seconds, counted from the epoch:
tick C{n} is at C{n / (1 / granularity)} seconds (with a granularity of
0.01, tick 35 is at 0.35, not at C{35 * 0.01 == 0.35000000000000003}).  A
timer due at C{deadline} belongs to the first tick at or after it.

Two levels of slots, each a dict of handles, make placing and unplacing a
handle O(1) dict operations for any tick up to C{slots * upperSlots} ahead
(11.6 hours by default, at 0.01 s a tick):

 - level 0 has C{slots} slots of one tick each, for timers due within one
   revolution (C{slots} ticks, 10.24 s by default);
 - level 1 has C{upperSlots} slots of one revolution each.  When level 0
   starts a revolution, the level-1 slot of that revolution is moved down
   into level 0 ("cascaded"): each timer moves down at most once.

Later ticks wait in an overflow heap ordered by tick (O(log n), and only for
them) and move up into the wheel once they come within reach.  Unplaced
overflow entries are dropped lazily; the heap is compacted when they
outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from typing import Any

from timerserver._queuebase import QueueHandle

Slot = dict["WheelTimerHandle", None]
"""A level-0 slot: the handles due at its tick, in the order they came."""
Entry = list[Any]
"""An overflow entry: C{[tick, sequence, handle]}, the handle C{None} once unplaced."""


class _UpperSlot(dict["WheelTimerHandle", None]):
    """A level-1 slot: a dict of its own type, so a handle knows its level."""

    __slots__ = ()


def _powerOfTwo(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 2 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 2, not {value!r}")
    return value


class WheelTimerHandle(QueueHandle):
    """
    A handle of a L{TimerWheel <timerserver.wheel.TimerWheel>}.  C{slot} is
    the slot dict or overflow entry it waits in, C{None} while not pending.
    """

    __slots__ = ("slot",)

    def __init__(self, queue: object) -> None:
        QueueHandle.__init__(self, queue)
        self.slot: Slot | Entry | None = None


class WheelSlots:
    """
    The slots of a hierarchical hashed timing wheel.  Every tick up to
    C{_tick} is done: the owner advances C{_tick}, calls L{_cascade} at the
    first tick of each revolution and takes level 0's slot of each tick.

    @param granularity: seconds per tick, checked by the caller.
    @param slots: ticks per revolution of level 0, a power of two.
    @param upperSlots: revolutions of level 1, a power of two.
    """

    def __init__(self, granularity: float, slots: int, upperSlots: int) -> None:
        _powerOfTwo("slots", slots)
        _powerOfTwo("upperSlots", upperSlots)
        self.granularity: float = granularity
        self._perSecond: float = 1.0 / granularity
        """Ticks a second: tick C{n} is at C{n / _perSecond} seconds."""
        self._perSecondDown: float = self._perSecond * (1.0 - 2.0**-50)
        """
        A hair less: C{ceil(deadline * _perSecondDown)} is the tick of a
        deadline on a tick's time, whatever the rounding (at most 3 * 2**-53
        of it), or one tick early for a deadline a few ulps past one, which
        the owner then moves on: never late, never early, and no dearer than
        C{ceil(deadline / granularity)}.
        """
        self._size: int = slots
        self._mask: int = slots - 1
        self._shift: int = slots.bit_length() - 1
        self._upperSize: int = upperSlots
        self._upperMask: int = upperSlots - 1
        self._slots: list[Slot | None] = [None] * slots
        self._upper: list[_UpperSlot | None] = [None] * upperSlots
        self._tick: int = 0  # every tick <= this is done
        self._inSlots: int = 0
        self._inUpper: int = 0
        self._overflow: list[Entry] = []
        self._overflowLive: int = 0
        self._sequence: Iterator[int] = itertools.count()

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
        """The first tick at or after C{deadline}: C{_perSecondDown}'s, checked."""
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

    def _unplaceAll(self) -> list[WheelTimerHandle]:
        """Empty every slot and the overflow; return the handles that were in them."""
        placed = [h for slot in self._slots if slot for h in slot]
        placed.extend(h for slot in self._upper if slot for h in slot)
        placed.extend(e[2] for e in self._overflow if e[2] is not None)
        for h in placed:
            h.slot = None
        # In place: a wheel emptied by a callback is still walking these.
        self._slots[:] = [None] * self._size
        self._upper[:] = [None] * self._upperSize
        self._overflow = []
        self._inSlots = self._inUpper = self._overflowLive = 0
        return placed

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
