"""
Prometheus metrics: C{--metrics ENDPOINT} serves C{GET /metrics}.

The hot path keeps plain counters (on the factory, and a
L{TimerQueueCounters} on the queue): no lock, file write or label lookup per
timer operation or message.  A scrape takes a L{snapshot} of them, a plain
dict, and prometheus-client's exposition functions turn it into the text
format.

With C{--workers}, the master serves the endpoint: a scrape asks every worker
for its snapshot over its control pipe and sums them (counters of a worker
that died are kept from its last answer, so sums do not go backwards).  We
chose this over prometheus-client's multiprocess mode, which writes every
increment to a memory-mapped file and needs its directory set up before any
worker imports it.

prometheus-client is optional: C{pip install 'timerserver[metrics]'}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from timerserver.admission import Admission
from timerserver.factory import TimerServerFactory
from timerserver.monitor import TimerQueueCounters
from timerserver.reasons import CLOSED, REFUSED
from timerserver.service import listenOrExit

METRICS_EXTRA = "pip install 'timerserver[metrics]'"
OPERATIONS = {
    "create": "created",
    "set": "set",
    "update": "updated",
    "cancel": "cancelled",
    "destroy": "destroyed",
    "fire": "fired",
    "oneshot": "oneShotSet",
}
PROCESS_SUMS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
)
GAUGES = ("connections_open", "timers_pending")
"""Snapshot fields that are not counters: a dead worker's count as 0."""

Snapshot = dict[str, Any]
EMPTY: Snapshot = {
    "connections_open": 0, "accepted": 0, "refused": {}, "closed": {}, "periodic": 0,
    "skipped": 0, "echo_bytes": 0, "lateness_bounds": [], "lateness_counts": [],
    "lateness_sum": 0.0, "timers_pending": 0, "operations": {}, "process": {},
}  # fmt: skip
"""What a scrape shows when no process has answered yet (all workers restarting)."""


def processFigures() -> dict[str, float]:
    """This process's figures, from prometheus-client's own process collector."""
    from prometheus_client import ProcessCollector

    return {
        sample.name: sample.value
        for family in ProcessCollector(registry=None).collect()
        for sample in family.samples
    }


def snapshot(
    factory: TimerServerFactory, counters: TimerQueueCounters, admission: Admission
) -> Snapshot:
    """Everything one server process counts, as a plain (JSON-able) dict."""
    lateness = factory.lateness
    closed = factory.closed + admission.closed
    return {
        "connections_open": len(factory.connections),
        "accepted": admission.accepted,
        "refused": {reason: admission.refused[reason] for reason in REFUSED},
        "closed": {reason: closed[reason] for reason in CLOSED},
        "periodic": factory.periodicMessages,
        "skipped": factory.skippedMessages,
        "echo_bytes": factory.echoBytes,
        "lateness_bounds": list(lateness.bounds) if lateness else [],
        "lateness_counts": list(lateness.counts) if lateness else [],
        "lateness_sum": lateness.total if lateness else 0.0,
        "timers_pending": counters.pending,
        "operations": {op: getattr(counters, name) for op, name in OPERATIONS.items()},
        "process": processFigures(),
    }


def retired(last: Snapshot) -> Snapshot:
    """A dead worker's last snapshot, its gauges zeroed: its counters stay in the sums."""
    kept = {**last, **dict.fromkeys(GAUGES, 0)}
    process = last.get("process", {})
    kept["process"] = {"process_cpu_seconds_total": process.get("process_cpu_seconds_total", 0)}
    return kept


def combine(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots (fields one of them lacks count as 0)."""

    def add(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return b if a is None else a
        if isinstance(a, dict):
            return {k: add(a.get(k), b.get(k)) for k in a.keys() | b.keys()}
        if isinstance(a, list):
            return [x + y for x, y in zip(a, b, strict=True)] if a and b else a or b
        return a + b

    total: Snapshot = {}
    for one in snapshots:
        total = add(total, {k: v for k, v in one.items() if k != "lateness_bounds"})
    total["lateness_bounds"] = next(
        (one["lateness_bounds"] for one in snapshots if one.get("lateness_bounds")), []
    )
    return total


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


Source = Callable[[], defer.Deferred[tuple[Snapshot, dict[str, dict[str, float]]]]]
"""Gives the combined snapshot and each process's own figures, by label."""


class MetricsResource(Resource):
    """C{GET /metrics}: the snapshot from C{source}, in the format the scraper accepts."""

    isLeaf = True

    def __init__(self, source: Source) -> None:
        Resource.__init__(self)
        self.source = source

    def render_GET(self, request: Request) -> Any:
        """Answer with the metrics once the source has them."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader("Accept") or ""
        encoder, contentType = choose_encoder(accept)

        def write(result: tuple[Snapshot, dict[str, dict[str, float]]]) -> None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(*result))
            request.setHeader(b"Content-Type", contentType.encode("ascii"))
            request.write(encoder(registry))
            request.finish()

        def failed(failure: Any) -> None:
            request.setResponseCode(500)
            request.write(f"# scrape failed: {failure.getErrorMessage()}\n".encode())
            request.finish()

        self.source().addCallbacks(write, failed)
        return NOT_DONE_YET


class MetricsService(Service):
    """Serves L{MetricsResource} at C{/metrics} on C{endpoint}."""

    _log = Logger()
    _port: IListeningPort | None = None

    def __init__(self, endpoint: Any, description: str, source: Source) -> None:
        self.endpoint = endpoint
        self.description = description
        root = Resource()
        root.putChild(b"metrics", MetricsResource(source))
        self.site = Site(root)
        self.site.noisy = False
        self.site.log = lambda request: None  # type: ignore[method-assign]  # no line per scrape

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._port = listenOrExit(self.endpoint, self.site, f"--metrics {self.description}")
        self._log.info("metrics on {address}/metrics", address=self._port.getHost())

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        port, self._port = self._port, None
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
