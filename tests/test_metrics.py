"""
Prometheus metrics: the exposition of a snapshot, coalesced scrapes, and
real scrapes of real server processes with a real HTTP client (treq), parsed with
prometheus-client's own parser.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.serverprocess import (
    WELCOME,
    ServerProcess,
    connectFrom,
    holdPort,
    recvExactly,
    runTwistd,
)
from timerserver.lateness import LatenessHistogram

try:
    import treq
    from prometheus_client.parser import text_string_to_metric_families

    from timerserver.snapshots import combine
except ImportError as e:  # pragma: no cover
    raise SkipTest(f"metrics tests need pip install '.[test]' ({e})") from None


class LatenessHistogramTests(SynchronousTestCase):
    def test_buckets(self) -> None:
        h = LatenessHistogram((0.01, 0.1))
        for seconds in (-1.0, 0.0, 0.01, 0.011, 0.5):
            h.record(seconds)
        self.assertEqual(h.counts, [3, 1, 1])  # early counts as 0; bounds are inclusive
        self.assertAlmostEqual(h.total, 0.521)

    def test_badBounds(self) -> None:
        for bounds in ((), (0.1, 0.01), (0.1, 0.1)):
            self.assertRaises(ValueError, LatenessHistogram, bounds)


def scrapeLine(server: ServerProcess) -> str:
    port = server.waitForLine(r"metrics on .*port=(\d+)", 20).group(1)
    return f"http://127.0.0.1:{port}/metrics"


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class ScrapeTests(TestCase):
    timeout = 120

    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess("--metrics", "tcp:0:interface=127.0.0.1", *args)
        self.addCleanup(server.kill)
        return server

    def connect(self, server: ServerProcess, source: str) -> socket.socket:
        sock = connectFrom(server.port, source)
        self.addCleanup(sock.close)
        return sock

    @defer.inlineCallbacks
    def scrape(self, url: str) -> Generator[Any, Any, dict[Any, float]]:
        response = yield treq.get(url, persistent=False)
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        text = yield response.text()
        return values(text)

    @defer.inlineCallbacks
    def test_valuesMatchWhatHappened(self) -> Generator[Any, Any, None]:
        server = self.start(
            "--max-connections", "3", "--max-per-peer", "2", "--idle-timeout", "1",
            "--interval", "0.2",
        )  # fmt: skip
        url = scrapeLine(server)
        kept = [self.connect(server, "127.0.0.2"), self.connect(server, "127.0.0.2")]
        for sock in kept:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        self.assertEqual(recvExactly(self.connect(server, "127.0.0.2"), 13), b"Server busy\r\n")
        third = self.connect(server, "127.0.0.3")
        self.assertEqual(recvExactly(third, len(WELCOME)), WELCOME)
        self.assertEqual(recvExactly(self.connect(server, "127.0.0.4"), 13), b"Server busy\r\n")
        third.sendall(b"hello")
        time.sleep(1.6)  # every connection idles out (the reactor of this test waits too)
        v = yield self.scrape(url)
        self.assertEqual(v[("timerserver_connections_accepted_total", ())], 3)
        self.assertEqual(v[("timerserver_connections_refused_total", (("reason", "peer"),))], 1)
        self.assertEqual(v[("timerserver_connections_refused_total", (("reason", "full"),))], 1)
        self.assertEqual(v[("timerserver_connections_closed_total", (("reason", "idle"),))], 3)
        self.assertEqual(v[("timerserver_echo_bytes_total", ())], 5)
        self.assertEqual(v[("timerserver_connections_open", ())], 0)
        self.assertEqual(v[("timerserver_timers_pending", ())], 0)
        self.assertEqual(v[("timerserver_timer_granularity_seconds", ())], 0.01)
        periodic = v[("timerserver_periodic_messages_total", ())]
        self.assertGreaterEqual(periodic, 12)  # 3 connections, 1 s or more, 0.2 s apart
        lateness = v[("timerserver_periodic_lateness_seconds_count", ())]
        self.assertEqual(lateness, periodic)
        self.assertEqual(v[("timerserver_timer_operations_total", (("operation", "create"),))], 6)
        self.assertGreater(v[("process_resident_memory_bytes", ())], 10_000_000)
        self.assertIn(("timerserver_process_cpu_seconds_total", (("process", "0"),)), v)

    @defer.inlineCallbacks
    def test_theReactorQueueHasNoTick(self) -> Generator[Any, Any, None]:
        server = self.start("--timer-queue", "reactor")
        v = yield self.scrape(scrapeLine(server))
        self.assertEqual(v[("timerserver_timer_granularity_seconds", ())], 0)

    @defer.inlineCallbacks
    def test_stalledClientAndSkips(self) -> Generator[Any, Any, None]:
        big = "x" * 20000 + "\\r\\n"
        server = self.start("--interval", "0.01", "--message", big, "--stall-timeout", "1")
        url = scrapeLine(server)
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", server.port))
        self.addCleanup(stuck.close)
        server.waitForLine("stalled", 15)
        v = yield self.scrape(url)
        self.assertEqual(v[("timerserver_connections_closed_total", (("reason", "stalled"),))], 1)
        self.assertGreater(v[("timerserver_periodic_skipped_total", ())], 0)

    @defer.inlineCallbacks
    def test_twoWorkersAreSummed(self) -> Generator[Any, Any, None]:
        server = self.start("--workers", "2", "--interval", "5")
        server.waitForLine(r"worker 2: timerserver listening", 20)
        url = scrapeLine(server)
        socks = [self.connect(server, f"127.0.0.{i}") for i in range(2, 42)]
        for sock in socks:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        v = yield self.scrape(url)
        self.assertEqual(v[("timerserver_connections_open", ())], 40)
        self.assertEqual(v[("timerserver_connections_accepted_total", ())], 40)
        self.assertEqual(v[("timerserver_timers_pending", ())], 40)
        self.assertEqual(v[("timerserver_timer_granularity_seconds", ())], 0.01)  # not summed
        per = {
            labels[0][1] for name, labels in v if name == "timerserver_process_cpu_seconds_total"
        }
        self.assertEqual(per, {"master", "1", "2"})
        for sock in socks[:10]:
            sock.close()
        time.sleep(1.2)  # past the period a snapshot is reused for
        v = yield self.scrape(url)
        self.assertEqual(v[("timerserver_connections_open", ())], 30)
        self.assertEqual(v[("timerserver_connections_closed_total", (("reason", "client"),))], 10)
        # A worker dies: its counters stay in the sums (from its last answer),
        # and what it held open counts as closed.  The one that holds more
        # of the 30 is killed (steering may have given the other none).
        import os
        import re
        import signal

        import psutil

        def held(number: int) -> tuple[int, int, int]:
            pid = int(re.findall(rf"worker {number} started, pid (\d+)", server.output)[-1])
            sockets = psutil.Process(pid).net_connections(kind="tcp")
            return sum(c.status == psutil.CONN_ESTABLISHED for c in sockets), number, pid

        count, number, pid = max(held(1), held(2))
        self.assertGreater(count, 0)
        os.kill(pid, signal.SIGKILL)
        server.waitForLine(rf"worker {number} killed by signal 9", 10)
        time.sleep(1.2)
        v = yield self.scrape(url)
        self.assertEqual(v[("timerserver_connections_accepted_total", ())], 40)
        self.assertEqual(v[("timerserver_connections_open", ())], 30 - count)


class MetricsOptionTests(SynchronousTestCase):
    def test_badEndpointIsOneLine(self) -> None:
        from twisted.internet.testing import MemoryReactorClock
        from twisted.python import usage

        from timerserver.tap import Options

        options = Options(reactor=MemoryReactorClock())
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["--metrics", "bogus:1"])
        self.assertIn("--metrics", str(e))

    def test_withoutPrometheusClientNamesTheExtra(self) -> None:
        from unittest import mock

        from twisted.internet.testing import MemoryReactorClock
        from twisted.python import usage

        from timerserver.tap import Options

        with mock.patch.dict("sys.modules", {"prometheus_client": None}):
            options = Options(reactor=MemoryReactorClock())
            e = self.assertRaises(usage.UsageError, options.parseOptions, ["--metrics", "tcp:9050"])
        self.assertIn("timerserver[metrics]", str(e))

    def test_portInUseIsOneLine(self) -> None:
        holder = holdPort()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        result = runTwistd(
            "-p", "tcp:0:interface=127.0.0.1", "--metrics", f"tcp:{port}:interface=127.0.0.1"
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        [line] = [x for x in output.splitlines() if "cannot listen" in x]
        self.assertIn("--metrics", line)
        self.assertNotIn("Traceback", output)


class EmptyScrapeTests(SynchronousTestCase):
    def test_noWorkerAnsweredYet(self) -> None:
        """While every worker restarts, a scrape still shows every family, at 0."""
        from timerserver.metrics import SnapshotCollector

        names = {
            sample.name: sample.value
            for family in SnapshotCollector(combine([{"process": {}}]), {}).collect()
            for sample in family.samples
        }
        self.assertEqual(names["timerserver_connections_open"], 0)
        self.assertEqual(names["timerserver_periodic_lateness_seconds_count"], 0)


class RenderTests(SynchronousTestCase):
    def test_anAcceptHeaderThatConfusesPrometheusClientGetsTheTextFormat(self) -> None:
        from timerserver.metrics import render

        rendered = render(lambda: defer.succeed((combine([{"accepted": 3}]), {})))
        for accept in (
            "application/openmetrics-text; version=x",
            "text/plain; version=x",
            "text/html, application/openmetrics-text; version=1.x",
        ):
            contentType, body = self.successResultOf(rendered(accept))
            self.assertTrue(contentType.startswith("text/plain; version=0.0.4"), contentType)
            self.assertIn(b"timerserver_connections_accepted_total 3.0\n", body)
        contentType, body = self.successResultOf(
            rendered("application/openmetrics-text; version=1.0.0")
        )
        self.assertTrue(contentType.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_noContentTypeCarriesTheClientsBytes(self) -> None:
        """prometheus-client copies the version it is asked for into the content type."""
        from timerserver.metrics import render

        rendered = render(lambda: defer.succeed((combine([{"accepted": 3}]), {})))
        for accept in (
            "application/openmetrics-text; version=2.\nX-Injected: yes\n\nbody",
            "application/openmetrics-text; version=1.0.7",
            "application/openmetrics-text; version=10.0.0; charset=x",
        ):
            contentType, body = self.successResultOf(rendered(accept))
            self.assertEqual(contentType, "text/plain; version=0.0.4; charset=utf-8")
            self.assertIn(b"timerserver_connections_accepted_total 3.0\n", body)

    def test_everyFormatThereIsIsRenderedOnceAResult(self) -> None:
        from prometheus_client.openmetrics import exposition as openmetrics

        from timerserver.metrics import FORMATS_KEPT, render

        def source() -> defer.Deferred[Any]:
            return defer.succeed(result)

        result = (combine([{"accepted": 3}]), {})
        rendered = render(source)
        accepts = ["", "application/openmetrics-text"] + [
            f"{kind}; version=1.0.0; escaping={escaping}"
            for kind in ("text/plain", "application/openmetrics-text")
            for escaping in (
                openmetrics.UNDERSCORES, openmetrics.DOTS, openmetrics.VALUES, openmetrics.ALLOWUTF8
            )
        ] + [f"application/openmetrics-text; version=1.0.{n}" for n in range(1, 50)]  # fmt: skip
        first = {}
        for accept in accepts * 2:
            contentType, body = self.successResultOf(rendered(accept))
            self.assertIs(first.setdefault(contentType, body), body)  # the same rendering
        self.assertEqual(len(first), FORMATS_KEPT)


class StopTests(TestCase):
    @defer.inlineCallbacks
    def test_stoppingWhileThePortIsPausedAtItsLimit(self) -> Generator[Any, Any, None]:
        """Connections that end after the stop do not resume a port that stopped listening."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import ClientFactory, Protocol

        from timerserver.metrics import MetricsService

        service = MetricsService(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            "tcp:0",
            lambda: defer.succeed(({}, {})),
            reactor,
        )
        service.privilegedStartService()
        port = service._port
        assert port is not None
        factory = service.factory
        clients: list[Protocol] = []
        connected = ClientFactory.forProtocol(Protocol)
        connected.buildProtocol = lambda addr: clients.append(Protocol()) or clients[-1]  # type: ignore[method-assign]
        for _ in range(factory.maxConnections):
            reactor.connectTCP("127.0.0.1", port.getHost().port, connected, timeout=5)
        deadline = time.monotonic() + 10
        while factory.open < factory.maxConnections and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01)
        self.assertEqual(factory.open, factory.maxConnections)  # and the port paused
        yield service.stopService()
        for client in clients:
            client.transport.loseConnection()  # type: ignore[union-attr]
        while factory.open and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01)
        self.assertEqual(factory.open, 0)
        yield deferLater(reactor, 0.05)  # anything they set off has run (and logged)


