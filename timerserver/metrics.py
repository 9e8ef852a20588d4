"""
Prometheus metrics: C{--metrics ENDPOINT} serves C{GET /metrics}.

A scrape takes a L{snapshot} of the process's counters, a plain dict
(L{timerserver.snapshots}), and prometheus-client's exposition functions
turn it into the text format (L{SnapshotCollector}, L{render}).

With C{--workers}, the master serves the endpoint: a scrape asks every worker
for its snapshot over its control pipe, with a deadline, and sums them
(counters of a worker that died are kept from its last answer, so sums do
not go backwards).  We chose this over prometheus-client's multiprocess
mode, which writes every increment to a memory-mapped file and needs its
directory set up before any worker imports it.

Scrapes are coalesced (L{Coalesced}): those that arrive while one is being
gathered share it, and its result is reused for L{SCRAPE_PERIOD} seconds, so
a flood of scrapes costs each process at most one snapshot (and one reading
of C{/proc/self}) a period.  The port itself is L{timerserver.metricshttp}.

prometheus-client is optional: C{pip install 'timerserver[metrics]'}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from timerserver.admission import Admission
from timerserver.factory import TimerServerFactory
from timerserver.metricshttp import MetricsHTTPFactory
from timerserver.monitor import TimerQueueCounters
from timerserver.service import listenOrExit
from timerserver.snapshots import EMPTY, Snapshot, snapshot

SCRAPE_PERIOD = 1.0
"""Seconds a gathered snapshot is reused for."""
PROCESS_SUMS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
)
Source = Callable[[], defer.Deferred[tuple[Snapshot, dict[str, dict[str, float]]]]]
"""Gives the combined snapshot and each process's own figures, by label."""


