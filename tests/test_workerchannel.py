"""
A worker's channel to its master, on a real pipe nobody reads: it never
blocks, drops log lines (counted) before replies, and says so once drained.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from timerserver.messages import Load, LogEvent, StatsAnswer, StopFigures, decode
from timerserver.workerchannel import ChannelLogObserver, OutChannel


class FDSet:
    """Records what the channel asks of the reactor."""

    def __init__(self) -> None:
        self.writers: set[Any] = set()

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


class ChannelTests(SynchronousTestCase):
    def channel(self, limit: int = 256 * 1024, logLimit: int = 192 * 1024) -> OutChannel:
        self.read, write = os.pipe()
        self.addCleanup(os.close, self.read)
        self.addCleanup(os.close, write)
        self.fds = FDSet()
        return OutChannel(self.fds, write, limit=limit, logLimit=logLimit)  # type: ignore[arg-type]

    def readAll(self) -> list[Any]:
        return [decode(line) for line in self.readBytes().splitlines()]

    def readBytes(self) -> bytes:
        os.set_blocking(self.read, False)
        data = b""
        while True:
            try:
                chunk = os.read(self.read, 1 << 20)
            except BlockingIOError:
                break
            data += chunk
        return data

    def test_aMasterThatDoesNotReadNeverBlocksTheWorker(self) -> None:
        channel = self.channel()
        line = LogEvent("info", "x" * 200)
        sent = sum(channel.send(line, droppable=True) for _ in range(10_000))  # ~2.3 MB
        self.assertGreater(channel.dropped, 0)
        self.assertEqual(sent + channel.dropped, 10_000)
        self.assertLessEqual(channel.size, 192 * 1024)
        self.assertEqual(self.fds.writers, {channel})  # waits for the pipe to drain
        # Replies still find room past the log lines' share.
        self.assertTrue(channel.send(StatsAnswer(1, {"accepted": 3})))
        self.assertTrue(channel.send(StopFigures(1, 2, 3)))
        self.assertEqual(channel.droppedTotal, channel.dropped)

    def test_theLatestLoadReportGoesAheadOfTheLogBacklog(self) -> None:
        """
        With the log share full (a master not reading), the 0.5 s load
        reports are neither dropped nor queued behind the log lines: the
        latest one is kept and written before them, so that the master
        reads it first (it takes a worker it hears no report from for 30 s
        for hung); none counts as a dropped log line.
        """
        channel = self.channel(limit=1 << 20, logLimit=768 * 1024)  # the defaults
        logged = captureLog(self)
        while channel.send(LogEvent("info", "x" * 200), droppable=True):
            pass
        lines = channel.droppedTotal
        self.assertEqual(lines, 1)  # the one that did not fit
        for n in range(120):  # a minute of reports
            channel.report(Load(n, 900))
        channel.send(StopFigures(1, 2, 3))
        self.assertEqual((channel.dropped, channel.droppedTotal), (lines, lines))
        data = b""
        while channel.size:
            data += self.readBytes()
            channel.doWrite()
        data += self.readBytes()
        messages = [decode(line) for line in data.splitlines()]
        queued = [m for m in messages if not isinstance(m, LogEvent)]
        self.assertEqual(queued, [StopFigures(1, 2, 3), Load(119, 900)])  # the latest only
        # Behind what the pipe and the chunk being written held, not 768 KiB of log.
        self.assertGreater(len(data), 700 * 1024)
        self.assertLess(data.index(b'"load"'), 3 * 64 * 1024)
        notes = [e for e in logged if "dropped" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in notes], [lines])

    def test_repliesDroppedOnlyWhenThereIsNoRoomAtAll(self) -> None:
        channel = self.channel(limit=128 * 1024, logLimit=64 * 1024)
        big = StatsAnswer(1, {"pad": "x" * 30_000})
        results = [channel.send(big) for _ in range(20)]
        self.assertIn(False, results)
        self.assertLessEqual(channel.size, 128 * 1024)
        self.assertEqual(channel.dropped, 0)  # replies are not log lines

    def test_drainingWritesEverythingAndLogsTheDropCountOnce(self) -> None:
        channel = self.channel()
        logged = captureLog(self)
        for i in range(3000):
            channel.send(LogEvent("info", f"line {i} " + "x" * 200), droppable=True)
        channel.send(StopFigures(4, 5, 6))
        dropped = channel.dropped
        data = b""
        while channel.size:
            data += self.readBytes()
            channel.doWrite()  # what the reactor does once the pipe is writable
        received = [decode(line) for line in (data + self.readBytes()).splitlines()]
        self.assertEqual(self.fds.writers, set())
        self.assertEqual(len(received), 3001 - dropped)
        # Ahead of the backlog: behind only what the pipe and the chunk being
        # written held (2 x 64 KiB, some 560 lines), not the ~800 lines queued.
        self.assertLess(received.index(StopFigures(4, 5, 6)), 600)
        self.assertGreater(len(received), 700)
        texts = [line.text for line in received if isinstance(line, LogEvent)]
        self.assertEqual(texts, sorted(texts, key=lambda t: int(t.split()[1])))  # in order
        notes = [e for e in logged if "dropped" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in notes], [dropped])
        self.assertEqual(channel.dropped, 0)
        self.assertEqual(channel.droppedTotal, dropped)

    def test_aMasterThatIsGone(self) -> None:
        read, write = os.pipe()
        os.close(read)
        self.addCleanup(os.close, write)
        channel = OutChannel(FDSet(), write)  # type: ignore[arg-type]
        channel.send(StopFigures(1, 2, 3))  # EPIPE: no exception
        self.assertTrue(channel.closed)
        self.assertFalse(channel.send(StopFigures(1, 2, 3)))

    def test_theReactorsShutdownKeepsTheQueueForDrain(self) -> None:
        """The reactor disconnects every descriptor as it stops: nothing queued is lost."""
        channel = self.channel()
        for _ in range(1000):
            channel.send(LogEvent("info", "x" * 200), droppable=True)
        channel.send(StopFigures(1, 2, 3))
        queued = channel.size
        channel.connectionLost(None)
        self.assertEqual((channel.size, channel.closed), (queued, False))
        data = b""
        while channel.size:
            data += self.readBytes()
            channel.doWrite()
        data += self.readBytes()
        self.assertIn(StopFigures(1, 2, 3), [decode(line) for line in data.splitlines()])

    def test_drainGivesUpAtItsDeadline(self) -> None:
        channel = self.channel()
        for _ in range(2000):
            channel.send(LogEvent("info", "x" * 200), droppable=True)
        self.assertFalse(channel.drain(0.05))


class ObserverTests(SynchronousTestCase):
    def test_eventsBecomeLogEventsWithTheirTraceback(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        channel = OutChannel(FDSet(), write)  # type: ignore[arg-type]
        log = Logger(observer=ChannelLogObserver(channel))
        log.warn("client {peer} said {data!r}", peer="10.0.0.1", data=b"{oops}")
        try:
            raise ZeroDivisionError("no")
        except ZeroDivisionError:
            log.failure("it broke")
        first, second = [decode(line) for line in os.read(read, 65536).splitlines()]
        self.assertEqual(first, LogEvent("warn", "client 10.0.0.1 said b'{oops}'"))
        self.assertEqual((second.level, second.text), ("critical", "it broke"))
        self.assertIn("ZeroDivisionError", second.traceback)
