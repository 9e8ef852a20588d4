"""
L{ThreadSafeTimerQueue}: the contract in the reactor thread, which thread the
reactor's is (a test clock's, a reactor's before and after it runs), and real
threads setting, updating and cancelling timers while a real reactor fires them.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections import Counter
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import threadable
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.contract import QueueContractMixin
from tests.serverprocess import ROOT
from timerserver import (
    InvalidTimerHandle,
    ReactorTimerQueue,
    SetTimerIf,
    ThreadSafeTimerQueue,
    TimerQueueCounters,
    TimerWheel,
    UpdateTimerIf,
)


class ThreadSafeContractMixin(QueueContractMixin):
    """
    The contract over a test clock, with the default choice of thread: a
    clock without C{callFromThread} has one thread, so every call is direct.
    """

    def setUp(self: Any) -> None:
        # As in a test run where no reactor has run (the runners register theirs).
        self.patch(threadable, "ioThread", None)
        super().setUp()

    def test_monitorCountsEveryOperation(self) -> None:
        raise SkipTest(
            "the monitor is the wrapped queue's: it counts only what reaches that queue "
            "(the wrapper answers IF_NOT_SET and unchanged updates itself, and creates "
            "the wrapped handle at the first set); see test_wrappedMonitorCountsPending"
        )

    def test_wrappedMonitorCountsPending(self: Any) -> None:
        """What the wrapped queue's monitor can say holds: the timers pending."""
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.timer, 1)
        self.queue.setTimer(h, self.timer, 2, None, SetTimerIf.IF_NOT_SET)
        self.queue.setOneShotTimer(self.timer, 1)
        self.assertEqual(self.counters.pending, 2)
        self.settle(1)
        self.assertEqual((self.counters.pending, len(self.timer.calls)), (0, 2))
        self.queue.setTimer(h, self.timer, 1)
        self.queue.destroyTimer(h)
        self.assertEqual((self.counters.pending, self.counters.live), (0, 0))


class ThreadSafeWheelContractTests(ThreadSafeContractMixin, SynchronousTestCase):
    tolerance = 0.01

    def makeQueue(self, clock: Clock, **kwargs: Any) -> ThreadSafeTimerQueue:
        return ThreadSafeTimerQueue(TimerWheel(clock, **kwargs))


class ThreadSafeReactorQueueContractTests(ThreadSafeContractMixin, SynchronousTestCase):
    def makeQueue(self, clock: Clock, **kwargs: Any) -> ThreadSafeTimerQueue:
        return ThreadSafeTimerQueue(ReactorTimerQueue(clock, **kwargs))


