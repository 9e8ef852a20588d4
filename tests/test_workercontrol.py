"""
A worker's control channel: the master's messages as a worker reads them,
those whose handling fails, and the channel's end.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from timerserver import snapshots
from timerserver.messages import StatsAnswer, StatsRequest, encode
from timerserver.worker import PARENT_PERIOD, Worker
from timerserver.workercontrol import COMPLAINT_PERIOD, STATS_PERIOD, Control


class ControlTests(SynchronousTestCase):
    """The master's messages, as a worker reads them."""

    def test_aMalformedMessageIsLoggedAndIgnored(self) -> None:
        answered: list[int] = []
        logged = captureLog(self)
        control = Control(object())  # type: ignore[arg-type]
        control.answer = answered.append  # type: ignore[method-assign]
        control.dataReceived(b"[" * 100_000 + b"\n" + encode(StatsRequest(3)))
        self.assertEqual(answered, [3])
        [event] = logged
        self.assertIn("malformed message from the master ignored", str(event["log_format"]))


class StopRecorder(Clock):
    """A Clock that records the worker's C{reactor.stop}."""

    stopped = 0

    def stop(self) -> None:
        self.stopped += 1


class FailingMessageTests(SynchronousTestCase):
    """
    A message of the master's whose handling raises (a scrape at the open-file
    limit, say): logged, answered as well as can be, and the worker serves on.
    Before, the exception escaped the control channel, Twisted dropped the
    worker's standard input, and the worker took that for its master's end
    and shut down, dropping its clients.
    """

    def worker(self) -> tuple[Any, StopRecorder, list[Any]]:
        sent: list[Any] = []

        class Channel:
            droppedTotal = 7

            def send(self, message: object, droppable: bool = False) -> bool:
                encode(message)  # type: ignore[arg-type]
                sent.append(message)
                return True

        class Server:
            running = True
            factory = admission = object()
            monitor = object()  # metrics on

        reactor = StopRecorder()
        worker = Worker(reactor, Channel(), [3])  # type: ignore[arg-type]
        worker.server = Server()  # type: ignore[assignment]
        return Control(worker), reactor, sent

    def test_aFailingScrapeIsAnsweredAndTheWorkerServesOn(self) -> None:
        control, reactor, sent = self.worker()
        logged = captureLog(self)
        figures: dict[str, Any] = {"accepted": 5}

        def snapshot(*args: object) -> dict[str, Any]:
            if not figures:
                raise OSError(errno.EMFILE, "Too many open files")
            return dict(figures)

        self.patch(snapshots, "snapshot", snapshot)
        control.dataReceived(encode(StatsRequest(1)))
        self.assertEqual(sent, [StatsAnswer(1, {"accepted": 5, "log_lines_dropped": 7})])
        figures.clear()  # the figures cannot be had now
        reactor.advance(STATS_PERIOD)
        for id in (2, 3, 4):
            control.dataReceived(encode(StatsRequest(id)))  # nothing escapes
        # Answered with the last figures, so that the master's sums do not go back.
        self.assertEqual(
            sent[1:], [StatsAnswer(i, {"accepted": 5, "log_lines_dropped": 7}) for i in (2, 3, 4)]
        )
        self.assertEqual((control.worker.stopping, reactor.stopped), (False, 0))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)  # once a period
        reactor.advance(COMPLAINT_PERIOD)
        control.dataReceived(encode(StatsRequest(5)))
        [first, second] = [e for e in logged if "log_failure" in e]
        self.assertEqual(first["more"], "")
        self.assertEqual(second["more"], " (2 more failures since the last logged)")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(sent), 5)
        self.assertFalse(control.worker.stopping)

    def test_aFailingScrapeWithNoFiguresYet(self) -> None:
        control, reactor, sent = self.worker()

        def broken() -> dict[str, Any]:
            raise MemoryError()

        control.stats = broken  # type: ignore[method-assign]
        control.dataReceived(encode(StatsRequest(1)))
        self.assertEqual(sent, [StatsAnswer(1, {"log_lines_dropped": 7})])
        self.assertEqual(len(self.flushLoggedErrors(MemoryError)), 1)
        self.assertEqual(reactor.stopped, 0)

    def test_onlyTheEndOfTheChannelStopsTheWorker(self) -> None:
        """
        End of file, or a read error: the master is gone.  The channel lost
        to an error of the worker's own: it serves on, and stops once its
        master is gone (its parent changes).
        """
        for reason in (ConnectionDone(), ConnectionLost()):
            control, reactor, _ = self.worker()
            control.connectionLost(Failure(reason))
            self.assertEqual(reactor.stopped, 1)
        control, reactor, _ = self.worker()
        control.connectionLost(Failure(RuntimeError("a bug")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        reactor.advance(PARENT_PERIOD * 3)
        self.assertEqual(reactor.stopped, 0)
        parent = os.getppid()
        self.patch(os, "getppid", lambda: parent + 1)  # the master died: reparented
        reactor.advance(PARENT_PERIOD)
        self.assertEqual(reactor.stopped, 1)
