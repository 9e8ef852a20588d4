"""
Which thread is the reactor's: what L{ThreadSafeTimerQueue
<timerserver.threadsafe.ThreadSafeTimerQueue>} asks on every call to choose
between the direct path and C{callFromThread}.

By default:

  - A clock without C{callFromThread} (C{task.Clock}, C{MemoryReactorClock})
    has no thread of its own: its timers run in whichever thread calls
    C{advance()}, and nothing could carry a change to another thread.  Every
    call takes the direct path, as if from the clock's one thread.  Like the
    clock itself, such a queue is then for one thread at a time.
  - A reactor that has run is the thread Twisted registered as its I/O
    thread when it started (C{threadable.isInIOThread}).
  - Before any reactor has run, Twisted has registered no thread yet.  The
    main thread is taken as the reactor's, since C{twistd},
    C{task.react} and nearly every program call C{reactor.run()} there:
    its calls take the direct path, and any other thread's wait, deadline
    fixed, for the reactor's first turn.  So that a reactor started in
    another thread (as crochet does) cannot start firing timers in the
    middle of such a call, the queue adds a "before startup" trigger to the
    reactor that waits for the lock: by then the reactor's thread is
    registered, and from then on the main thread's calls take the
    cross-thread path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.python import threadable

_MAIN_THREAD = threading.main_thread().ident


def _startupFence(lock: threading.Lock) -> None:
    """
    In the reactor's thread as it starts, once that thread is registered:
    wait for a call that took the direct path in the main thread before.
    """
    with lock:
        pass


def _always() -> bool:
    """Every caller is in the reactor thread: a clock that has no other."""
    return True


def _inReactorThread() -> bool:
    """
    Twisted's C{threadable.isInIOThread} (without its C{current_thread()}
    call), or before any reactor has registered its thread, whether the
    caller is the main thread.
    """
    ioThread = threadable.ioThread
    if ioThread is None:
        return threading.get_ident() == _MAIN_THREAD
    return ioThread == threading.get_ident()


def reactorThreadTest(reactor: Any, lock: threading.Lock) -> Callable[[], bool]:
    """
    The test of whether the caller is in C{reactor}'s thread; before any
    reactor has run, also a "before startup" trigger on C{reactor} that
    waits for C{lock}, held by calls on the direct path.
    """
    if getattr(reactor, "callFromThread", None) is None:
        return _always  # a test clock: one thread, its caller's
    addTrigger = getattr(reactor, "addSystemEventTrigger", None)
    if threadable.ioThread is None and addTrigger is not None:
        # Holds the lock only: a queue dropped before the reactor runs is freed.
        addTrigger("before", "startup", _startupFence, lock)
    return _inReactorThread
