"""
A pool's figures, driven through the pool (task.Clock and the fake process
reactor of L{tests.test_supervisor}): scrape deadlines, and the figures of
workers that die, folded into the sums once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_supervisor import FakeProcess, pool, timers
from timerserver.messages import StatsAnswer, StatsRequest, encode


class ScrapeTests(SynchronousTestCase):
    def answer(self, process: FakeProcess, stats: dict[str, Any]) -> None:
        [*_, request] = process.messages()
        process.proto.childDataReceived(1, encode(StatsAnswer(request.id, stats)))

    def test_aWorkerThatMissesTheDeadlineGivesItsLastAnswer(self) -> None:
        service, reactor = pool()
        service.startService()
        one, two, _ = reactor.processes
        d = service.metricsSource()
        self.answer(one, {"accepted": 5})
        self.answer(two, {"accepted": 7})
        total, _ = self.successResultOf(d)
        self.assertEqual((total["accepted"], total["workers_up"]), (12, {"1": 1, "2": 1}))
        d = service.metricsSource()
        self.answer(one, {"accepted": 6})
        self.assertNoResult(d)  # worker 2 is stopped
        reactor.advance(service.figures.deadline)
        total, _ = self.successResultOf(d)
        self.assertEqual((total["accepted"], total["workers_up"]), (13, {"1": 1, "2": 0}))
        # Still unanswered: no second request is queued for it.
        d = service.metricsSource()
        self.assertEqual(sum(isinstance(m, StatsRequest) for m in two.messages()), 2)
        self.answer(one, {"accepted": 6})
        self.answer(two, {"accepted": 9})  # it woke up
        total, _ = self.successResultOf(d)
        self.assertEqual((total["accepted"], total["workers_up"]), (15, {"1": 1, "2": 1}))
        self.assertEqual(timers(service), [])

    def test_deadWorkersAreFoldedIntoOneSum(self) -> None:
        service, reactor = pool(workers=1)
        service.startService()
        for accepted in (5, 7, 11):
            d = service.metricsSource()
            self.answer(service.workers[1].transport, {"accepted": accepted, "connections_open": 2})
            self.successResultOf(d)
            service.workers[1].transport.end(Failure(ProcessTerminated(signal=9)))
            reactor.advance(60)
        self.assertEqual(service.figures.retired["accepted"], 23)
        self.assertEqual(service.figures.retired["connections_open"], 0)
        d = service.metricsSource()
        self.answer(service.workers[1].transport, {"accepted": 1, "connections_open": 2})
        total, _ = self.successResultOf(d)
        self.assertEqual((total["accepted"], total["connections_open"]), (24, 2))

    def test_aWorkerThatDiesWhileTheScrapeWaitsForAnotherIsCountedOnce(self) -> None:
        """Its figures are retired when it ends: the scrape must not add them again."""
        service, reactor = pool()
        service.startService()
        one, two, _ = reactor.processes
        d = service.metricsSource()
        self.answer(one, {"accepted": 5, "connections_open": 2})
        self.answer(two, {"accepted": 7, "connections_open": 3})
        self.successResultOf(d)
        d = service.metricsSource()  # worker 2 is stopped: the scrape waits for it
        one.end(Failure(ProcessTerminated(signal=9)))
        self.assertNoResult(d)
        reactor.advance(service.figures.deadline)
        total, processes = self.successResultOf(d)
        self.assertEqual((total["accepted"], total["connections_open"]), (12, 3))
        self.assertEqual(total["workers_up"], {"1": 0, "2": 0})
        self.assertNotIn("1", processes)

    def test_aWorkerThatDiesMidScrape(self) -> None:
        service, reactor = pool(workers=1)
        service.startService()
        d = service.metricsSource()
        service.workers[1].transport.end(Failure(ProcessTerminated(signal=9)))
        total, _ = self.successResultOf(d)
        self.assertEqual(total["workers_up"], {"1": 0})
        reactor.advance(60)  # its replacement; no timer of the scrape is left
        self.assertEqual(timers(service), [])
