"""
What every timer queue shares: handle checks, the L{SetTimerIf} and
L{UpdateTimerIf} rules, monitor calls and running callbacks.  Its arguments
are checked by L{timerserver._arguments}.

A concrete queue supplies three primitives: C{_arm} (schedule a handle,
pending or not), C{_disarm} (unschedule a pending handle) and C{_cancelAll}.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from timerserver._arguments import checkTimeout, checkTimer, positiveFinite
from timerserver.interfaces import (
    IMonitorTimerQueue,
    InvalidTimerHandle,
    SetTimerIf,
    TimerHandle,
    UpdateTimerIf,
)

DEFAULT_MAXIMUM_TIMEOUT = 4294967.294
"""2**32 - 2 milliseconds, the longest timeout of the original framework."""

_NO_TIMER = object()


class QueueHandle(TimerHandle):
    """
    The state of one timer.  C{deadline} is C{None} unless it is pending;
    C{queue} is C{None} once it is destroyed.
    """

    __slots__ = ("deadline", "isTimer", "queue", "timer", "userData")

    def __init__(self, queue: object) -> None:
        self.queue: object = queue
        self.timer: object = _NO_TIMER
        self.isTimer = False
        self.userData: object = None
        self.deadline: float | None = None

    def __repr__(self) -> str:
        if self.queue is None:
            state = "destroyed"
        elif self.deadline is None:
            state = "idle"
        else:
            state = f"pending, due at {self.deadline:.6f}"
        return f"<{type(self).__name__} at {id(self):#x}, {state}>"


H = TypeVar("H", bound=QueueHandle)


class TimerQueueBase(Generic[H]):
    """
    The public L{IQueueTimers} methods, written once over C{_arm}/C{_disarm}.
    """

    _handleClass: type[H]
    """The queue's handle class, set on the class: a live handle is of exactly this class."""
    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime | None,
        maximumTimeout: float,
        monitor: IMonitorTimerQueue | None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self._reactor = reactor
        self.maximumTimeout = positiveFinite("maximumTimeout", maximumTimeout)
        self._monitor = monitor
        self._stopped = False

    @property
    def clock(self) -> IReactorTime:
        """
        The clock this queue reads and schedules on.  It is read on every
        call, never cached, so a later L{timerserver.useMonotonicTime} on it
        takes effect here too.
        """
        return self._reactor

    # Primitives of a concrete queue.

    def _arm(self, h: H, timeout: float, now: float) -> None:
        """Make C{h} due at C{now + timeout}, whether or not it is pending."""
        raise NotImplementedError

    def _disarm(self, h: H) -> None:
        """Unschedule the pending C{h} and clear its deadline."""
        raise NotImplementedError

    def _cancelAll(self) -> list[H]:
        """Unschedule every pending timer; return them."""
        raise NotImplementedError

    # Checks.  The common case (a live handle, the same timer as last time,
    # an int or float timeout) costs a few inline tests in _accept and
    # cancelTimer; these are the slow paths.

    def _live(self, handle: object) -> H:
        if type(handle) is not self._handleClass or getattr(handle, "queue", None) is not self:
            raise InvalidTimerHandle(f"not a live handle of {self!r}: {handle!r}")
        return handle

    def _checkRunning(self) -> None:
        if self._stopped:
            raise RuntimeError(f"{self!r} was shut down")

    def _accept(self, handle: object, timer: object, timeout: float) -> tuple[H, float, bool]:
        """
        Check the arguments of a set or update; return the handle, the
        timeout and whether C{timer} is an L{ITimer}.  The common case costs
        four inline tests.  C{timeout} is checked whatever its type: a
        caller may pass anything.
        """
        if type(handle) is not self._handleClass or handle.queue is not self:
            handle = self._live(handle)
        kind = type(timeout)
        if (kind is not float and kind is not int) or not 0 <= timeout <= self.maximumTimeout:
            timeout = checkTimeout(timeout, self.maximumTimeout)
        isTimer = handle.isTimer if timer is handle.timer else checkTimer(timer)
        if self._stopped:
            self._checkRunning()
        return handle, timeout, isTimer

    # IQueueTimers

    def createTimer(self) -> H:
        """See L{IQueueTimers.createTimer}."""
        h: H = self._handleClass(self)
        if self._monitor is not None:
            self._monitor.timerCreated()
        return h

    def isSet(self, handle: TimerHandle) -> bool:
        """See L{IQueueTimers.isSet}."""
        return self._live(handle).deadline is not None

    def setTimer(
        self,
        handle: TimerHandle,
        timer: object,
        timeout: float,
        userData: object = None,
        when: SetTimerIf = SetTimerIf.ALWAYS,
    ) -> bool:
        """See L{IQueueTimers.setTimer}."""
        if type(when) is not SetTimerIf:
            raise TypeError(f"when must be a SetTimerIf, not {when!r}")
        h, timeout, isTimer = self._accept(handle, timer, timeout)
        wasPending = h.deadline is not None
        if not wasPending or when is SetTimerIf.ALWAYS:
            h.timer = timer
            h.isTimer = isTimer
            h.userData = userData
            self._arm(h, timeout, self._reactor.seconds())
        if self._monitor is not None:
            self._monitor.timerSet(wasPending)
        return wasPending

    def updateTimer(
        self,
        handle: TimerHandle,
        timer: object,
        timeout: float,
        userData: object = None,
        when: UpdateTimerIf = UpdateTimerIf.ALWAYS,
    ) -> bool:
        """See L{IQueueTimers.updateTimer}."""
        if type(when) is not UpdateTimerIf:
            raise TypeError(f"when must be an UpdateTimerIf, not {when!r}")
        h, timeout, isTimer = self._accept(handle, timer, timeout)
        deadline = h.deadline
        now = self._reactor.seconds()
        if deadline is None or when is UpdateTimerIf.ALWAYS:
            rearm = update = True
        elif when is UpdateTimerIf.NO_TIMEOUT_CHANGE:
            rearm, update = False, True
        elif when is UpdateTimerIf.IF_SOONER:
            rearm = update = now + timeout < deadline
        else:
            rearm = update = now + timeout > deadline
        if update:
            h.timer = timer
            h.isTimer = isTimer
            h.userData = userData
        if rearm:
            self._arm(h, timeout, now)
        if self._monitor is not None:
            self._monitor.timerUpdated(deadline is not None, update)
        return deadline is not None

    def cancelTimer(self, handle: TimerHandle) -> bool:
        """See L{IQueueTimers.cancelTimer}."""
        if type(handle) is not self._handleClass or handle.queue is not self:
            handle = self._live(handle)
        wasPending = handle.deadline is not None
        if wasPending:
            self._disarm(handle)
        if self._monitor is not None:
            self._monitor.timerCancelled(wasPending)
        return wasPending

    def destroyTimer(self, handle: TimerHandle) -> bool:
        """See L{IQueueTimers.destroyTimer}."""
        if type(handle) is not self._handleClass or handle.queue is not self:
            handle = self._live(handle)
        wasPending = handle.deadline is not None
        if wasPending:
            self._disarm(handle)
        handle.queue = None
        handle.timer = handle.userData = None
        if self._monitor is not None:
            self._monitor.timerDestroyed(wasPending)
        return wasPending

    def _setAgain(self, h: H, timeout: float, now: float) -> None:
        """
        C{setTimer(h, h.timer, timeout, h.userData)}, with C{now} already
        read from this queue's clock, for a caller that owns C{h}, set it
        itself, and computed C{timeout} (L{timerserver.periodic.Periodic}
        re-arming from its own callback): the checks of C{setTimer} that
        cannot fail for it are skipped, once a message.
        """
        if h.queue is not self:
            self._live(h)
        if self._stopped:
            self._checkRunning()
        wasPending = h.deadline is not None
        self._arm(h, timeout, now)
        if self._monitor is not None:
            self._monitor.timerSet(wasPending)

    def _setOwn(self, h: H, timer: object, timeout: float, now: float) -> None:
        """
        C{setTimer(h, timer, timeout)} for an L{ITimer} C{timer} that owns
        C{h} (L{timerserver.periodic.Periodic} starting), with C{now} read
        from this queue's clock: C{setTimer}'s checks of C{timer} and C{when},
        which cannot fail for it, skipped.
        """
        if h.queue is not self:
            self._live(h)
        kind = type(timeout)
        if (kind is not float and kind is not int) or not 0 <= timeout <= self.maximumTimeout:
            timeout = checkTimeout(timeout, self.maximumTimeout)  # its interval may be anything
        if self._stopped:
            self._checkRunning()
        h.timer = timer
        h.isTimer = True
        h.userData = None
        wasPending = h.deadline is not None
        self._arm(h, timeout, now)
        if self._monitor is not None:
            self._monitor.timerSet(wasPending)

    def setOneShotTimer(self, timer: object, timeout: float, userData: object = None) -> None:
        """See L{IQueueTimers.setOneShotTimer}."""
        timeout = checkTimeout(timeout, self.maximumTimeout)
        isTimer = checkTimer(timer)
        self._checkRunning()
        # A private handle nobody else holds: once it fires it is garbage.
        h: H = self._handleClass(self)
        h.timer = timer
        h.isTimer = isTimer
        h.userData = userData
        self._arm(h, timeout, self._reactor.seconds())
        if self._monitor is not None:
            self._monitor.oneShotTimerSet()

    def shutdown(self) -> int:
        """
        Cancel every pending timer, one-shots included, and refuse new ones.

        @return: how many were cancelled.
        """
        self._stopped = True
        cancelled = self._cancelAll()
        for h in cancelled:
            h.deadline = None
            if self._monitor is not None:
                self._monitor.timerCancelled(True)
        return len(cancelled)

    # Expiry

    def _expire(self, h: H) -> None:
        """
        Run the callback of C{h}, which is no longer pending; log, never
        raise, what it raises.
        """
        if self._monitor is not None:
            self._monitor.timerFired()
        timer = h.timer
        try:
            if h.isTimer:
                timer.onTimer(h.userData)  # type: ignore[attr-defined]
            else:
                timer(h.userData)  # type: ignore[operator]
        except Exception:
            self._log.failure("Timer callback {timer!r} raised", timer=timer)
