"""
The chaos soak (bench/chaos.py), short: a few hundred connections on
C{--workers 2 --metrics} for about 25 s, with every fault of the full soak
once: a worker stopped, a worker killed, the master stopped during log
traffic, a scrape and POST flood, a kill while the master has no descriptor
to spare.  Every check of the full soak must pass but the flat RSS, which
needs minutes of warm-up to mean anything.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.chaos import Soak, short
from bench.chaosreport import summary


class ShortChaosTests(SynchronousTestCase):
    def test_everyFaultOnce(self) -> None:
        result = Soak(short()).run()
        # Growth needs minutes of warm-up to mean anything: the full soak checks it.
        checks = {k: v for k, v in result["checks"].items() if not k.startswith("RSS")}
        failed = [name for name, ok in checks.items() if not ok]
        self.assertEqual(failed, [], summary(result))
        self.assertGreater(result["healthyRecords"], 0)
        self.assertGreater(result["reconnections"], 0)
        self.assertGreater(result["stoppedWorkerClients"], 0)
        self.assertGreater(result["pinnedSpawnFailures"], 0)  # the spawn did fail, and was retried
        self.assertGreater(result["scrapes"], 20)