def runScript(source: str) -> str:
    """Run C{source} in a new interpreter, where no reactor has run; its output."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode:
        raise AssertionError(f"exit status {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


class TestClockTests(SynchronousTestCase):
    """
    A clock without C{callFromThread} (C{task.Clock}, C{MemoryReactorClock})
    has one thread, its caller's: every call takes the direct path.
    """

    def setUp(self) -> None:
        # Whatever reactor registered a thread, or none: the clock has its own.
        self.patch(threadable, "ioThread", None)

    def test_theIssuesExampleAsAScript(self) -> None:
        """A first test's code, in a process where no reactor runs at all."""
        output = runScript("""
            from twisted.internet.task import Clock
            from timerserver import TimerWheel, ThreadSafeTimerQueue
            clock = Clock()
            queue = ThreadSafeTimerQueue(TimerWheel(clock))
            handle = queue.createTimer()
            queue.setTimer(handle, print, 1.0, "fired")
            clock.advance(0.99)
            print("not yet")
            clock.advance(0.01)
        """)
        self.assertEqual(output, "not yet\nfired\n")

    def check(self, clock: Any, inner: Any, counters: TimerQueueCounters) -> None:
        queue = ThreadSafeTimerQueue(inner)
        fired: list[object] = []
        h = queue.createTimer()
        self.assertFalse(queue.setTimer(h, fired.append, 1.0, "a"))
        self.assertEqual(counters.pending, 1)  # reached the wrapped queue within the call
        queue.setOneShotTimer(fired.append, 0.5, "one-shot")
        clock.advance(0.5)
        self.assertEqual(fired, ["one-shot"])
        clock.advance(0.5)
        self.assertEqual(fired, ["one-shot", "a"])
        self.assertEqual(queue.shutdown(), 0)

    def test_clockWheel(self) -> None:
        clock, counters = Clock(), TimerQueueCounters()
        self.check(clock, TimerWheel(clock, monitor=counters), counters)

    def test_clockReactorQueue(self) -> None:
        clock, counters = Clock(), TimerQueueCounters()
        self.check(clock, ReactorTimerQueue(clock, monitor=counters), counters)

    def test_memoryReactorClock(self) -> None:
        clock, counters = MemoryReactorClock(), TimerQueueCounters()
        self.check(clock, TimerWheel(clock, monitor=counters), counters)

    def test_anotherReactorsThreadDoesNotMatter(self) -> None:
        """A reactor that ran in another thread is not this clock's."""
        self.patch(threadable, "ioThread", -1)
        clock, counters = Clock(), TimerQueueCounters()
        self.check(clock, TimerWheel(clock, monitor=counters), counters)

    def test_callsFromAnotherThreadAreDirectToo(self) -> None:
        """
        The clock's timers run in whichever thread calls C{advance()}; a call
        from another thread changes the wrapped queue within the call too
        (there is no thread to carry it to), so the test keeps to one thread
        at a time, as it must with the clock itself.
        """
        clock, counters = Clock(), TimerQueueCounters()
        queue = ThreadSafeTimerQueue(TimerWheel(clock, monitor=counters))
        fired: list[object] = []
        h = queue.createTimer()
        answers: list[bool] = []
        worker = threading.Thread(target=lambda: answers.append(queue.setTimer(h, fired.append, 1)))
        worker.start()
        worker.join(30)
        self.assertEqual((answers, counters.pending), ([False], 1))
        clock.advance(1)
        self.assertEqual(fired, [None])

    def test_anExplicitChoiceWins(self) -> None:
        """C{isReactorThread} given: the test decides, and a hop needs C{callFromThread}."""
        clock = Clock()
        queue = ThreadSafeTimerQueue(TimerWheel(clock), None, lambda: False)
        self.assertRaises(AttributeError, queue.setTimer, queue.createTimer(), print, 1)


