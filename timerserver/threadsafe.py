"""
L{ThreadSafeTimerQueue}: L{IQueueTimers} over any queue, callable from any
thread, with every callback run in the reactor thread and no lock held.

The wrapped queue is only ever touched in the reactor thread.  This wrapper
keeps, under one lock, what every caller needs to be answered at once: for
each handle whether it is pending, its deadline, its timer and user data,
and a generation that every set, re-set, cancel and destroy bumps.  A call
from another thread updates that state, answers from it (so C{wasPending}
is exact at that moment), and queues the change for the reactor thread
(C{callFromThread}), with the absolute deadline so that the hop adds no
delay.  A call from the reactor thread applies the queued changes and its
own at once: one uncontended lock.

The wrapped queue fires a dispatcher, never the user's timer.  It takes the
lock, checks that the generation it was armed with is still the handle's
(else a cancel or re-set since has replaced it, and it does nothing),
marks the handle not pending, releases the lock and only then calls the
timer.  So a cancel or re-set that reports the timer pending guarantees the
replaced callback will not run, and a callback may set, cancel or destroy
any timer of the queue, its own included, without deadlock.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from timerserver.interfaces import (
    InvalidTimerHandle,
    IQueueTimers,
    ITimer,
    SetTimerIf,
    TimerHandle,
    UpdateTimerIf,
)


class ThreadSafeHandle(TimerHandle):
    """A handle of a L{ThreadSafeTimerQueue}; its state is guarded by the queue's lock."""

    __slots__ = ("deadline", "generation", "inner", "queue", "timer", "userData")

    def __init__(self, queue: ThreadSafeTimerQueue) -> None:
        self.queue: ThreadSafeTimerQueue | None = queue
        self.inner: TimerHandle | None = None  # made in the reactor thread
        self.deadline: float | None = None  # pending while not None
        self.generation = 0
        self.timer: object = None
        self.userData: object = None

    def __repr__(self) -> str:
        if self.queue is None:
            state = "destroyed"
        elif self.deadline is None:
            state = "idle"
        else:
            state = f"pending, due at {self.deadline:.6f}"
        return f"<ThreadSafeHandle at {id(self):#x}, {state}>"


