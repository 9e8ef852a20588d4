"""
The time source: L{useMonotonicTime} makes a reactor's timers follow the
monotonic clock, so that a step of the wall clock moves none of them.

Twisted's reactor reads C{time.time()}, the wall clock (Twisted issue #2424,
open since 2007), and every C{DelayedCall} stores an absolute wall-clock
deadline.  When the clock is stepped (NTP at boot, a VM resumed) by +1 h,
every pending call fires at once; by -1 h, none fires for an hour.  Both
timer queues, the server's periodic schedule, its idle, stall, closing and
shutdown timeouts and its log's rate window all sit on the reactor's
C{callLater}, so the fix belongs there, once per process.

The mechanism: C{reactor.seconds} is replaced by the monotonic clock plus
the offset that makes both agree at the moment of the switch.  So:

 - C{reactor.seconds()} still reads as seconds since the epoch, and equals
   the wall clock until the wall clock is stepped; after a step it keeps
   counting real elapsed time instead of jumping.  Code that needs the wall
   clock itself (log timestamps, dates) reads C{time.time()}, which is left
   alone; C{twisted.logger} already does.
 - Calls already scheduled keep their deadlines (both clocks agree at the
   switch) and are moved onto the new clock, so nothing scheduled before the
   switch fires against the wrong time base.
 - The reactor's own loop (C{timeout()}, C{runUntilCurrent()}) and every
   C{callLater} read C{reactor.seconds}, on every reactor built on
   C{ReactorBase}: epoll, select, poll and asyncio alike.

C{task.Clock} and the other test clocks have no wall clock to protect: they
are left as they are, so unit tests drive time exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

MONOTONIC_MARK = "_timerserverMonotonic"


def useMonotonicTime(reactor: Any = None, monotonic: Callable[[], float] = time.monotonic) -> bool:
    """
    Make C{reactor} (the global reactor if C{None}) keep its timers on the
    monotonic clock.  Call it once, early; calling it again does nothing.

    @param monotonic: the monotonic clock (a test may pass a fake one).
    @return: C{True} if C{reactor} now keeps monotonic time (it did already,
        or it was switched); C{False} if it is not a real reactor (such as
        C{task.Clock}) and was left alone.
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.internet.base import DelayedCall, ReactorBase

    if not isinstance(reactor, ReactorBase):
        return False
    current = reactor.seconds
    if getattr(current, MONOTONIC_MARK, False):
        return True
    offset = current() - monotonic()

    def seconds() -> float:
        return monotonic() + offset

    setattr(seconds, MONOTONIC_MARK, True)
    reactor.seconds = seconds
    for call in cast("list[DelayedCall]", reactor.getDelayedCalls()):
        call.seconds = seconds
    return True


def isMonotonic(reactor: Any) -> bool:
    """Whether L{useMonotonicTime} has switched C{reactor}."""
    return bool(getattr(getattr(reactor, "seconds", None), MONOTONIC_MARK, False))
