"""
What contrib/ ships for operators: the Grafana dashboard and the Prometheus
rules name only metrics the server exports, and promtool accepts the rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import helpers
from tests.serverprocess import ROOT
from timerserver import TimerQueueCounters, TimerWheel
from timerserver.factory import TimerServerFactory
from timerserver.lateness import LatenessHistogram

CONTRIB = ROOT / "contrib"
# Words in a PromQL expression that are not metric names.
PROMQL = {
    "sum", "by", "rate", "histogram_quantile", "le", "instance", "reason", "operation",
    "process", "job", "up", "count", "humanizeDuration", "value", "labels", "max", "clamp_min",
}  # fmt: skip


def exportedNames() -> set[str]:
    """Every sample name one scrape of a server holds."""
    try:
        from timerserver.metrics import SnapshotCollector, snapshot
    except ImportError as e:
        raise SkipTest(f"needs prometheus-client: {e}") from None
    counters = TimerQueueCounters()
    factory = TimerServerFactory(TimerWheel(Clock(), monitor=counters))
    factory.lateness = LatenessHistogram()
    one = snapshot(factory, counters, helpers.admission(factory))
    collector = SnapshotCollector(one, {"0": one["process"]})
    return {sample.name for family in collector.collect() for sample in family.samples}


def metricNames(expression: str) -> set[str]:
    expression = re.sub(r"\{[^}]*\}", "", expression)  # label matchers
    expression = re.sub(r"\[[^]]*\]", "", expression)  # ranges
    words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expression))
    return {w for w in words if w not in PROMQL and "_" in w}


class DashboardTests(SynchronousTestCase):
    def test_validJSONNamingOnlyExportedMetrics(self) -> None:
        dashboard = json.loads((CONTRIB / "grafana" / "timerserver-dashboard.json").read_text())
        exported = exportedNames()
        named: set[str] = set()
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                named |= metricNames(target["expr"])
        self.assertTrue(named)
        self.assertEqual(named - exported, set())
        # What the issue asks the dashboard to show.
        for name in (
            "timerserver_connections_open",
            "timerserver_periodic_skipped_total",
            "timerserver_periodic_lateness_seconds_bucket",
            "timerserver_connections_refused_total",
            "timerserver_timers_pending",
            "timerserver_process_cpu_seconds_total",
            "timerserver_process_resident_memory_bytes",
        ):
            self.assertIn(name, named)


class RuleTests(SynchronousTestCase):
    rules = CONTRIB / "prometheus" / "timerserver-rules.yml"

    def test_rulesNameOnlyExportedMetrics(self) -> None:
        exported = exportedNames()
        expressions = re.findall(r"expr: (>\n(?:\s{10,}.*\n)+|.*)", self.rules.read_text())
        named = set().union(*(metricNames(e) for e in expressions))
        self.assertTrue(named)
        self.assertEqual(named - exported, set())

    def test_promtoolAcceptsThem(self) -> None:
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest("promtool is not installed (Debian package prometheus)")
        result = subprocess.run(
            [promtool, "check", "rules", str(self.rules)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout + result.stderr)

    def test_latenessAlertFollowsTheTick(self) -> None:
        # timerserver-rules.test.yml: 99.5 ms late alerts at a 10 ms tick, not at 52 ms.
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest("promtool is not installed (Debian package prometheus)")
        result = subprocess.run(
            [promtool, "test", "rules", "timerserver-rules.test.yml"],
            cwd=self.rules.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout + result.stderr)
