"""
What the library's adoption helpers cost, each against its baseline in the
same run:

 - L{timerserver.policies.TimeoutMixin} against Twisted's
   C{twisted.protocols.policies.TimeoutMixin}: bytes per protocol with a
   pending timeout (100,000 protocols, tracemalloc) and CPU per
   C{resetTimeout()} (the call every C{dataReceived} makes);
 - L{ThreadSafeTimerQueue} called from the reactor thread against the bare
   queue it wraps: set + cancel, and re-arm.

Each reactor is a fresh epoll reactor that never runs, with its clock
replaced so that nothing fires.

    python -m bench.library [--protocols 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.protocols import policies as twistedPolicies

from bench.results import writeResults
from timerserver import ReactorTimerQueue, ThreadSafeTimerQueue, TimerWheel
from timerserver import policies as ourPolicies


def reactor() -> EPollReactor:
    r = EPollReactor()
    now = [1_000_000.0]
    r.seconds = lambda: now[0]  # type: ignore[method-assign]
    return r


def twistedProtocols(count: int) -> tuple[list[Any], Any]:
    r = reactor()

    class Proto(protocol.Protocol, twistedPolicies.TimeoutMixin):
        def callLater(self, period: float, func: Callable[..., Any]) -> Any:
            return r.callLater(period, func)

    return [Proto() for _ in range(count)], r


def ourProtocols(count: int, makeQueue: Callable[[Any], Any]) -> tuple[list[Any], Any]:
    r = reactor()

    class Proto(protocol.Protocol, ourPolicies.TimeoutMixin):
        timerQueue = makeQueue(r)

    return [Proto() for _ in range(count)], r


def bytesPerTimeout(make: Callable[[], tuple[list[Any], Any]]) -> float:
    """Bytes a pending timeout adds to a protocol (the protocol itself not counted)."""
    protocols, r = make()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for p in protocols:
        p.setTimeout(60)
    r.runUntilCurrent()  # Twisted's calls move from the new list to the heap
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(protocols)


def usPerCall(calls: Callable[[], None], count: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        calls()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def resetCost(make: Callable[[], tuple[list[Any], Any]], rounds: int = 5) -> float:
    protocols, r = make()
    for p in protocols:
        p.setTimeout(60)
    r.runUntilCurrent()

    def run() -> None:
        for _ in range(rounds):
            for p in protocols:
                p.resetTimeout()

    return usPerCall(run, rounds * len(protocols))


def threadSafeCosts(count: int) -> dict[str, dict[str, float]]:
    """
    Set + cancel and re-arm from the reactor thread, bare queue against the
    wrapper, and one uncontended lock (acquire and release) for scale.
    """
    results: dict[str, dict[str, float]] = {}
    for name, makeQueue in (("TimerWheel", TimerWheel), ("ReactorTimerQueue", ReactorTimerQueue)):
        for wrapped in (False, True):
            r = reactor()
            queue = makeQueue(r)
            if wrapped:
                queue = ThreadSafeTimerQueue(queue, r, lambda: True)
            handles = [queue.createTimer() for _ in range(count)]
            # One timer stays pending, so the queue never empties (an empty
            # wheel would cancel and re-make its reactor call every time).
            queue.setTimer(queue.createTimer(), print, 3600.0)

            def setCancel() -> None:
                for h in handles:
                    queue.setTimer(h, print, 30.0)
                    queue.cancelTimer(h)

            def rearm() -> None:
                for h in handles:
                    queue.setTimer(h, print, 30.0)

            label = f"{name} {'thread-safe' if wrapped else 'bare'}"
            results[label] = {"setCancel": usPerCall(setCancel, count)}
            rearm()
            results[label]["rearm"] = usPerCall(rearm, count)
    lock = threading.Lock()

    def locks() -> None:
        for _ in range(count):
            with lock:
                pass

    results["one uncontended lock"] = {"setCancel": usPerCall(locks, count)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--protocols", type=int, default=100_000)
    parser.add_argument("--json", default="bench/results/library.json")
    args = parser.parse_args()
    n = args.protocols
    subjects = {
        "Twisted TimeoutMixin": lambda: twistedProtocols(n),
        "ours, TimerWheel": lambda: ourProtocols(n, TimerWheel),
        "ours, ReactorTimerQueue": lambda: ourProtocols(n, ReactorTimerQueue),
    }
    mixin = {
        name: {"bytesPerTimeout": bytesPerTimeout(make), "usPerReset": resetCost(make)}
        for name, make in subjects.items()
    }
    base = mixin["Twisted TimeoutMixin"]
    print(f"\nTimeoutMixin, {n:,} protocols with a pending timeout")
    print(f"{'':26}{'bytes':>8}{'ratio':>7}{'us/reset':>10}{'ratio':>7}")
    for name, r in mixin.items():
        size, reset = r["bytesPerTimeout"], r["usPerReset"]
        print(
            f"{name:26}{size:>8.0f}{size / base['bytesPerTimeout']:>7.2f}"
            f"{reset:>10.3f}{reset / base['usPerReset']:>7.2f}"
        )
    safe = threadSafeCosts(n)
    print(f"\nThreadSafeTimerQueue from the reactor thread, {n:,} handles (us per operation)")
    print(f"{'':32}{'set+cancel':>11}{'ratio':>7}{'re-arm':>9}{'ratio':>7}")
    for name, r in safe.items():
        if "rearm" not in r:
            print(f"{name:32}{r['setCancel']:>11.3f}")
            continue
        bare = safe[name.replace("thread-safe", "bare")]
        print(
            f"{name:32}{r['setCancel']:>11.3f}{r['setCancel'] / bare['setCancel']:>7.2f}"
            f"{r['rearm']:>9.3f}{r['rearm'] / bare['rearm']:>7.2f}"
        )
    writeResults({"timeoutMixin": mixin, "threadSafe": safe}, args.json)


if __name__ == "__main__":
    main()
