"""
The server's hot path in one process, without sockets: what the metrics'
counters, queue monitor and lateness histogram add per periodic message.

10,000 connections of the real protocol on a L{TimerWheel} over
C{task.Clock}, with a transport that drops what is written, so that only
Python work is measured: the same run with and without metrics, alternated.

    python -m bench.hotpath [--connections 10000] [--pairs 5]
"""

from __future__ import annotations

import argparse
import gc
import time

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from timerserver import TimerQueueCounters, TimerWheel
from timerserver.factory import TimerServerFactory
from timerserver.lateness import LatenessHistogram


class Discard(StringTransport):
    def write(self, data: bytes) -> None:
        pass


def usPerMessage(metrics: bool, connections: int, seconds: float = 20.0) -> float:
    clock = Clock()
    monitor = TimerQueueCounters() if metrics else None
    factory = TimerServerFactory(TimerWheel(clock, monitor=monitor), interval=1.0, welcome=None)
    if metrics:
        factory.lateness = LatenessHistogram()
    for _ in range(connections):
        factory.buildProtocol(None).makeConnection(Discard())
        clock.advance(1.0 / connections)
    gc.collect()
    gc.disable()  # a collection landing in one run and not the other is noise here
    try:
        started = time.process_time()
        for _ in range(round(seconds / 0.01)):
            clock.advance(0.01)
        return (time.process_time() - started) / factory.periodicMessages * 1e6
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    bare, metered = [], []
    for _ in range(args.pairs):
        bare.append(usPerMessage(False, args.connections))
        metered.append(usPerMessage(True, args.connections))
        print(f"without {bare[-1]:.3f} us/msg  with metrics {metered[-1]:.3f} us/msg")
    extra = min(metered) - min(bare)
    print(f"metrics add {extra:.3f} us per message (best of {args.pairs} each)")


if __name__ == "__main__":
    main()