@implementer(IQueueTimers)
class ThreadSafeTimerQueue:
    """
    Wraps C{queue} (an L{IQueueTimers}) so that every method may be called
    from any thread.

    @param reactor: the reactor whose thread runs the wrapped queue and every
        callback; the queue's own clock (C{queue.clock}) if C{None}.
    @param isReactorThread: tells whether the caller is in the reactor
        thread; Twisted's C{threadable.isInIOThread} if C{None}.
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
        if isReactorThread is None:
            from twisted.python.threadable import isInIOThread

            isReactorThread = isInIOThread
        self._queue = queue
        self._reactor = reactor
        self._isReactorThread = isReactorThread
        self.maximumTimeout = queue.maximumTimeout
        self._lock = threading.Lock()
        self._changes: list[tuple[Any, ...]] = []
        self._pending: set[ThreadSafeHandle] = set()
        self._oneShots = 0
        self._stopped = False

    @property
    def clock(self) -> Any:
        """The reactor whose thread runs the callbacks."""
        return self._reactor

    def __repr__(self) -> str:
        return f"<ThreadSafeTimerQueue over {self._queue!r}>"

    # Checks, in the caller's thread: a failed call changes nothing.

    def _live(self, handle: object) -> ThreadSafeHandle:
        if type(handle) is not ThreadSafeHandle or handle.queue is not self:
            raise InvalidTimerHandle(f"not a live handle of {self!r}: {handle!r}")
        return handle

    def _checkTimer(self, timer: object) -> None:
        if not (callable(timer) or ITimer.providedBy(timer)):
            raise TypeError(f"timer must provide ITimer or be callable, not {timer!r}")

    def _checkTimeout(self, timeout: object) -> float:
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        value = float(timeout)
        if not (0 <= value <= self.maximumTimeout):  # NaN fails too
            raise ValueError(
                f"timeout must be between 0 and {self.maximumTimeout} seconds, not {timeout!r}"
            )
        return value

    def _checkRunning(self) -> None:
        if self._stopped:
            raise RuntimeError(f"{self!r} was shut down")

    # Applying changes to the wrapped queue, in the reactor thread.

    def _commit(self, change: tuple[Any, ...]) -> None:
        """Queue C{change}; apply everything queued now if this is the reactor thread."""
        self._changes.append(change)
        if self._isReactorThread():
            self._applyLocked()
        elif len(self._changes) == 1:
            self._reactor.callFromThread(self._apply)

    def _apply(self) -> None:
        with self._lock:
            self._applyLocked()

    def _applyLocked(self) -> None:
        changes, self._changes = self._changes, []
        queue = self._queue
        now = self._reactor.seconds()
        for change in changes:
            kind = change[0]
            if kind == "set":
                _, h, deadline, generation = change
                if h.inner is None:
                    h.inner = queue.createTimer()
                queue.setTimer(h.inner, self._dispatch, max(0.0, deadline - now), (h, generation))
            elif kind == "cancel":
                if change[1].inner is not None:
                    queue.cancelTimer(change[1].inner)
            elif kind == "destroy":
                if change[1].inner is not None:
                    queue.destroyTimer(change[1].inner)
            elif kind == "oneshot":
                _, timer, deadline, userData = change
                queue.setOneShotTimer(
                    self._dispatchOneShot, max(0.0, deadline - now), (timer, userData)
                )
            else:  # shutdown
                queue.shutdown()

    # Firing, in the reactor thread, with the lock released before the call.

    def _dispatch(self, armed: tuple[ThreadSafeHandle, int]) -> None:
        h, generation = armed
        with self._lock:
            if h.generation != generation or h.deadline is None:
                return  # cancelled, re-set or destroyed since it was armed
            h.deadline = None
            self._pending.discard(h)
            timer, userData = h.timer, h.userData
        _call(timer, userData)

    def _dispatchOneShot(self, armed: tuple[object, object]) -> None:
        with self._lock:
            if self._stopped:
                return
            self._oneShots -= 1
        _call(*armed)

    # IQueueTimers

    def createTimer(self) -> ThreadSafeHandle:
        return ThreadSafeHandle(self)

    def isSet(self, handle: TimerHandle) -> bool:
        with self._lock:
            return self._live(handle).deadline is not None

    def _arm(self, h: ThreadSafeHandle, timer: object, deadline: float, userData: object) -> None:
        h.generation += 1
        h.timer, h.userData, h.deadline = timer, userData, deadline
        self._pending.add(h)
        self._commit(("set", h, deadline, h.generation))

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
        self._checkTimer(timer)
        timeout = self._checkTimeout(timeout)
        with self._lock:
            h = self._live(handle)
            self._checkRunning()
            wasPending = h.deadline is not None
            if not wasPending or when is SetTimerIf.ALWAYS:
                self._arm(h, timer, self._reactor.seconds() + timeout, userData)
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
        self._checkTimer(timer)
        timeout = self._checkTimeout(timeout)
        with self._lock:
            h = self._live(handle)
            self._checkRunning()
            deadline = self._reactor.seconds() + timeout
            current = h.deadline
            if current is None or when is UpdateTimerIf.ALWAYS:
                self._arm(h, timer, deadline, userData)
            elif when is UpdateTimerIf.NO_TIMEOUT_CHANGE:
                h.timer, h.userData = timer, userData  # the dispatcher reads them when it fires
            elif (when is UpdateTimerIf.IF_SOONER and deadline < current) or (
                when is UpdateTimerIf.IF_LATER and deadline > current
            ):
                self._arm(h, timer, deadline, userData)
            return current is not None

    def _disarm(self, h: ThreadSafeHandle, change: str) -> bool:
        wasPending = h.deadline is not None
        h.generation += 1
        h.deadline = None
        self._pending.discard(h)
        if wasPending or change == "destroy":
            self._commit((change, h))
        return wasPending

    def cancelTimer(self, handle: TimerHandle) -> bool:
        with self._lock:
            return self._disarm(self._live(handle), "cancel")

    def destroyTimer(self, handle: TimerHandle) -> bool:
        with self._lock:
            h = self._live(handle)
            wasPending = self._disarm(h, "destroy")
            h.queue = None
            return wasPending

    def setOneShotTimer(self, timer: object, timeout: float, userData: object = None) -> None:
        self._checkTimer(timer)
        timeout = self._checkTimeout(timeout)
        with self._lock:
            self._checkRunning()
            self._oneShots += 1
            self._commit(("oneshot", timer, self._reactor.seconds() + timeout, userData))

    def shutdown(self) -> int:
        """
        Cancel every pending timer, one-shots included, and return how many;
        later sets raise C{RuntimeError}.  From any thread.
        """
        with self._lock:
            pending = list(self._pending)
            for h in pending:
                h.generation += 1
                h.deadline = None
            self._pending.clear()
            count = len(pending) + self._oneShots
            self._oneShots = 0
            self._stopped = True
            self._commit(("shutdown",))
            return count


def _call(timer: object, userData: object) -> None:
    if ITimer.providedBy(timer):
        timer.onTimer(userData)
    else:
        timer(userData)  # type: ignore[operator]
