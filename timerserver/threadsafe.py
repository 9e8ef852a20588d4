"""
L{ThreadSafeTimerQueue}: L{IQueueTimers} over any queue, callable from any
thread, with every callback run in the reactor thread and no lock held.

The wrapped queue is only ever touched in the reactor thread.  This wrapper
keeps, under one lock, what every caller needs to be answered at once (for
each handle whether it is pending, its deadline, its timer and user data),
so C{wasPending} is exact at the moment of the call.  A call from another
thread updates that state and marks the handle changed; on its next turn
the reactor thread brings the wrapped queue up to each changed handle's
state then, with no delay added and nothing stale applied
(L{timerserver._threadsafesync}).  A call from the reactor thread changes
its own handle in the wrapped queue at once: one uncontended lock.

A cancel or re-set that reports the timer pending guarantees the replaced
callback will not run, and a callback may set, cancel or destroy any timer
of the queue, its own included, without deadlock.  What a call replaces or
drops (a timer, a user data, a handle) is released after the lock is, so a
C{__del__} may use the queue too.

Whether the caller is in the reactor's thread decides the path, on every
call: C{isReactorThread} says it if given, else L{timerserver.reactorthread}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from timerserver._arguments import checkTimeout, checkTimer
from timerserver._threadsafesync import ThreadSafeHandle, WrappedQueueSync
from timerserver.interfaces import (
    InvalidTimerHandle,
    IQueueTimers,
    SetTimerIf,
    TimerHandle,
    UpdateTimerIf,
)
from timerserver.reactorthread import reactorThreadTest

__all__ = ["ThreadSafeHandle", "ThreadSafeTimerQueue"]


@implementer(IQueueTimers)
class ThreadSafeTimerQueue(WrappedQueueSync):
    """
    Wraps C{queue} (an L{IQueueTimers}) so that every method may be called
    from any thread.

    @param reactor: the reactor whose thread runs the wrapped queue and every
        callback; the queue's own clock (C{queue.clock}) if C{None}.
    @param isReactorThread: tells whether the caller is in the reactor
        thread.  If C{None}: always, for a clock without C{callFromThread}
        (a test clock); else whether the caller is the thread Twisted
        registered as its I/O thread, or, before any reactor has run, the
        main thread (see the module's docstring).
    """

    def __init__(
        self,
        queue: IQueueTimers,
        reactor: Any = None,
        isReactorThread: Callable[[], bool] | None = None,
    ) -> None:
        if not IQueueTimers.providedBy(queue):
            raise TypeError(f"queue must provide IQueueTimers, not {queue!r}")
        if reactor is None:
            reactor = getattr(queue, "clock", None)
        if reactor is None:
            from twisted.internet import reactor
        WrappedQueueSync.__init__(self, queue, reactor)
        if isReactorThread is None:
            isReactorThread = reactorThreadTest(reactor, self._lock)
        self._isReactorThread = isReactorThread

    @property
    def clock(self) -> Any:
        """The reactor whose thread runs the callbacks."""
        return self._reactor

    @property
    def granularity(self) -> float:
        """The wrapped queue's (0 if it has none): how late its timers may fire."""
        return float(getattr(self._queue, "granularity", 0.0))

    def __repr__(self) -> str:
        return f"<ThreadSafeTimerQueue over {self._queue!r}>"

    # Checks, in the caller's thread: a failed call changes nothing.

    def _live(self, handle: object) -> ThreadSafeHandle:
        if type(handle) is not ThreadSafeHandle or handle.queue is not self:
            raise InvalidTimerHandle(f"not a live handle of {self!r}: {handle!r}")
        return handle

    def _checkRunning(self) -> None:
        if self._stopped:
            raise RuntimeError(f"{self!r} was shut down")

    # IQueueTimers

    def createTimer(self) -> ThreadSafeHandle:
        return ThreadSafeHandle(self)

    def isSet(self, handle: TimerHandle) -> bool:
        with self._lock:
            return self._live(handle).deadline is not None

    def _accept(self, handle: object, timer: object) -> tuple[ThreadSafeHandle, bool]:
        """
        Under the lock: the live handle and whether C{timer}, checked, is an
        L{ITimer}; raise if the queue was shut down.
        """
        if type(handle) is not ThreadSafeHandle or handle.queue is not self:
            handle = self._live(handle)
        timerIsITimer = handle.isTimer if timer is handle.timer else checkTimer(timer)
        if self._stopped:
            self._checkRunning()
        return handle, timerIsITimer

    def _arm(
        self,
        h: ThreadSafeHandle,
        timer: object,
        timerIsITimer: bool,
        timeout: float,
        deadline: float,
        userData: object,
    ) -> None:
        """
        Set C{h}, due at C{deadline} (the clock read once, by the caller);
        the caller holds the lock, checked the arguments, and keeps the
        replaced timer and user data until it has released the lock.
        """
        if self._isReactorThread():
            self._armInner(h, timeout)
            h.generation = h.armed = h.generation + 1
        else:
            self._hopLocked()
            self._changes[h] = None
            h.generation += 1
        h.timer, h.isTimer, h.userData = timer, timerIsITimer, userData
        h.deadline = deadline
        self._pending.add(h)

    def setTimer(
        self,
        handle: TimerHandle,
        timer: object,
        timeout: float,
        userData: object = None,
        when: SetTimerIf = SetTimerIf.ALWAYS,
    ) -> bool:
        if type(when) is not SetTimerIf:
            raise TypeError(f"when must be a SetTimerIf, not {when!r}")
        kind = type(timeout)
        if (kind is not float and kind is not int) or not 0 <= timeout <= self.maximumTimeout:
            timeout = checkTimeout(timeout, self.maximumTimeout)
        with self._lock:
            h, timerIsITimer = self._accept(handle, timer)
            wasPending = h.deadline is not None
            if wasPending and when is not SetTimerIf.ALWAYS:
                return True
            # Released with this frame, after the lock: a __del__ may use the queue.
            replacedTimer, replacedData = h.timer, h.userData  # noqa: F841
            if h.inner is None or not self._isReactorThread():
                self._arm(
                    h, timer, timerIsITimer, timeout, self._reactor.seconds() + timeout, userData
                )
                return wasPending
            # The common case, inlined: the reactor thread re-arms a handle.
            self._queue.setTimer(h.inner, self._dispatchTimer, timeout, h.ref)
            h.generation = h.armed = h.generation + 1
            h.timer, h.isTimer, h.userData = timer, timerIsITimer, userData
            h.deadline = self._reactor.seconds() + timeout
            if not wasPending:
                self._pending.add(h)
            return wasPending

    def updateTimer(
        self,
        handle: TimerHandle,
        timer: object,
        timeout: float,
        userData: object = None,
        when: UpdateTimerIf = UpdateTimerIf.ALWAYS,
    ) -> bool:
        if type(when) is not UpdateTimerIf:
            raise TypeError(f"when must be an UpdateTimerIf, not {when!r}")
        timeout = checkTimeout(timeout, self.maximumTimeout)
        with self._lock:
            h, timerIsITimer = self._accept(handle, timer)
            current = h.deadline
            replacedTimer, replacedData = h.timer, h.userData  # noqa: F841 (see setTimer)
            # Read once: what decides "sooner" or "later" is what is set.
            deadline = self._reactor.seconds() + timeout
            if current is None or when is UpdateTimerIf.ALWAYS:
                self._arm(h, timer, timerIsITimer, timeout, deadline, userData)
            elif when is UpdateTimerIf.NO_TIMEOUT_CHANGE:
                # The dispatcher reads them when it fires.
                h.timer, h.isTimer, h.userData = timer, timerIsITimer, userData
            elif (when is UpdateTimerIf.IF_SOONER and deadline < current) or (
                when is UpdateTimerIf.IF_LATER and deadline > current
            ):
                self._arm(h, timer, timerIsITimer, timeout, deadline, userData)
            return current is not None

    def _disarm(self, h: ThreadSafeHandle, destroy: bool) -> bool:
        """Cancel C{h}, or destroy it; the caller holds the lock."""
        wasPending = h.deadline is not None
        if wasPending or (destroy and h.inner is not None):
            if not self._isReactorThread():
                self._hopLocked()
                self._changes[h] = None
            elif h.inner is not None:
                if destroy:
                    inner, h.inner = h.inner, None
                    self._queue.destroyTimer(inner)
                else:
                    self._queue.cancelTimer(h.inner)
        h.generation += 1
        h.deadline = None
        self._pending.discard(h)
        return wasPending

    def cancelTimer(self, handle: TimerHandle) -> bool:
        with self._lock:
            return self._disarm(self._live(handle), False)

    def destroyTimer(self, handle: TimerHandle) -> bool:
        with self._lock:
            h = self._live(handle)
            wasPending = self._disarm(h, True)
            h.queue = None
            # As the wrapped queues do: a handle kept after it is destroyed
            # (a protocol's attribute) keeps neither its timer nor its data,
            # released after the lock (see setTimer).
            replacedTimer, replacedData = h.timer, h.userData  # noqa: F841
            h.timer = h.userData = None
            return wasPending

    def setOneShotTimer(self, timer: object, timeout: float, userData: object = None) -> None:
        armed = (timer, checkTimer(timer), userData)
        timeout = checkTimeout(timeout, self.maximumTimeout)
        with self._lock:
            self._checkRunning()
            if self._isReactorThread():
                self._queue.setOneShotTimer(self._dispatchOneShot, timeout, armed)
            else:
                self._hopLocked()
                self._oneShotsWaiting.append((self._reactor.seconds() + timeout, armed))
            self._oneShots += 1

    def shutdown(self) -> int:
        """
        Cancel every pending timer, one-shots included, and return how many;
        later sets raise C{RuntimeError}.  From any thread.
        """
        with self._lock:
            pending = list(self._pending)  # released after the lock
            for h in pending:
                h.generation += 1
                h.deadline = None
            self._pending.clear()
            count = len(pending) + self._oneShots
            self._oneShots = 0
            self._stopped = True
            direct = self._isReactorThread()
            if not direct:
                self._hopLocked()
        if direct:
            self._apply()
        return count
