"""
The timer queue contract: L{ITimer}, L{IQueueTimers} and L{IMonitorTimerQueue}.

These mirror the C++ framework's C{IQueueTimers}: a queue hands out opaque
handles that are created once, set, updated and cancelled any number of times,
and destroyed once.  Times are seconds as C{float}, like C{callLater}.
"""

from __future__ import annotations

import enum

from zope.interface import Attribute, Interface


class InvalidTimerHandle(ValueError):
    """
    A handle that is destroyed, C{None}, another queue's, or not a handle.
    """


class SetTimerIf(enum.Enum):
    """
    When L{IQueueTimers.setTimer} changes a timer.
    """

    ALWAYS = "always"
    """Set it, re-arming it if it is pending."""
    IF_NOT_SET = "if-not-set"
    """Set it only if it is not pending; a pending timer is left as it was."""


class UpdateTimerIf(enum.Enum):
    """
    When L{IQueueTimers.updateTimer} changes a pending timer.

    A timer that is not pending is always set.
    """

    ALWAYS = "always"
    """Change the expiry, the timer and the user data."""
    IF_SOONER = "if-sooner"
    """Change everything only if the new expiry is sooner than the current."""
    IF_LATER = "if-later"
    """Change everything only if the new expiry is later than the current."""
    NO_TIMEOUT_CHANGE = "no-timeout-change"
    """Keep the expiry; change the timer and the user data."""


class TimerHandle:
    """
    An opaque timer handle from L{IQueueTimers.createTimer}.

    Each queue hands out its own subclass; only the queue that created a
    handle may be given it back.
    """

    __slots__ = ()


class ITimer(Interface):
    """
    Something to call when a timer expires.

    A plain callable taking C{userData} may be used wherever an L{ITimer} is
    accepted.
    """

    def onTimer(userData: object) -> None:
        """
        Called once per expiry, in the reactor thread.

        @param userData: the value given when the timer was set.
        """


class IQueueTimers(Interface):
    """
    A queue of per-connection timers, addressed through handles.

    Every method that returns C{bool} returns I{wasPending}: whether the timer
    was pending when the call was made.  A call that raises changes nothing.
    """

    maximumTimeout = Attribute("The longest timeout accepted, in seconds.")

    def createTimer() -> TimerHandle:
        """
        Create a handle that is not pending.  Destroy it with L{destroyTimer}.
        """

    def isSet(handle: TimerHandle) -> bool:
        """
        Is the timer pending?

        @raise InvalidTimerHandle: if C{handle} is not a live handle of this
            queue.
        """

    def setTimer(
        handle: TimerHandle,
        timer: object,
        timeout: float,
        userData: object = None,
        when: SetTimerIf = SetTimerIf.ALWAYS,
    ) -> bool:
        """
        Arm the timer to call C{timer} with C{userData} in C{timeout} seconds.

        A pending timer is re-armed with the new timeout, timer and user data,
        unless C{when} is L{SetTimerIf.IF_NOT_SET}, which leaves it as it was.

        @param timer: an L{ITimer} provider or a callable taking C{userData}.
        @raise ValueError: a timeout that is negative, NaN, infinite or above
            C{maximumTimeout}.
        @raise TypeError: a timeout that is not a number, or a C{timer} that
            is neither an L{ITimer} nor callable.
        @raise RuntimeError: the queue was shut down.
        @return: wasPending.
        """

    def updateTimer(
        handle: TimerHandle,
        timer: object,
        timeout: float,
        userData: object = None,
        when: UpdateTimerIf = UpdateTimerIf.ALWAYS,
    ) -> bool:
        """
        Set a timer that is not pending; change a pending one as C{when} says.

        Errors are those of L{setTimer}.

        @return: wasPending.
        """

    def cancelTimer(handle: TimerHandle) -> bool:
        """
        Stop a pending timer.  The handle stays usable.

        @return: wasPending.
        """

    def destroyTimer(handle: TimerHandle) -> bool:
        """
        Cancel the timer if it is pending and invalidate the handle.

        @return: wasPending.
        """

    def setOneShotTimer(timer: object, timeout: float, userData: object = None) -> None:
        """
        Call C{timer} with C{userData} once, in C{timeout} seconds, with no
        handle to manage.  Errors are those of L{setTimer}.
        """

    def shutdown() -> int:
        """
        Cancel every pending timer, one-shots included, and refuse new ones.

        @return: how many timers were cancelled.
        """


class IMonitorTimerQueue(Interface):
    """
    Hooks a queue calls on each operation, for performance counters.

    Each is called after the operation has taken effect.
    """

    def timerCreated() -> None:
        """A handle was created."""

    def timerSet(wasPending: bool) -> None:
        """L{IQueueTimers.setTimer} was called."""

    def timerUpdated(wasPending: bool, wasUpdated: bool) -> None:
        """L{IQueueTimers.updateTimer} was called; C{wasUpdated}: it changed."""

    def oneShotTimerSet() -> None:
        """L{IQueueTimers.setOneShotTimer} was called."""

    def timerFired() -> None:
        """A timer, one-shots included, expired and its callback is due."""

    def timerCancelled(wasPending: bool) -> None:
        """
        L{IQueueTimers.cancelTimer} was called, or L{IQueueTimers.shutdown}
        cancelled a pending timer.
        """

    def timerDestroyed(wasPending: bool) -> None:
        """L{IQueueTimers.destroyTimer} was called."""
