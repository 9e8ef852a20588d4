"""
L{ThreadSafeTimerQueue}: the contract in the reactor thread, and real threads
setting, updating and cancelling timers while a real reactor fires them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.contract import QueueContractMixin
from timerserver import (
    InvalidTimerHandle,
    ReactorTimerQueue,
    SetTimerIf,
    ThreadSafeTimerQueue,
    TimerWheel,
    UpdateTimerIf,
)


def alwaysReactorThread() -> bool:
    return True


class ThreadSafeWheelContractTests(QueueContractMixin, SynchronousTestCase):
    tolerance = 0.01

    def makeQueue(self, clock: Clock, **kwargs: Any) -> ThreadSafeTimerQueue:
        return ThreadSafeTimerQueue(TimerWheel(clock, **kwargs), clock, alwaysReactorThread)

    def test_monitorCountsEveryOperation(self) -> None:
        """The wrapped queue's monitor sees only what reaches it: not part of this contract."""


class ThreadSafeReactorQueueContractTests(QueueContractMixin, SynchronousTestCase):
    def makeQueue(self, clock: Clock, **kwargs: Any) -> ThreadSafeTimerQueue:
        return ThreadSafeTimerQueue(ReactorTimerQueue(clock, **kwargs), clock, alwaysReactorThread)

    def test_monitorCountsEveryOperation(self) -> None:
        """The wrapped queue's monitor sees only what reaches it: not part of this contract."""


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
        self.assertEqual(self.hops, [(self.queue._apply, ())])  # only the destroy was queued


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