class FakeReactor(Clock):
    """A clock with C{callFromThread} and system event triggers, none of which run by themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.hops: list[Any] = []
        self.triggers: list[tuple[Any, ...]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.hops.append((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f, args))

    def hop(self) -> None:
        hops, self.hops = self.hops, []
        for f, args in hops:
            f(*args)


class RecordingLock:
    """A lock that records when it is taken and released."""

    def __init__(self, log: list[str]) -> None:
        self.lock = threading.Lock()
        self.log = log

    def __enter__(self) -> None:
        self.lock.acquire()
        self.log.append("locked")

    def __exit__(self, *exc: object) -> None:
        self.log.append("released")
        self.lock.release()


class BeforeTheReactorRunsTests(SynchronousTestCase):
    """
    Before any reactor has registered its thread, the main thread is taken
    as the reactor's; other threads hop; the reactor's start waits for the lock.
    """

    def setUp(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise SkipTest("the test runner does not run tests in the main thread")
        self.patch(threadable, "ioThread", None)
        self.reactor = FakeReactor()
        self.counters = TimerQueueCounters()
        self.queue = ThreadSafeTimerQueue(TimerWheel(self.reactor, monitor=self.counters))
        self.fired: list[object] = []

    def fromAnotherThread(self, f: Any, *args: Any) -> object:
        answers: list[object] = []
        worker = threading.Thread(target=lambda: answers.append(f(*args)))
        worker.start()
        worker.join(30)
        [answer] = answers
        return answer

    def test_mainThreadIsDirect(self) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.queue.setTimer(h, self.fired.append, 1, "main"))
        self.assertEqual((self.counters.pending, self.reactor.hops), (1, []))
        self.reactor.advance(1)
        self.assertEqual(self.fired, ["main"])

    def test_anotherThreadHops(self) -> None:
        h = self.queue.createTimer()
        self.assertFalse(self.fromAnotherThread(self.queue.setTimer, h, self.fired.append, 1, "x"))
        self.assertTrue(self.queue.isSet(h))  # answered at once...
        self.assertEqual(self.counters.pending, 0)  # ...applied on the reactor's turn
        self.assertEqual(len(self.reactor.hops), 1)
        self.reactor.hop()
        self.assertEqual(self.counters.pending, 1)
        self.reactor.advance(1)
        self.assertEqual(self.fired, ["x"])

    def test_reactorInAnotherThread(self) -> None:
        """Once a reactor registered another thread, the main thread hops."""
        threadable.ioThread = -1
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 1, "main")
        self.assertEqual((self.counters.pending, len(self.reactor.hops)), (0, 1))

    def test_startupWaitsForTheLock(self) -> None:
        [(phase, event, fence, args)] = self.reactor.triggers
        self.assertEqual((phase, event), ("before", "startup"))
        self.assertEqual(args, (self.queue._lock,))  # the queue's lock, and only that
        log: list[str] = []
        fence(RecordingLock(log))
        self.assertEqual(log, ["locked", "released"])

    def test_aDroppedQueueIsFreed(self) -> None:
        """The reactor's trigger keeps the lock, not the queue (a pending timer would)."""
        queue = ThreadSafeTimerQueue(TimerWheel(self.reactor))
        queue.createTimer()
        ref = weakref.ref(queue)
        del queue
        gc.collect()
        self.assertIsNone(ref())
        self.assertEqual(len(self.reactor.triggers), 2)

    def test_noFenceOnceAReactorRan(self) -> None:
        threadable.ioThread = threading.get_ident()
        ThreadSafeTimerQueue(TimerWheel(self.reactor))
        self.assertEqual(len(self.reactor.triggers), 1)  # setUp's queue only

    def test_aRealReactorBeforeAndAfterItRuns(self) -> None:
        """
        In a new process: before C{reactor.run()} the main thread's call is
        direct and another thread's waits for the reactor; once it runs, the
        main thread's first call applies its own change at once (the waiting
        one is applied on the reactor's turn, not inside that call), and every
        timer fires in the reactor's thread.
        """
        output = runScript("""
            import threading
            from twisted.internet import reactor
            from timerserver import ThreadSafeTimerQueue, TimerQueueCounters, TimerWheel
            counters = TimerQueueCounters()
            queue = ThreadSafeTimerQueue(TimerWheel(reactor, monitor=counters))
            fired = []
            def record(name):
                fired.append((name, threading.current_thread() is threading.main_thread()))
            queue.setTimer(queue.createTimer(), record, 0.01, "main")
            print("main, before run:", counters.pending)
            worker = threading.Thread(
                target=queue.setTimer, args=(queue.createTimer(), record, 0.01, "worker"))
            worker.start()
            worker.join()
            print("worker, before run:", counters.pending)
            def running():
                before = counters.pending
                queue.setTimer(queue.createTimer(), record, 0.01, "running")
                print("main, running:", before, counters.pending)
                queue.setOneShotTimer(lambda _: reactor.stop(), 0.5)
            reactor.callWhenRunning(running)
            reactor.run()
            print(sorted(fired))
        """)
        self.assertEqual(
            output.splitlines(),
            [
                "main, before run: 1",
                "worker, before run: 1",
                "main, running: 1 2",
                "[('main', True), ('running', True), ('worker', True)]",
            ],
        )


