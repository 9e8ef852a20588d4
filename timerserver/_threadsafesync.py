"""
L{WrappedQueueSync}: the reactor thread's half of a
L{ThreadSafeTimerQueue <timerserver.threadsafe.ThreadSafeTimerQueue>}: the
state its handles keep under one lock, the wrapped queue brought up to that
state, and the wrapped queue's timers fired through a dispatcher.

Each handle keeps whether it is pending, its deadline, its timer and user
data, and a generation that every set, re-set, cancel and destroy bumps.
What other threads change waits as one entry a handle, in order; on its
turn (L{WrappedQueueSync._apply}, called through C{callFromThread}, one hop
at a time) the reactor thread brings each changed handle's wrapped timer up
to its state then: armed for its absolute deadline (so the hop adds no
delay), cancelled or destroyed.  So what waits is bounded by the handles,
and nothing stale is applied; a one-shot from another thread waits as one
entry until that turn.

The wrapped queue fires a dispatcher, never the user's timer.  It takes the
lock, checks that the generation it was armed with is still the handle's
(else a cancel or re-set since has replaced it, and it does nothing), marks
the handle not pending, releases the lock and only then calls the timer.
So a cancel or re-set that reports the timer pending guarantees the
replaced callback will not run, and a callback may use the queue, its own
handle included, without deadlock.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from timerserver._arguments import callTimer
from timerserver._queuebase import QueueHandle
from timerserver.interfaces import IQueueTimers, TimerHandle

_UNCHECKED = object()


class ThreadSafeHandle(TimerHandle):
    """
    A handle of a L{ThreadSafeTimerQueue
    <timerserver.threadsafe.ThreadSafeTimerQueue>}; its state is guarded by
    the queue's lock.
    """

    __slots__ = (
        "__weakref__", "armed", "deadline", "generation", "inner", "isTimer", "queue", "ref",
        "timer", "userData",
    )  # fmt: skip

    def __init__(self, queue: WrappedQueueSync) -> None:
        self.queue: WrappedQueueSync | None = queue
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

    __repr__ = QueueHandle.__repr__  # the same fields, read the same way


class WrappedQueueSync:
    """
    The state of a thread-safe queue over C{queue}, guarded by C{_lock} and
    kept from any thread, and the work on C{queue}, which only the reactor
    thread does.

    @param queue: the wrapped L{IQueueTimers}.
    @param reactor: the reactor whose thread runs C{queue} and every callback.
    """

    _log = Logger()

    def __init__(self, queue: IQueueTimers, reactor: Any) -> None:
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
        self._dispatchTimer = self._dispatch  # one bound method: the queue's fast path

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