class SnapshotCollector:
    """Yields the metric families of a combined snapshot and its processes."""

    def __init__(self, total: Snapshot, processes: dict[str, dict[str, float]]) -> None:
        self.total = total
        self.processes = processes

    def collect(self) -> Iterator[Any]:
        """Yield the snapshot's metric families (prometheus-client's collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        t = {**EMPTY, **self.total}

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"timerserver_{name}", doc, value=value)

        def labelled(name: str, doc: str, label: str, values: dict[str, float]) -> Any:
            family = CounterMetricFamily(f"timerserver_{name}", doc, labels=[label])
            for key in sorted(values):
                family.add_metric([key], values[key])
            return family

        yield GaugeMetricFamily(
            "timerserver_connections_open", "Connections served now.", t["connections_open"]
        )
        yield counter("connections_accepted", "Connections admitted.", t["accepted"])
        yield labelled("connections_refused", "Connections refused.", "reason", t["refused"])
        yield labelled("connections_closed", "Admitted connections closed.", "reason", t["closed"])
        yield counter("periodic_messages", "Periodic messages written.", t["periodic"])
        yield counter("periodic_skipped", "Periodic messages skipped.", t["skipped"])
        yield counter("echo_bytes", "Bytes echoed back to clients.", t["echo_bytes"])
        cumulative, buckets = 0, []
        for bound, count in zip(
            [*map(str, t["lateness_bounds"]), "+Inf"], t["lateness_counts"], strict=False
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "timerserver_periodic_lateness_seconds",
            "How late each periodic message went out against its due time.",
            buckets=buckets or [("+Inf", 0)],
            sum_value=t["lateness_sum"],
        )
        yield GaugeMetricFamily("timerserver_timers_pending", "Timers set.", t["timers_pending"])
        yield GaugeMetricFamily(
            "timerserver_timer_granularity_seconds",
            "The timer wheel's tick: how late a timer may fire by design (0: no wheel).",
            t["granularity"],
        )
        yield labelled("timer_operations", "Timer queue operations.", "operation", t["operations"])
        process = t.get("process", {})
        for name in PROCESS_SUMS:
            kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
            doc = "Summed over the server's processes (prometheus-client's process metrics)."
            yield kind(name, doc, value=process.get(name, 0))
        cpu = CounterMetricFamily(
            "timerserver_process_cpu_seconds", "CPU per process.", labels=["process"]
        )
        rss = GaugeMetricFamily(
            "timerserver_process_resident_memory_bytes", "RSS per process.", labels=["process"]
        )
        for label, figures in sorted(self.processes.items()):
            cpu.add_metric([label], figures.get("process_cpu_seconds_total", 0))
            rss.add_metric([label], figures.get("process_resident_memory_bytes", 0))
        yield cpu
        yield rss
        yield counter(
            "log_lines_dropped",
            "Worker log lines dropped while the master was not reading, or over the line bound.",
            t["log_lines_dropped"],
        )
        if "workers_up" in t:
            up = GaugeMetricFamily(
                "timerserver_worker_up",
                "1 if the worker answered the last scrape in time, 0 if not (or not running).",
                labels=["worker"],
            )
            for worker, value in sorted(t["workers_up"].items(), key=lambda kv: int(kv[0])):
                up.add_metric([worker], value)
            yield up


FORMATS_KEPT = 10
"""
Renderings of one result kept, one per content type: every one there is
(the text format of 0.0.4, the text and OpenMetrics formats of 1.0.0 with
each of four escapings, and OpenMetrics without an escaping), so that
scrapes that cycle through them do not make each other render again.
"""
VERSIONS = frozenset({"0.0.4", "1.0.0"})
_SAFE_CONTENT_TYPE = re.compile(r"[A-Za-z0-9./;= _-]+")
"""What a content type we send may hold, whatever a prometheus-client release builds."""
"""The format versions there are: prometheus-client writes any other the client names."""


def chooseEncoder(accept: str) -> tuple[Callable[[Any], bytes], str]:
    """
    prometheus-client's encoder for the C{Accept} header C{accept}, or its
    text format if that header confuses it (C{version=x} raises TypeError)
    or names a version there is not.  prometheus-client copies the version
    from the header into the content type: a client's bytes in our response
    header (a line feed in it was a header of the client's choosing), and a
    content type of its own for every scrape, each rendered anew.
    """
    from prometheus_client.exposition import (
        CONTENT_TYPE_PLAIN_0_0_4,
        choose_encoder,
        generate_latest,
    )

    try:
        encoder, contentType = choose_encoder(accept)
    except Exception:
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    version = contentType.partition("version=")[2].partition(";")[0]
    if version not in VERSIONS or not _SAFE_CONTENT_TYPE.fullmatch(contentType):
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    return encoder, contentType


def render(source: Source) -> Callable[[str], defer.Deferred[tuple[str, bytes]]]:
    """
    The metrics of C{source} in the format the scraper's C{Accept} header
    asks for; the text of a result is made once per format (for a few
    formats: the header can name any number of them).
    """
    made: dict[str, tuple[Any, bytes]] = {}

    def rendered(accept: str) -> defer.Deferred[tuple[str, bytes]]:
        from prometheus_client import CollectorRegistry

        encoder, contentType = chooseEncoder(accept)

        def encode(result: tuple[Snapshot, dict[str, dict[str, float]]]) -> tuple[str, bytes]:
            last = made.get(contentType)
            if last is not None and last[0] is result:
                return contentType, last[1]
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(*result))
            body = encoder(registry)
            for kind in [k for k, (r, _) in made.items() if r is not result]:
                del made[kind]  # an older result's
            while len(made) >= FORMATS_KEPT:
                del made[next(iter(made))]
            made[contentType] = (result, body)
            return contentType, body

        return source().addCallback(encode)

    return rendered


class Coalesced:
    """
    C{source}, called at most once a C{period}: a call while one is pending
    shares its result, and a result is reused for C{period} seconds.
    """

    def __init__(self, source: Source, clock: IReactorTime, period: float = SCRAPE_PERIOD) -> None:
        self.source = source
        self.clock = clock
        self.period = period
        self.calls = 0
        self._result: tuple[float, Any] | None = None
        self._waiting: list[defer.Deferred[Any]] | None = None

    def __call__(self) -> defer.Deferred[Any]:
        now = self.clock.seconds()
        if self._result is not None and now - self._result[0] < self.period:
            return defer.succeed(self._result[1])
        d: defer.Deferred[Any] = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        self.calls += 1
        defer.maybeDeferred(self.source).addBoth(self._gathered)
        return d

    def _gathered(self, result: Any) -> None:
        waiting, self._waiting = self._waiting or [], None
        if not isinstance(result, Failure):
            self._result = (self.clock.seconds(), result)
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class MetricsService(Service):
    """Serves the metrics of C{source} (coalesced) at C{/metrics} on C{endpoint}."""

    _log = Logger()
    _port: IListeningPort | None = None

    def __init__(
        self, endpoint: Any, description: str, source: Source, reactor: Any = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.endpoint = endpoint
        self.description = description
        self.source = Coalesced(source, reactor)
        self.factory = MetricsHTTPFactory(render(self.source), reactor)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._port = listenOrExit(self.endpoint, self.factory, f"--metrics {self.description}")
        self.factory.listening(self._port)
        self._log.info("metrics on {address}/metrics", address=self._port.getHost())

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        port, self._port = self._port, None
        self.factory.port = None  # connections that end from now on must not resume it
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: None)


def localSource(
    factory: TimerServerFactory, counters: TimerQueueCounters, admission: Admission
) -> Source:
    """The source of a single-process server: its own snapshot."""

    def source() -> defer.Deferred[tuple[Snapshot, dict[str, dict[str, float]]]]:
        one = snapshot(factory, counters, admission)
        return defer.succeed((one, {"0": one["process"]}))

    return source