class FromAnotherThreadTests(SynchronousTestCase):
    """Calls from another thread answer at once and reach the queue through callFromThread."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.hops: list[Any] = []
        self.clock.callFromThread = lambda f, *a: self.hops.append((f, a))  # type: ignore[attr-defined]
        self.inner = TimerWheel(self.clock)
        self.queue = ThreadSafeTimerQueue(self.inner, self.clock, lambda: False)

    def hop(self) -> None:
        for f, a in self.hops:
            f(*a)
        self.hops.clear()

    def test_answersAtOnceAndAppliesInOrder(self) -> None:
        fired: list[object] = []
        h = self.queue.createTimer()
        self.assertFalse(self.queue.setTimer(h, fired.append, 1.0, "a"))
        self.assertTrue(self.queue.isSet(h))
        self.assertTrue(self.queue.setTimer(h, fired.append, 2.0, "b"))
        self.assertEqual(len(self.hops), 1)  # one hop for both changes
        self.assertIn("pending=0", repr(self.inner))  # not applied yet
        self.hop()
        self.clock.advance(1.5)
        self.assertEqual(fired, [])
        self.clock.advance(0.6)
        self.assertEqual(fired, ["b"])
        self.assertFalse(self.queue.isSet(h))

    def test_theHopAddsNoDelay(self) -> None:
        fired: list[float] = []
        self.queue.setOneShotTimer(lambda _: fired.append(self.clock.seconds()), 1.0)
        self.clock.advance(0.4)  # the reactor thread is busy; the hop waits
        self.hop()
        self.clock.advance(0.61)
        self.assertEqual(len(fired), 1)
        self.assertLess(fired[0], 1.02)

    def test_cancelReportedPendingNeverFires(self) -> None:
        fired: list[object] = []
        h = self.queue.createTimer()
        self.queue.setTimer(h, fired.append, 0.5, "a")
        self.hop()
        self.clock.advance(0.6)  # due, and the wheel fires the dispatcher...
        self.assertEqual(fired, ["a"])
        self.queue.setTimer(h, fired.append, 0.5, "b")
        self.hop()
        self.assertTrue(self.queue.cancelTimer(h))  # reported pending: "b" must not run
        self.clock.advance(1)
        self.assertEqual(fired, ["a"])

    def test_updateRules(self) -> None:
        fired: list[object] = []
        h = self.queue.createTimer()
        self.queue.updateTimer(h, fired.append, 2.0, "first")
        self.assertTrue(
            self.queue.updateTimer(h, fired.append, 3.0, "later?", UpdateTimerIf.IF_SOONER)
        )
        self.assertTrue(
            self.queue.updateTimer(h, fired.append, 9.0, "kept", UpdateTimerIf.NO_TIMEOUT_CHANGE)
        )
        self.assertTrue(self.queue.setTimer(h, fired.append, 0.1, "no", SetTimerIf.IF_NOT_SET))
        self.hop()
        self.clock.advance(2.1)
        self.assertEqual(fired, ["kept"])

    def test_badArgumentsRaiseInTheCallersThread(self) -> None:
        h = self.queue.createTimer()
        self.assertRaises(ValueError, self.queue.setTimer, h, print, -1)
        self.assertRaises(TypeError, self.queue.setTimer, h, print, "1")
        self.assertRaises(TypeError, self.queue.setTimer, h, object(), 1)
        self.queue.destroyTimer(h)
        self.assertRaises(InvalidTimerHandle, self.queue.setTimer, h, print, 1)
        self.assertRaises(
            InvalidTimerHandle, self.queue.cancelTimer, TimerWheel(self.clock).createTimer()
        )
        self.assertEqual(self.hops, [])  # nothing: the destroyed handle was never set


class RealThreadTests(TestCase):
    """Several threads against one queue while the real reactor fires its timers."""

    timeout = 60

    def check(self, inner: Any) -> Generator[Any, Any, None]:
        queue = ThreadSafeTimerQueue(inner)
        fired: Counter[object] = Counter()
        firedIn: set[int] = set()
        replaced: set[object] = set()
        finals: set[object] = set()
        mainThread = threading.get_ident()

        early: list[object] = []
        deadlines: dict[object, float] = {}

        def onTimer(token: object) -> None:
            fired[token] += 1
            firedIn.add(threading.get_ident())
            if reactor.seconds() < deadlines.get(token, 0):
                early.append(token)
            if token[2] == "chain":  # type: ignore[index]
                queue.setOneShotTimer(onTimer, 0.001, (token[0], token[1], "chained"))  # type: ignore[index]

        def work(number: int) -> None:
            rng = random.Random(number)
            chain = (number, "start", "chain")  # its callback sets a one-shot
            queue.setTimer(queue.createTimer(), onTimer, 0.002, chain)
            finals.add(chain)
            handles = [queue.createTimer() for _ in range(10)]
            armed: dict[int, object] = {}
            for step in range(2000):
                i = rng.randrange(len(handles))
                h = handles[i]
                token = (number, step, "chain" if step % 50 == 0 else "plain")
                op = rng.random()
                timeout = rng.uniform(0, 0.002)
                deadlines[token] = reactor.seconds() + timeout
                if op < 0.5:
                    wasPending = queue.setTimer(h, onTimer, timeout, token)
                elif op < 0.75:
                    wasPending = queue.updateTimer(h, onTimer, timeout, token)
                else:
                    wasPending = queue.cancelTimer(h)
                    token = None
                if wasPending and i in armed:
                    replaced.add(armed[i])
                if token is not None:
                    armed[i] = token
                else:
                    armed.pop(i, None)
                if step % 211 == 0:
                    time.sleep(0.001)
            for i, h in enumerate(handles):
                token = (number, "final", i)
                if queue.setTimer(h, onTimer, 0.005, token) and i in armed:
                    replaced.add(armed[i])
                finals.add(token)

        yield defer.gatherResults([threads.deferToThread(work, n) for n in range(4)])
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual([t for t, n in fired.items() if n > 1], [])  # none fired twice
        self.assertEqual(replaced & set(fired), set())  # none that a cancel or re-set replaced
        self.assertEqual(early, [])  # none before its deadline
        self.assertEqual(firedIn, {mainThread})  # callbacks only in the reactor thread
        self.assertEqual({t for t in finals if fired[t] == 1}, finals)  # every final set, once
        self.assertGreater(sum(1 for t in fired if t[2] == "chained"), 0)
        self.assertEqual(queue.shutdown(), 0)

    @defer.inlineCallbacks
    def test_wheel(self) -> Generator[Any, Any, None]:
        yield from self.check(TimerWheel(reactor, granularity=0.001))

    @defer.inlineCallbacks
    def test_reactorQueue(self) -> Generator[Any, Any, None]:
        yield from self.check(ReactorTimerQueue(reactor))

    @defer.inlineCallbacks
    def test_shutdownWhileThreadsAreCalling(self) -> Generator[Any, Any, None]:
        inner = TimerWheel(reactor, granularity=0.001)
        queue = ThreadSafeTimerQueue(inner)
        after: list[object] = []
        stopped = threading.Event()

        def onTimer(token: object) -> None:
            if stopped.is_set():
                after.append(token)

        def work(number: int) -> str:
            h = queue.createTimer()
            for step in range(100_000):
                try:
                    queue.setTimer(h, onTimer, 0.002, (number, step))
                except RuntimeError:
                    return "stopped"
            return "never stopped"

        calls = [threads.deferToThread(work, n) for n in range(3)]
        yield task.deferLater(reactor, 0.05, lambda: None)
        cancelled = queue.shutdown()
        stopped.set()
        results = yield defer.gatherResults(calls)
        self.assertEqual(results, ["stopped"] * 3)
        self.assertLessEqual(cancelled, 3)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(after, [])
        self.assertIn("pending=0", repr(inner))
        self.assertRaises(RuntimeError, queue.setOneShotTimer, print, 1)


class HopReactor(FakeReactor):
    """A L{FakeReactor} whose clock can jump right after a given read (a thread switch there)."""

    def __init__(self) -> None:
        super().__init__()
        self.jumps: list[float | None] = []  # per read from now on: how far the clock then moves

    def seconds(self) -> float:
        now = self.rightNow
        if self.jumps:
            step = self.jumps.pop(0)
            if step is not None:
                self.rightNow += step
        return now


class NoReentryLock:
    """
    The queue's lock, telling (instead of deadlocking) when the thread that
    holds it takes it again: code run by a reference dropped under the lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: int | None = None
        self.reentered = 0

    def __enter__(self) -> None:
        if self.owner == threading.get_ident():
            self.reentered += 1
            raise RuntimeError("the queue's lock taken again by the thread holding it")
        self.lock.acquire()
        self.owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self.lock.release()


