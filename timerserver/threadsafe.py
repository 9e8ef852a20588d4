"""
L{ThreadSafeTimerQueue}: L{IQueueTimers} over any queue, callable from any
thread, with every callback run in the reactor thread and no lock held.

The wrapped queue is only ever touched in the reactor thread.  This wrapper
keeps, under one lock, what every caller needs to be answered at once: for
each handle whether it is pending, its deadline, its timer and user data,
and a generation that every set, re-set, cancel and destroy bumps.  A call
from another thread updates that state, answers from it (so C{wasPending}
is exact at that moment), and marks the handle changed for the reactor
thread (C{callFromThread}, one hop at a time).  On its turn the reactor
thread brings each changed handle's wrapped timer up to its state then:
armed for its absolute deadline (so the hop adds no delay), cancelled or
destroyed.  A handle is marked once however often it changed, so what
waits is bounded by the handles, and nothing stale is applied; a one-shot
from another thread waits as one entry until that turn, as a pending
one-shot of the bare queue is one entry.  A call from the reactor thread
changes its own handle in the wrapped queue at once: one uncontended lock.

The wrapped queue fires a dispatcher, never the user's timer.  It takes the
lock, checks that the generation it was armed with is still the handle's
(else a cancel or re-set since has replaced it, and it does nothing),
marks the handle not pending, releases the lock and only then calls the
timer.  So a cancel or re-set that reports the timer pending guarantees the
replaced callback will not run, and a callback may set, cancel or destroy
any timer of the queue, its own included, without deadlock.  What a call
replaces or drops (a timer, a user data, a handle) is released after the
lock is, so a C{__del__} may use the queue too.

Whether the caller is in the reactor's thread decides the path, on every
call: C{isReactorThread} says it if given, else L{timerserver.reactorthread}.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver._arguments import callTimer, checkTimeout, checkTimer
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
        "__weakref__", "armed", "deadline", "generation", "inner", "isTimer", "queue", "ref",
        "timer", "userData",
    )  # fmt: skip

    def __init__(self, queue: ThreadSafeTimerQueue) -> None:
        self.queue: ThreadSafeTimerQueue | None = queue
        self.inner: TimerHandle | None = None  # made in the reactor thread
        # What the wrapped handle's timer is given: not the handle itself,
        # which would make a cycle (this handle -> inner -> this handle).
        self.ref: weakref.ref[ThreadSafeHandle] | None = None
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

    _log = Logger()

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
        # Handles changed by other threads since the reactor's last turn,
        # once each, in order; and their one-shots, (deadline, timer).
        self._changes: dict[ThreadSafeHandle, None] = {}
        self._oneShotsWaiting: list[tuple[float, tuple[object, bool, object]]] = []
        self._hop = False  # whether a call of _apply is on its way
        self._pending: set[ThreadSafeHandle] = set()
        self._oneShots = 0
        self._stopped = False
        self._innerStopped = False  # the reactor thread's: the wrapped queue was shut down
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

    # Bringing the wrapped queue up to date, in the reactor thread.

    def _hopLocked(self) -> None:
        """From another thread, lock held: have the reactor thread call L{_apply}."""
        if not self._hop:
            self._reactor.callFromThread(self._apply)
            self._hop = True

    def _apply(self) -> None:
        """
        In the reactor thread: apply what other threads changed, each
        handle from its state now; shut the wrapped queue down once this
        one is.  A change the wrapped queue refuses is logged, and loses
        nothing else.  What is dropped is released after the lock.
        """
        failures: list[tuple[Failure, object]] = []
        with self._lock:
            self._hop = False
            changes, self._changes = self._changes, {}
            oneShots, self._oneShotsWaiting = self._oneShotsWaiting, []
            stopInner = self._stopped and not self._innerStopped
            self._innerStopped = self._stopped
            now = self._reactor.seconds()
            for h in changes:
                try:
                    self._syncLocked(h, now)
                except Exception:
                    failures.append((Failure(), h.timer))
                    if h.deadline is not None:  # its timer is lost: say so
                        h.generation += 1
                        h.deadline = None
                        self._pending.discard(h)
            if not self._stopped:  # else shutdown() counted and dropped them
                for deadline, armed in oneShots:
                    try:
                        self._queue.setOneShotTimer(
                            self._dispatchOneShot, self._timeoutLeft(deadline, now), armed
                        )
                    except Exception:
                        failures.append((Failure(), armed[0]))
                        self._oneShots -= 1
        if stopInner:
            self._queue.shutdown()
        for failure, timer in failures:
            self._log.failure(
                "{queue!r} refused a change of the timer of {timer!r}; one it refused"
                " to set is not pending any more",
                failure, queue=self._queue, timer=timer,
            )  # fmt: skip

    def _timeoutLeft(self, deadline: float, now: float) -> float:
        """The wait to C{deadline}, from 0 to the maximum (a clock stepped back)."""
        timeout = deadline - now
        if timeout < 0.0:
            return 0.0
        return timeout if timeout <= self.maximumTimeout else self.maximumTimeout

    def _syncLocked(self, h: ThreadSafeHandle, now: float) -> None:
        """Make C{h}'s wrapped timer what C{h} is now: armed, cancelled or destroyed."""
        inner = h.inner
        if inner is None:
            if h.deadline is not None and h.queue is not None:
                self._armInner(h, self._timeoutLeft(h.deadline, now))
                h.armed = h.generation
        elif h.queue is None:
            h.inner = None
            self._queue.destroyTimer(inner)
        elif h.deadline is None:
            self._queue.cancelTimer(inner)
        elif h.armed != h.generation:
            self._armInner(h, self._timeoutLeft(h.deadline, now))
            h.armed = h.generation

    def _armInner(self, h: ThreadSafeHandle, timeout: float) -> None:
        """In the reactor thread: set the wrapped queue's handle of C{h}, made if need be."""
        if h.inner is None:
            h.inner = self._queue.createTimer()
            h.ref = weakref.ref(h)
        self._queue.setTimer(h.inner, self._dispatchTimer, timeout, h.ref)

    # Firing, in the reactor thread, with the lock released before the call.

    def _dispatch(self, ref: weakref.ref[ThreadSafeHandle]) -> None:
        h = ref()
        if h is None:
            return  # dropped: it was not pending (the queue keeps those)
        with self._lock:
            if h.generation != h.armed or h.deadline is None:
                return  # cancelled, re-set or destroyed since it was armed
            h.deadline = None
            self._pending.discard(h)
            timer, timerIsITimer, userData = h.timer, h.isTimer, h.userData
        try:
            callTimer(timer, timerIsITimer, userData)
        except Exception:
            self._log.failure("Timer callback {timer!r} raised", timer=timer)

    def _dispatchOneShot(self, armed: tuple[object, bool, object]) -> None:
        with self._lock:
            if self._stopped:
                return
            self._oneShots -= 1
        timer, timerIsITimer, userData = armed
        try:
            callTimer(timer, timerIsITimer, userData)
        except Exception:
            self._log.failure("Timer callback {timer!r} raised", timer=timer)

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
