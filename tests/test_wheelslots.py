"""WheelSlots: where a wheel's handles wait, by tick, without a reactor."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from timerserver._queuebase import QueueHandle
from timerserver._wheelslots import WheelSlots, WheelTimerHandle


def handle(deadline: float) -> WheelTimerHandle:
    h = WheelTimerHandle(None)
    h.deadline = deadline
    return h


class WheelTimerHandleTests(SynchronousTestCase):
    def test_startsAsAQueueHandle(self) -> None:
        """A wheel's handle sets QueueHandle's fields itself: the same ones, the same values."""
        queue = object()
        h = WheelTimerHandle(queue)
        reference = object.__new__(WheelTimerHandle)
        QueueHandle.__init__(reference, queue)
        for name in QueueHandle.__slots__:
            self.assertEqual(getattr(h, name), getattr(reference, name), name)
        self.assertIsNone(h.slot)


class WheelSlotsTests(SynchronousTestCase):
    """Eight ticks of 1 s a revolution, four revolutions in level 1."""

    def setUp(self) -> None:
        self.slots = WheelSlots(1.0, 8, 4)

    def test_badShape(self) -> None:
        for slots, upperSlots in ((0, 4), (6, 4), (8, 1), (8, 3)):
            self.assertRaises(ValueError, WheelSlots, 1.0, slots, upperSlots)
        for slots, upperSlots in ((8.0, 4), (8, True)):
            self.assertRaises(TypeError, WheelSlots, 1.0, slots, upperSlots)

    def test_levels(self) -> None:
        """Within a revolution: level 0; within four: level 1; beyond: the overflow."""
        near, far, beyond = handle(5), handle(20), handle(100)
        self.assertEqual(self.slots._place(near, 5), 5)
        self.assertEqual(self.slots._place(far, 20), 16)  # woken at its revolution
        self.assertEqual(self.slots._place(beyond, 100), 72)  # when it comes within reach
        self.assertEqual((self.slots._inSlots, self.slots._inUpper), (1, 1))
        self.assertEqual(self.slots._overflowLive, 1)
        self.assertIs(near.slot, self.slots._slots[5])
        self.assertEqual(self.slots._nextWake(), 5)

    def test_unplace(self) -> None:
        handles = [handle(t) for t in (3, 20, 100)]
        for h in handles:
            self.slots._place(h, int(h.deadline or 0))
        for h in handles:
            self.slots._unplace(h)
            self.assertIsNone(h.slot)
        self.assertEqual(
            (self.slots._inSlots, self.slots._inUpper, self.slots._overflowLive), (0, 0, 0)
        )
        self.assertIsNone(self.slots._nextWake())

    def test_cascade(self) -> None:
        """At a revolution's first tick its level-1 slot and reachable overflow move down."""
        far, beyond = handle(17.5), handle(44)
        self.slots._place(far, 18)
        self.slots._place(beyond, 44)
        self.assertEqual(self.slots._overflowLive, 1)
        self.slots._tick = 16
        self.slots._cascade()
        self.assertIs(far.slot, self.slots._slots[18 & 7])
        self.assertEqual(self.slots._inUpper, 1)  # beyond: now in level 1
        self.assertEqual(self.slots._overflowLive, 0)
        self.assertEqual(self.slots._nextWake(), 18)

    def test_tickOf(self) -> None:
        """The first tick at or after a deadline, never before it."""
        slots = WheelSlots(0.01, 8, 4)
        self.assertEqual(slots._tickOf(0.35), 35)
        self.assertEqual(slots._tickOf(0.351), 36)
        self.assertEqual(slots._tickOf(0.35000000000000003), 36)

    def test_unplaceAll(self) -> None:
        handles = [handle(t) for t in (3, 4, 20, 100)]
        for h in handles:
            self.slots._place(h, int(h.deadline or 0))
        self.assertEqual(set(self.slots._unplaceAll()), set(handles))
        self.assertEqual([h.slot for h in handles], [None] * 4)
        self.assertIsNone(self.slots._nextWake())
        self.assertEqual(self.slots._overflow, [])
