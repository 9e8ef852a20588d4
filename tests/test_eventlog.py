"""EventLog: per-connection events, rate-limited, never as a format string."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from timerserver.eventlog import EventLog


class EventLogTests(SynchronousTestCase):
    def test_floodIsSummarised(self) -> None:
        clock, events = Clock(), []
        log = EventLog(clock, Logger(observer=events.append), interval=10.0, burst=5)
        for i in range(1000):
            log.event("refused", f"10.0.0.1:{i}")
        self.assertEqual(len(events), 5)
        clock.advance(10)
        self.assertEqual(len(events), 6)
        self.assertEqual(events[-1]["count"], 995)
        self.assertEqual(log.totals["refused"], 1000)
        log.event("idle", "x")
        self.assertEqual(len(events), 7)  # a new window logs again
        log.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_clientTextIsNeverTheFormat(self) -> None:
        clock, events = Clock(), []
        log = EventLog(clock, Logger(observer=events.append))
        log.event("aborted", "{evil} %s {0}", detail=": {more}")
        self.assertIn("{evil} %s {0}", formatEvent(events[0]))
        self.assertNotIn("evil", events[0]["log_format"])
        log.stop()
