"""
A server process's figures as a L{Snapshot}: a plain (JSON-able) dict, taken
from the counters the hot path keeps, and summed over processes.

The hot path keeps plain counters (on the factory, on its admission, and a
L{TimerQueueCounters} on the queue): no lock, file write or label lookup per
timer operation or message.  A scrape takes a L{snapshot} of them; a worker
sends its own to its master (L{timerserver.messages}), which L{combine}s
them, keeping a dead worker's counters from its last one (L{retired}) so
that the sums do not go backwards.  L{timerserver.metrics} serves them.
"""

from __future__ import annotations

import os
from typing import Any

from timerserver.admission import Admission
from timerserver.factory import TimerServerFactory
from timerserver.monitor import TimerQueueCounters
from timerserver.reasons import CLOSED, REFUSED, WORKER_EXIT

OPERATIONS = {
    "create": "created",
    "set": "set",
    "update": "updated",
    "cancel": "cancelled",
    "destroy": "destroyed",
    "fire": "fired",
    "oneshot": "oneShotSet",
}
GAUGES = ("connections_open", "timers_pending")
"""Snapshot fields that are not counters: a dead worker's count as 0."""
_SETTINGS = ("lateness_bounds", "granularity")
"""Snapshot fields that are the same in every process: not summed."""

Snapshot = dict[str, Any]
EMPTY: Snapshot = {
    "connections_open": 0, "accepted": 0, "refused": {}, "closed": {}, "periodic": 0,
    "skipped": 0, "echo_bytes": 0, "lateness_bounds": [], "lateness_counts": [],
    "lateness_sum": 0.0, "timers_pending": 0, "operations": {}, "process": {},
    "log_lines_dropped": 0, "granularity": 0.0,
}  # fmt: skip
"""What a scrape shows when no process has answered yet (all workers restarting)."""


_lastProcess: dict[str, float] = {}
"""The latest of each process figure read (a reading can fail: see L{processFigures})."""


def processFigures() -> dict[str, float]:
    """
    This process's figures: CPU and the descriptor limit from C{getrusage}
    and C{getrlimit} (which need no descriptor), the rest from
    prometheus-client's own process collector, which reads C{/proc/self} and
    gives nothing at the open-file limit.  Then the descriptors open count
    as the whole limit (none could be opened), and the memory figures last
    read stand in, so that no sum drops.
    """
    import resource

    from prometheus_client import ProcessCollector

    read = {
        sample.name: sample.value
        for family in ProcessCollector(registry=None).collect()
        for sample in family.samples
    }
    usage = resource.getrusage(resource.RUSAGE_SELF)
    limit = float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if not read and os.path.isdir("/proc/self"):
        read["process_open_fds"] = limit
    _lastProcess.update(
        read,
        process_cpu_seconds_total=usage.ru_utime + usage.ru_stime,
        process_max_fds=limit,
    )
    return dict(_lastProcess)


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
        "granularity": getattr(factory.queue, "granularity", 0.0),
        "operations": {op: getattr(counters, name) for op, name in OPERATIONS.items()},
        "process": processFigures(),
    }


def retired(last: Snapshot) -> Snapshot:
    """
    A dead worker's last snapshot, its gauges zeroed: its counters stay in
    the sums, and the connections it held count as closed (C{worker_exit}),
    so that accepted = open + closed still holds.
    """
    kept = {**last, **dict.fromkeys(GAUGES, 0)}
    held = last.get("connections_open", 0)
    if held:
        closed = dict(last.get("closed", {}))
        closed[WORKER_EXIT] = closed.get(WORKER_EXIT, 0) + held
        kept["closed"] = closed
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
        total = add(total, {k: v for k, v in one.items() if k not in _SETTINGS})
    total["granularity"] = max((one.get("granularity", 0.0) for one in snapshots), default=0.0)
    total["lateness_bounds"] = next(
        (one["lateness_bounds"] for one in snapshots if one.get("lateness_bounds")), []
    )
    return total
