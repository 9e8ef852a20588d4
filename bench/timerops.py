"""
Timer operation costs at 1,000 to 1,000,000 pending timers.

Compares raw C{reactor.callLater}/C{DelayedCall}, L{ReactorTimerQueue},
L{TimerWheel} and asyncio's C{loop.call_later} (an outside reference), all in
one run, and reports each as a ratio of the raw Twisted baseline.  Time is
faked (each reactor's C{seconds} replaced) so that firing is measured without
sleeping.  Bytes per pending timer come from tracemalloc.

    python -m bench.timerops [--sizes 1000,10000,100000,1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPollReactor

from bench.results import writeResults
from timerserver import ReactorTimerQueue, TimerWheel

OPERATIONS = [
    "create",
    "set",
    "rearmLater",
    "rearmSooner",
    "cancel",
    "setCancel",
    "fire",
    "destroy",
]
BATCH = 5000
BUDGET = 0.3  # seconds of work at most per measurement repeat


def callback(userData: object) -> None:
    pass


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Subject:
    """One implementation, with a clock we move by hand."""

    name = ""
    hasHandles = True

    def __init__(self) -> None:
        self.time = FakeTime()

    def setup(self) -> None: ...
    def create(self) -> Any: ...
    def set(self, h: Any, timeout: float) -> Any: ...
    def rearm(self, h: Any, timeout: float) -> Any: ...
    def cancel(self, h: Any) -> None: ...
    def destroy(self, h: Any) -> None: ...
    def runDue(self) -> None: ...


class RawTwisted(Subject):
    name = "callLater"
    hasHandles = False

    def setup(self) -> None:
        self.reactor = EPollReactor()
        self.reactor.seconds = self.time  # type: ignore[method-assign]

    def set(self, h: Any, timeout: float) -> Any:
        return self.reactor.callLater(timeout, callback, None)

    def rearm(self, h: Any, timeout: float) -> Any:
        h.reset(timeout)
        return h

    def cancel(self, h: Any) -> None:
        h.cancel()

    def runDue(self) -> None:
        self.reactor.runUntilCurrent()


class QueueSubject(Subject):
    def makeQueue(self, reactor: Any) -> Any:
        raise NotImplementedError

    def setup(self) -> None:
        self.reactor = EPollReactor()
        self.reactor.seconds = self.time  # type: ignore[method-assign]
        self.queue = self.makeQueue(self.reactor)
        self.setTimer = self.queue.setTimer

    def create(self) -> Any:
        return self.queue.createTimer()

    def set(self, h: Any, timeout: float) -> Any:
        if h is None:
            h = self.queue.createTimer()
        self.setTimer(h, callback, timeout)
        return h

    rearm = set

    def cancel(self, h: Any) -> None:
        self.queue.cancelTimer(h)

    def destroy(self, h: Any) -> None:
        self.queue.destroyTimer(h)

    def runDue(self) -> None:
        self.reactor.runUntilCurrent()


class ReactorQueue(QueueSubject):
    name = "ReactorTimerQueue"

    def makeQueue(self, reactor: Any) -> Any:
        return ReactorTimerQueue(reactor)


class Wheel(QueueSubject):
    name = "TimerWheel"

    def makeQueue(self, reactor: Any) -> Any:
        return TimerWheel(reactor, granularity=0.01)


class Asyncio(Subject):
    name = "asyncio call_later"
    hasHandles = False

    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.time = self.time  # type: ignore[method-assign]

    def set(self, h: Any, timeout: float) -> Any:
        return self.loop.call_later(timeout, callback, None)

    def rearm(self, h: Any, timeout: float) -> Any:
        h.cancel()
        return self.loop.call_later(timeout, callback, None)

    def cancel(self, h: Any) -> None:
        h.cancel()

    def runDue(self) -> None:
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()


SUBJECTS: list[type[Subject]] = [RawTwisted, ReactorQueue, Wheel, Asyncio]


def timed(fn: Callable[[], int]) -> float:
    """Seconds per operation of C{fn}, which returns how many it did."""
    gc.disable()
    try:
        start = time.perf_counter()
        count = fn()
        return (time.perf_counter() - start) / max(count, 1)
    finally:
        gc.enable()


def measure(subject: Subject, pending: int, repeats: int) -> dict[str, float | None]:
    """Microseconds per operation with C{pending} other timers pending."""
    rng = random.Random(1)
    subject.setup()
    background = []
    for _ in range(pending):
        h = subject.create() if subject.hasHandles else None
        background.append(subject.set(h, rng.uniform(100, 1000)))
    subject.runDue()
    results: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    timeouts = [rng.uniform(10, 90) for _ in range(BATCH)]

    def batchSize(op: str) -> int:
        # reset sooner on a big raw heap is a linear scan: keep it bounded.
        if op == "rearmSooner" and isinstance(subject, RawTwisted) and pending >= 100000:
            return 20
        return BATCH

    for _ in range(repeats):
        n = batchSize("create")
        if subject.hasHandles:
            handles: list[Any] = []
            results["create"].append(
                timed(lambda: [handles.append(subject.create()) for _ in range(n)] and n)
            )
        else:
            handles = [None] * n

        armed: list[Any] = []

        def setAll() -> int:
            for h, t in zip(handles, timeouts):
                armed.append(subject.set(h, t))
            subject.runDue()  # Twisted pushes new calls onto its heap here
            return n

        results["set"].append(timed(setAll))

        def rearmAll(delta: float, count: int) -> Callable[[], int]:
            def run() -> int:
                for i in range(count):
                    armed[i] = subject.rearm(armed[i], timeouts[i] + delta)
                subject.runDue()
                return count

            return run

        results["rearmLater"].append(timed(rearmAll(5.0, n)))
        results["rearmSooner"].append(timed(rearmAll(-5.0, batchSize("rearmSooner"))))

        def cancelAll() -> int:
            for h in armed:
                subject.cancel(h)
            return len(armed)

        results["cancel"].append(timed(cancelAll))
        subject.runDue()

        def setCancel() -> int:
            for h, t in zip(handles, timeouts):
                subject.cancel(subject.set(h, t))
            subject.runDue()
            return n

        results["setCancel"].append(timed(setCancel))

        # n timers due within the next second, among the pending ones.
        for h in handles:
            subject.set(h, rng.uniform(0.0, 1.0))
        subject.runDue()
        subject.time.now += 1.02

        def fire() -> int:
            subject.runDue()
            return n

        results["fire"].append(timed(fire))

        if subject.hasHandles:
            results["destroy"].append(timed(lambda: [subject.destroy(h) for h in handles] and n))
    out: dict[str, float | None] = {}
    for op, values in results.items():
        out[op] = min(values) * 1e6 if values else None
    return out


def bytesPerTimer(cls: type[Subject], count: int = 100000) -> float:
    subject = cls()
    subject.setup()
    rng = random.Random(2)
    timeouts = [rng.uniform(1, 30) for _ in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = []
    for t in timeouts:
        h = subject.create() if subject.hasHandles else None
        keep.append(subject.set(h, t))
    subject.runDue()  # Twisted moves new calls onto its heap here
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The list that holds the handles here is the caller's, not the queue's.
    return (after - before - sys.getsizeof(keep)) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench/results/timerops.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    results: dict[str, Any] = {
        "unit": "microseconds per operation",
        "sizes": {},
        "bytesPerTimer": {},
    }
    for size in sizes:
        row = results["sizes"][str(size)] = {}
        for cls in SUBJECTS:
            row[cls.name] = measure(cls(), size, args.repeats)
            gc.collect()
    for cls in SUBJECTS:
        results["bytesPerTimer"][cls.name] = bytesPerTimer(cls)
    results["targets"] = targets(results, sizes)

    for size in sizes:
        row = results["sizes"][str(size)]
        base = row["callLater"]
        print(f"\n{size:,} pending: microseconds per operation (ratio to raw callLater)")
        print(f"{'':20}" + "".join(f"{op:>20}" for op in OPERATIONS))
        for name, ops in row.items():
            cells = []
            for op in OPERATIONS:
                value, ref = ops[op], base.get(op)
                if value is None:
                    cells.append(f"{'-':>20}")
                elif ref:
                    cells.append(f"{value:>11.3f} ({value / ref:4.2f}x)")
                else:
                    cells.append(f"{value:>20.3f}")
            print(f"{name:20}" + "".join(cells))
    print("\nbytes per pending timer (tracemalloc, 100,000 timers)")
    for name, value in results["bytesPerTimer"].items():
        print(f"  {name:20} {value:8.1f}")
    print("\ntargets")
    for name, (value, goal, ok) in results["targets"].items():
        print(f"  {'met ' if ok else 'MISS'} {name}: {value:.2f} (target {goal})")

    writeResults(results, args.json)


def targets(results: dict[str, Any], sizes: list[int]) -> dict[str, tuple[float, str, bool]]:
    out: dict[str, tuple[float, str, bool]] = {}
    rows = results["sizes"]
    mid = str(100000) if "100000" in rows else str(sizes[-1])
    r = rows[mid]
    speedup = r["callLater"]["setCancel"] / r["TimerWheel"]["setCancel"]
    out[f"TimerWheel set+cancel speed-up over callLater+cancel at {mid}"] = (
        speedup,
        ">= 4x",
        speedup >= 4,
    )
    if len(sizes) > 1:
        lo, hi = rows[str(sizes[0])]["TimerWheel"], rows[str(sizes[-1])]["TimerWheel"]
        flat = max(
            hi[op] / lo[op] for op in ("set", "cancel", "setCancel", "rearmLater", "rearmSooner")
        )
        out[f"TimerWheel worst op cost at {sizes[-1]} over {sizes[0]}"] = (
            flat,
            "<= 1.5x",
            flat <= 1.5,
        )
    b = results["bytesPerTimer"]["TimerWheel"]
    out["TimerWheel bytes per pending timer"] = (b, "<= 150", b <= 150)
    worstSet = max(rows[s]["ReactorTimerQueue"]["set"] / rows[s]["callLater"]["set"] for s in rows)
    out["ReactorTimerQueue set over callLater (worst size)"] = (
        worstSet,
        "<= 1.3x",
        worstSet <= 1.3,
    )
    worstCancel = max(
        rows[s]["ReactorTimerQueue"]["cancel"] / rows[s]["callLater"]["cancel"] for s in rows
    )
    out["ReactorTimerQueue cancel over DelayedCall.cancel (worst size)"] = (
        worstCancel,
        "<= 2x",
        worstCancel <= 2,
    )
    if len(sizes) > 1:
        sooner = (
            rows[str(sizes[-1])]["ReactorTimerQueue"]["rearmSooner"]
            / rows[str(sizes[0])]["ReactorTimerQueue"]["rearmSooner"]
        )
        out[f"ReactorTimerQueue re-arm sooner at {sizes[-1]} over {sizes[0]}"] = (
            sooner,
            "flat (<= 1.5x)",
            sooner <= 1.5,
        )
    return out


if __name__ == "__main__":
    main()