class CoalescedTests(SynchronousTestCase):
    def setUp(self) -> None:
        from timerserver.metrics import Coalesced

        self.clock = Clock()
        self.pending: list[defer.Deferred[Any]] = []
        self.source = Coalesced(self.gather, self.clock, period=1.0)

    def gather(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def test_concurrentScrapesShareOneRound(self) -> None:
        scrapes = [self.source() for _ in range(100)]
        self.assertEqual(len(self.pending), 1)
        self.pending[0].callback("figures")
        self.assertEqual([self.successResultOf(d) for d in scrapes], ["figures"] * 100)

    def test_aResultIsReusedForAPeriod(self) -> None:
        self.source()
        self.pending[0].callback("first")
        self.clock.advance(0.9)
        self.assertEqual(self.successResultOf(self.source()), "first")
        self.assertEqual(len(self.pending), 1)
        self.clock.advance(0.1)
        d = self.source()
        self.assertEqual(len(self.pending), 2)
        self.pending[1].callback("second")
        self.assertEqual(self.successResultOf(d), "second")
        self.assertEqual(self.source.calls, 2)

    def test_aFailureIsSharedButNotKept(self) -> None:
        scrapes = [self.source() for _ in range(3)]
        self.pending[0].errback(RuntimeError("no"))
        for d in scrapes:
            self.failureResultOf(d, RuntimeError)
        d = self.source()
        self.assertEqual(len(self.pending), 2)  # asked again at once
        self.pending[1].callback("ok")
        self.assertEqual(self.successResultOf(d), "ok")

    def test_workersUpAndDroppedLinesAreExported(self) -> None:
        from timerserver.metrics import SnapshotCollector

        total = combine([{"log_lines_dropped": 3}, {"log_lines_dropped": 4}])
        total["workers_up"] = {"2": 0, "10": 1, "1": 1}
        samples = [
            (s.name, s.labels, s.value)
            for family in SnapshotCollector(total, {}).collect()
            for s in family.samples
        ]
        self.assertIn(("timerserver_log_lines_dropped_total", {}, 7), samples)
        up = [(labels["worker"], v) for n, labels, v in samples if n == "timerserver_worker_up"]
        self.assertEqual(up, [("1", 1), ("2", 0), ("10", 1)])
