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

Whether the caller is in the reactor's thread decides the path, on every
call: C{isReactorThread} says it if given, else L{timerserver.reactorthread}.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from timerserver._queuebase import callTimer, checkTimeout, checkTimer
from timerserver.interfaces import (
    InvalidTimerHandle,
    IQueueTimers,
    SetTimerIf,
    TimerHandle,
    UpdateTimerIf,
)
from timerserver.reactorthread import reactorThreadTest

_UNCHECKED = object()


class ThreadSafeHandle(TimerHandle):
    """A handle of a L{ThreadSafeTimerQueue}; its state is guarded by the queue's lock."""

    __slots__ = (
        "armed", "deadline", "generation", "inner", "isTimer", "queue", "timer", "userData",
    )  # fmt: skip

    def __init__(self, queue: ThreadSafeTimerQueue) -> None:
        self.queue: ThreadSafeTimerQueue | None = queue
        self.inner: TimerHandle | None = None  # made in the reactor thread
        self.deadline: float | None = None  # pending while not None
        self.generation = 0  # bumped by every set, cancel and destroy
        self.armed = -1  # the generation the wrapped queue's timer was armed for
        self.timer: object = _UNCHECKED  # a timer given before was checked then
        self.isTimer = False
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
        self._queue = queue
        self._reactor = reactor
        self.maximumTimeout = queue.maximumTimeout
        self._lock = threading.Lock()
        self._changes: list[tuple[Any, ...]] = []
        self._pending: set[ThreadSafeHandle] = set()
        self._oneShots = 0
        self._stopped = False
        if isReactorThread is None:
            isReactorThread = reactorThreadTest(reactor, self._lock)
        self._isReactorThread = isReactorThread
        self._dispatchTimer = self._dispatch  # one bound method: the queue's fast path

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

    # Applying changes to the wrapped queue, in the reactor thread.

    def _commit(self, change: tuple[Any, ...]) -> None:
        """From another thread: queue C{change} for the reactor thread."""
        self._changes.append(change)
        if len(self._changes) == 1:
            self._reactor.callFromThread(self._apply)

    def _apply(self) -> None:
        with self._lock:
            self._applyLocked()

    def _applyLocked(self) -> None:
        changes, self._changes = self._changes, []
        now = self._reactor.seconds()
        for change in changes:
            kind, target = change[0], change[1]
            if kind == "set":
                self._armInner(target, max(0.0, change[2] - now), change[3])
            elif kind == "cancel":
                if target.inner is not None:
                    self._queue.cancelTimer(target.inner)
            elif kind == "destroy":
                if target.inner is not None:
                    self._queue.destroyTimer(target.inner)
            elif kind == "oneshot":
                self._queue.setOneShotTimer(
                    self._dispatchOneShot, max(0.0, change[2] - now), change[3]
                )
            else:  # shutdown
                self._queue.shutdown()

    def _armInner(self, h: ThreadSafeHandle, timeout: float, generation: int) -> None:
        """In the reactor thread: arm the wrapped queue's handle for C{generation}."""
        if h.inner is None:
            h.inner = self._queue.createTimer()
        self._queue.setTimer(h.inner, self._dispatchTimer, timeout, h)
        h.armed = generation

    # Firing, in the reactor thread, with the lock released before the call.

    def _dispatch(self, h: ThreadSafeHandle) -> None:
        with self._lock:
            if h.generation != h.armed or h.deadline is None:
                return  # cancelled, re-set or destroyed since it was armed
            h.deadline = None
            self._pending.discard(h)
            timer, timerIsITimer, userData = h.timer, h.isTimer, h.userData
        callTimer(timer, timerIsITimer, userData)

    def _dispatchOneShot(self, armed: tuple[object, bool, object]) -> None:
        with self._lock:
            if self._stopped:
                return
            self._oneShots -= 1
        callTimer(*armed)

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
        h: ThreadSafeHandle = handle  # type: ignore[assignment]
        if type(h) is not ThreadSafeHandle or h.queue is not self:
            h = self._live(handle)
        timerIsITimer = h.isTimer if timer is h.timer else checkTimer(timer)
        if self._stopped:
            self._checkRunning()
        return h, timerIsITimer

    def _arm(
        self,
        h: ThreadSafeHandle,
        timer: object,
        timerIsITimer: bool,
        timeout: float,
        userData: object,
    ) -> None:
        """Set C{h}; the caller holds the lock and checked the arguments."""
        h.generation += 1
        deadline = self._reactor.seconds() + timeout
        if self._isReactorThread():
            if self._changes:
                self._applyLocked()  # what other threads asked for comes first
            self._armInner(h, timeout, h.generation)
        else:
            self._commit(("set", h, deadline, h.generation))
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
            if self._changes or h.inner is None or not self._isReactorThread():
                self._arm(h, timer, timerIsITimer, timeout, userData)
                return wasPending
            # The common case, inlined: the reactor thread re-arms a handle.
            h.generation = h.armed = h.generation + 1
            self._queue.setTimer(h.inner, self._dispatchTimer, timeout, h)
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
            deadline = self._reactor.seconds() + timeout
            if current is None or when is UpdateTimerIf.ALWAYS:
                self._arm(h, timer, timerIsITimer, timeout, userData)
            elif when is UpdateTimerIf.NO_TIMEOUT_CHANGE:
                # The dispatcher reads them when it fires.
                h.timer, h.isTimer, h.userData = timer, timerIsITimer, userData
            elif (when is UpdateTimerIf.IF_SOONER and deadline < current) or (
                when is UpdateTimerIf.IF_LATER and deadline > current
            ):
                self._arm(h, timer, timerIsITimer, timeout, userData)
            return current is not None

    def _disarm(self, h: ThreadSafeHandle, change: str) -> bool:
        wasPending = h.deadline is not None
        h.generation += 1
        h.deadline = None
        self._pending.discard(h)
        if wasPending or change == "destroy":
            if not self._isReactorThread():
                self._commit((change, h))
            else:
                if self._changes:
                    self._applyLocked()
                if h.inner is not None:
                    inner = self._queue
                    (inner.cancelTimer if change == "cancel" else inner.destroyTimer)(h.inner)
        return wasPending

    def cancelTimer(self, handle: TimerHandle) -> bool:
        with self._lock:
            return self._disarm(self._live(handle), "cancel")

    def destroyTimer(self, handle: TimerHandle) -> bool:
        with self._lock:
            h = self._live(handle)
            wasPending = self._disarm(h, "destroy")
            h.queue = None
            # As the wrapped queues do: a handle kept after it is destroyed
            # (a protocol's attribute) keeps neither its timer nor its data.
            h.timer = h.userData = None
            return wasPending

    def setOneShotTimer(self, timer: object, timeout: float, userData: object = None) -> None:
        armed = (timer, checkTimer(timer), userData)
        timeout = checkTimeout(timeout, self.maximumTimeout)
        with self._lock:
            self._checkRunning()
            self._oneShots += 1
            if self._isReactorThread():
                if self._changes:
                    self._applyLocked()
                self._queue.setOneShotTimer(self._dispatchOneShot, timeout, armed)
            else:
                deadline = self._reactor.seconds() + timeout
                self._commit(("oneshot", None, deadline, armed))

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
            if self._isReactorThread():
                self._applyLocked()
                self._queue.shutdown()
            else:
                self._commit(("shutdown", None))
            return count