class RefusingWheel(TimerWheel):
    """A wrapped queue that refuses the next C{refuse} sets."""

    refuse = 0

    def setTimer(self, *args: Any, **kwargs: Any) -> bool:
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError("refused")
        return super().setTimer(*args, **kwargs)


class QueuedChangesTests(SynchronousTestCase):
    """
    What other threads change waits for the reactor thread: at most one
    entry a handle, applied from the handle's state then, never stale work.
    """

    def setUp(self) -> None:
        self.reactor = HopReactor()
        self.reactor.advance(1000)
        self.counters = TimerQueueCounters()
        self.inner = TimerWheel(self.reactor, monitor=self.counters)
        self.inReactor = False
        self.queue = ThreadSafeTimerQueue(self.inner, self.reactor, lambda: self.inReactor)
        self.fired: list[object] = []

    def test_manyChangesOfOneHandleAreOneEntry(self) -> None:
        """
        A thread re-arming one handle while the reactor is busy leaves one
        change, not one per call; the reactor applies only the latest.
        """
        h = self.queue.createTimer()
        for i in range(1000):
            self.queue.setTimer(h, self.fired.append, 5.0, i)
            if i % 2:
                self.queue.cancelTimer(h)
        self.queue.setTimer(h, self.fired.append, 1.0, "last")
        self.assertEqual(len(self.queue._changes), 1)
        self.assertEqual(len(self.reactor.hops), 1)
        self.reactor.hop()
        self.assertEqual((self.counters.set, self.counters.pending), (1, 1))
        self.reactor.advance(1.01)
        self.assertEqual(self.fired, ["last"])

    def test_aCancelledHandleCostsTheWrappedQueueNothing(self) -> None:
        """Set and cancelled before the reactor's turn: nothing is set, stale work is dropped."""
        h = self.queue.createTimer()
        for _ in range(100):
            self.queue.setTimer(h, self.fired.append, 1.0)
            self.queue.cancelTimer(h)
        self.reactor.hop()
        self.assertEqual((self.counters.set, self.counters.created), (0, 0))

    def test_theReactorThreadDoesNotApplyOtherHandlesInItsCall(self) -> None:
        """A reactor-thread call changes its own handle; the others wait for the hop."""
        others = [self.queue.createTimer() for _ in range(100)]
        for h in others:
            self.queue.setTimer(h, self.fired.append, 1.0, "other")
        mine = self.queue.createTimer()
        self.inReactor = True
        self.queue.setTimer(mine, self.fired.append, 1.0, "mine")
        self.assertEqual(self.counters.set, 1)
        self.reactor.hop()
        self.assertEqual(self.counters.set, 101)
        self.reactor.advance(1.01)
        self.assertEqual(len(self.fired), 101)

    def test_aDirectSetAfterAQueuedOneWins(self) -> None:
        """A set from the reactor thread after a queued one: the hop then leaves it alone."""
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 0.5, "queued")
        self.inReactor = True
        self.queue.setTimer(h, self.fired.append, 2.0, "direct")
        self.reactor.hop()
        self.reactor.advance(1)
        self.assertEqual(self.fired, [])
        self.reactor.advance(1.01)
        self.assertEqual(self.fired, ["direct"])

    def test_shutdownFromAnotherThreadDropsQueuedOneShots(self) -> None:
        self.queue.setOneShotTimer(self.fired.append, 1.0, "one-shot")
        self.queue.setTimer(self.queue.createTimer(), self.fired.append, 1.0, "handle")
        self.assertEqual(self.queue.shutdown(), 2)
        self.reactor.hop()
        self.reactor.advance(2)
        self.assertEqual((self.fired, self.counters.pending), ([], 0))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    # IF_SOONER

    def test_ifSoonerReadsTheClockOnce(self) -> None:
        """
        The clock moves on between reads (the caller lost the GIL): an
        update that was sooner when it was decided stays sooner.
        """
        h = self.queue.createTimer()
        self.queue.setTimer(h, self.fired.append, 1.0, "old")  # due at 1001
        self.reactor.jumps = [0.5]  # 0.5 s pass right after the first read
        self.assertTrue(
            self.queue.updateTimer(h, self.fired.append, 0.8, "new", UpdateTimerIf.IF_SOONER)
        )
        self.reactor.hop()
        self.reactor.advance(1001 - self.reactor.seconds())
        self.assertEqual(self.fired, ["new"])

    # What the wrapped queue refuses

    def test_aClockSteppedBackIsCappedAtTheMaximum(self) -> None:
        """
        The clock went back between a thread's set and the reactor's turn:
        the wait left is capped at the wrapped queue's maximum, and the
        changes queued after it still apply.
        """
        inner = TimerWheel(self.reactor, maximumTimeout=60)
        queue = ThreadSafeTimerQueue(inner, self.reactor, lambda: False)
        long, other = queue.createTimer(), queue.createTimer()
        queue.setTimer(long, self.fired.append, 59, "long")
        queue.setTimer(other, self.fired.append, 1, "other")
        self.reactor.rightNow -= 2
        self.reactor.hop()
        self.reactor.advance(1001.01 - self.reactor.seconds())  # "other" is due at 1001
        self.assertEqual(self.fired, ["other"])
        self.reactor.advance(60)  # "long": 60 s after the reactor's turn at the most
        self.assertEqual(self.fired, ["other", "long"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_aRefusedChangeLosesNoOther(self) -> None:
        """
        A change the wrapped queue refuses is logged and that timer is no
        longer pending; every other change is applied.
        """
        inner = RefusingWheel(self.reactor)
        queue = ThreadSafeTimerQueue(inner, self.reactor, lambda: False)
        refused, other = queue.createTimer(), queue.createTimer()
        queue.setTimer(refused, self.fired.append, 1, "refused")
        queue.setTimer(other, self.fired.append, 1, "other")
        queue.setOneShotTimer(self.fired.append, 1, "one-shot")
        inner.refuse = 1
        self.reactor.hop()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(queue.isSet(refused))
        self.assertTrue(queue.isSet(other))
        self.reactor.advance(1.01)
        self.assertEqual(self.fired, ["other", "one-shot"])
        self.assertEqual(queue.shutdown(), 0)


class ReferencesDroppedAfterTheLockTests(SynchronousTestCase):
    """
    What a call replaces (a timer, a userData) is released once the lock
    is: its C{__del__} may use the queue.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.inReactor = True
        self.queue = ThreadSafeTimerQueue(
            TimerWheel(self.reactor), self.reactor, lambda: self.inReactor
        )
        self.lock = NoReentryLock()
        self.queue._lock = self.lock  # type: ignore[assignment]
        self.other = self.queue.createTimer()
        self.finalised: list[bool] = []

    def finalisable(self) -> object:
        queue, other, finalised = self.queue, self.other, self.finalised

        class Finalised:
            def __del__(self) -> None:
                finalised.append(queue.isSet(other))

        return Finalised()

    def check(self, replace: Any) -> None:
        for inReactor in (True, False):
            self.inReactor = inReactor
            h = self.queue.createTimer()
            self.queue.setTimer(h, print, 10, self.finalisable())
            self.reactor.hop()
            replace(h)
            self.reactor.hop()
        self.assertEqual((self.lock.reentered, self.finalised), (0, [False, False]))

    def test_setTimer(self) -> None:
        self.check(lambda h: self.queue.setTimer(h, print, 10, "new"))

    def test_setTimerAgain(self) -> None:
        """The reactor thread's re-arm of a handle armed before: the inlined path."""

        def replace(h: Any) -> None:
            self.queue.setTimer(h, print, 10, "new")
            self.queue.setTimer(h, print, 10, self.finalisable())
            self.queue.setTimer(h, print, 10, "newer")
            self.finalised.pop()

        self.check(replace)

    def test_updateTimer(self) -> None:
        self.check(lambda h: self.queue.updateTimer(h, print, 10, "new"))

    def test_updateTimerNoTimeoutChange(self) -> None:
        self.check(
            lambda h: self.queue.updateTimer(h, print, 10, "new", UpdateTimerIf.NO_TIMEOUT_CHANGE)
        )

    def test_destroyTimer(self) -> None:
        self.check(self.queue.destroyTimer)

    def test_aTimerReplaced(self) -> None:
        """A timer (a callable whose last reference the queue held) as well as a userData."""

        def check(h: Any) -> None:
            self.queue.setTimer(h, lambda _: None, 10, "new")

        class Timer:
            def __init__(self, data: object) -> None:
                self.data = data

            def __call__(self, _: object) -> None:
                pass

        for inReactor in (True, False):
            self.inReactor = inReactor
            h = self.queue.createTimer()
            self.queue.setTimer(h, Timer(self.finalisable()), 10)
            self.reactor.hop()
            check(h)
        self.assertEqual((self.lock.reentered, self.finalised), (0, [False, False]))


class CallbackErrorsTests(SynchronousTestCase):
    """An exception from a callback is logged naming the user's callback, as the bare queue does."""

    def test_theUsersCallbackIsNamed(self) -> None:
        clock = Clock()
        queue = ThreadSafeTimerQueue(TimerWheel(clock))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def failing(_: object) -> None:
            raise ZeroDivisionError()

        queue.setTimer(queue.createTimer(), failing, 0)
        queue.setOneShotTimer(failing, 0)
        clock.advance(0.1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        timers = [e.get("timer") for e in events if e.get("log_failure")]
        self.assertEqual(timers, [failing, failing])


class FreedByReferenceCountingTests(SynchronousTestCase):
    """A handle dropped without destroyTimer is freed at once, as the bare queue's is."""

    def test_aDroppedHandleNeedsNoCollector(self) -> None:
        clock = Clock()
        queue = ThreadSafeTimerQueue(TimerWheel(clock))
        queue.setTimer(queue.createTimer(), print, 3600)  # the wheel stays busy

        class Data:
            pass

        gc.disable()
        self.addCleanup(gc.enable)
        for fire in (True, False):
            data = Data()
            ref = weakref.ref(data)
            h = queue.createTimer()
            queue.setTimer(h, lambda _: None, 0.5, data)
            del data
            if fire:
                clock.advance(1)
            else:
                queue.cancelTimer(h)
            del h
            self.assertIsNone(ref())
