"""
A process's figures: its snapshot of the counters, the arithmetic that sums
snapshots and keeps a dead worker's, and its process figures at the
open-file limit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import helpers
from timerserver import TimerQueueCounters, TimerWheel
from timerserver.factory import TimerServerFactory
from timerserver.lateness import LatenessHistogram
from timerserver.messages import STATS_FIELDS, checkStats
from timerserver.reasons import REFUSED

try:
    import prometheus_client  # noqa: F401  (a snapshot reads the process collector)
except ImportError as e:  # pragma: no cover
    raise SkipTest(f"metrics tests need pip install '.[test]' ({e})") from None

from timerserver.snapshots import combine, retired, snapshot


class SnapshotTests(SynchronousTestCase):
    def harness(
        self, maxConnections: int | None = None, maxPerPeer: int = 0, **options: Any
    ) -> tuple[TimerServerFactory, TimerQueueCounters, Clock]:
        clock = Clock()
        counters = TimerQueueCounters()
        factory = TimerServerFactory(TimerWheel(clock, monitor=counters), **options)
        factory.lateness = LatenessHistogram()
        self.admission = helpers.admission(
            factory, maxConnections=maxConnections, maxPerPeer=maxPerPeer
        )
        return factory, counters, clock

    def connect(self, factory: TimerServerFactory, host: str) -> tuple[Any, StringTransport]:
        gate, transport = helpers.connect(self.admission, host)
        return getattr(gate, "wrappedProtocol", gate), transport

    def test_countsWhatHappened(self) -> None:
        factory, counters, clock = self.harness(
            maxConnections=3, maxPerPeer=2, idleTimeout=1.0, interval=0.3, welcome=None
        )
        a, _ta = self.connect(factory, "10.0.0.1")
        b, _tb = self.connect(factory, "10.0.0.1")
        self.connect(factory, "10.0.0.1")  # refused: peer
        c, _tc = self.connect(factory, "10.0.0.2")
        self.connect(factory, "10.0.0.3")  # refused: full
        a.dataReceived(b"12345")
        for _ in range(110):
            clock.advance(0.01)
        for proto in (a, b, c):
            proto.connectionLost(None)  # a: idle closed it; all of them are gone now
        s = snapshot(factory, counters, self.admission)
        self.assertEqual(s["accepted"], 3)
        self.assertEqual({k: v for k, v in s["refused"].items() if v}, {"full": 1, "peer": 1})
        self.assertEqual(set(s["refused"]), set(REFUSED))  # every reason, 0 or not
        self.assertEqual(s["closed"]["idle"], 3)
        self.assertEqual(s["echo_bytes"], 5)
        self.assertEqual(s["periodic"], 9)  # 3 connections x 3 ticks in 1.1 s
        self.assertEqual(sum(s["lateness_counts"]), 9)
        self.assertEqual((s["connections_open"], s["timers_pending"]), (0, 0))
        self.assertEqual(s["operations"]["create"], 6)
        self.assertEqual(s["operations"]["destroy"], 6)
        self.assertGreater(s["process"]["process_resident_memory_bytes"], 0)
        checkStats(s)  # what a worker sends has the shape the master accepts

    def test_closeReasons(self) -> None:
        factory, counters, clock = self.harness(welcome=None, stallTimeout=1.0, maxBuffer=10)
        stalled, _ = self.connect(factory, "10.0.0.1")
        stalled.pauseProducing()
        clock.advance(1.1)
        stalled.connectionLost(None)
        buffered, _ = self.connect(factory, "10.0.0.1")
        buffered.pauseProducing()
        buffered.dataReceived(b"x" * 11)
        buffered.connectionLost(None)
        halfClosed, _ = self.connect(factory, "10.0.0.1")
        halfClosed.readConnectionLost()
        halfClosed.connectionLost(None)
        goodbye, _ = self.connect(factory, "10.0.0.1")
        factory.closeAll(5)
        goodbye.connectionLost(None)
        plain, _ = self.connect(factory, "10.0.0.1")
        plain.connectionLost(None)
        closed = snapshot(factory, counters, self.admission)["closed"]
        self.assertEqual(
            {k: v for k, v in closed.items() if v},
            {"stalled": 1, "buffer": 1, "client": 2, "shutdown": 1},
        )

    def test_theSnapshotsFieldsAreTheMessagesFields(self) -> None:
        from timerserver.snapshots import EMPTY

        self.assertEqual(set(EMPTY), STATS_FIELDS)

    def test_combineAndRetire(self) -> None:
        one = {"connections_open": 2, "accepted": 5, "refused": {"full": 1, "peer": 0},
               "lateness_bounds": [0.01], "lateness_counts": [1, 2], "lateness_sum": 0.5,
               "timers_pending": 4, "process": {"process_cpu_seconds_total": 1.5,
                                                "process_resident_memory_bytes": 100}}  # fmt: skip
        two = {**one, "accepted": 7, "lateness_counts": [3, 0]}
        total = combine([one, two, retired(one)])
        self.assertEqual(total["accepted"], 17)
        self.assertEqual(total["connections_open"], 4)  # the retired one holds none
        self.assertEqual(total["timers_pending"], 8)
        self.assertEqual(total["refused"], {"full": 3, "peer": 0})
        self.assertEqual(total["lateness_counts"], [5, 4])
        self.assertEqual(total["lateness_bounds"], [0.01])
        # The tick is a setting, the same everywhere: not summed.
        ticks = [{**one, "granularity": 0.05}, {**two, "granularity": 0.05}, {"granularity": 0.0}]
        self.assertEqual(combine(ticks)["granularity"], 0.05)
        self.assertEqual(total["process"]["process_cpu_seconds_total"], 4.5)
        self.assertEqual(total["process"]["process_resident_memory_bytes"], 200)

    def test_whatADeadWorkerHeldCountsAsClosed(self) -> None:
        """accepted = open + closed, across a worker's death."""
        last = {"connections_open": 8, "accepted": 21, "closed": {"client": 12, "idle": 1}}
        kept = retired(last)
        self.assertEqual(kept["connections_open"], 0)
        self.assertEqual(kept["closed"], {"client": 12, "idle": 1, "worker_exit": 8})
        self.assertEqual(last["closed"], {"client": 12, "idle": 1})  # its last answer, untouched
        total = combine([kept, retired({**last, "connections_open": 0, "accepted": 13})])
        self.assertEqual(total["accepted"], sum(total["closed"].values()))


class ProcessFiguresTests(SynchronousTestCase):
    def test_atTheOpenFileLimitCPUStillCountsAndTheRestIsKept(self) -> None:
        """prometheus-client reads /proc/self, which takes a descriptor."""
        import os
        import resource

        from timerserver.snapshots import processFigures

        before = processFigures()
        self.assertGreater(before["process_resident_memory_bytes"], 0)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        probe = os.open(os.devnull, os.O_RDONLY)  # the lowest free descriptor
        os.close(probe)
        for _ in range(10**6):  # burn some CPU for the counter to move
            pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
        try:
            self.assertRaises(OSError, open, "/proc/self/stat")
            at = processFigures()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertGreater(at["process_cpu_seconds_total"], 0)
        self.assertGreaterEqual(
            at["process_cpu_seconds_total"], before["process_cpu_seconds_total"]
        )
        self.assertEqual(
            at["process_resident_memory_bytes"], before["process_resident_memory_bytes"]
        )
        self.assertEqual(set(at), set(before))
        # Out of descriptors, and it says so: none open of the limit would hide it.
        self.assertEqual(at["process_max_fds"], probe)
        self.assertEqual(at["process_open_fds"], probe)
        self.assertEqual(before["process_max_fds"], soft)
