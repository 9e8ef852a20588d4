"""
L{PoolFigures}: the metrics of a C{--workers} pool, summed over its
processes.

A scrape asks every running worker for its figures with a deadline
(L{SCRAPE_DEADLINE}); one that misses it contributes its last answer and is
shown as down.  The master adds its own process figures, and the counters of
every worker that died, folded into one running sum when it ends (its
gauges zeroed: L{timerserver.snapshots.retired}), so that no sum goes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from timerserver.snapshots import Snapshot, combine, processFigures, retired
from timerserver.workerprocess import WorkerProcess

SCRAPE_DEADLINE = 1.0
"""Seconds a worker has to answer a scrape."""


class PoolFigures:
    """
    The figures of a pool of C{count} workers whose timer wheels tick every
    C{granularity} seconds (0: no wheel).

    @ivar retired: the counters of every worker that died, summed.
    @ivar linesDropped: worker output lines the master dropped (over the
        length bound), dead workers'.
    """

    _log = Logger()

    def __init__(self, count: int, granularity: float, deadline: float = SCRAPE_DEADLINE) -> None:
        self.count = count
        self.granularity = granularity
        self.deadline = deadline
        self.retired: Snapshot = {}
        self.linesDropped = 0

    def retire(self, worker: WorkerProcess) -> None:
        """C{worker} ended: fold its last figures into the sums, once."""
        if worker.retired:
            return
        worker.retired = True  # a scrape still waiting for it must not count it again
        self.linesDropped += worker.linesDropped
        if worker.lastStats:
            try:
                self.retired = combine([self.retired, retired(worker.lastStats)])
            except Exception:
                self._log.failure("{name}'s last figures could not be kept", name=worker.name)

    def gather(self, workers: Iterable[tuple[int, WorkerProcess]]) -> defer.Deferred[Any]:
        """
        Every running worker's figures (C{workers}, by number), asked for
        now and answered within the deadline (or its last answer), summed
        with the master's own process figures and the dead workers'.
        """
        running = sorted(workers, key=lambda item: item[0])
        asks = [w.askStats(self.deadline) for _, w in running]
        return defer.gatherResults(asks).addCallback(self._summed, running)

    def _summed(
        self, answers: list[dict[str, Any] | None], workers: list[tuple[int, WorkerProcess]]
    ) -> tuple[Snapshot, dict[str, dict[str, float]]]:
        master = processFigures()
        processes = {"master": master}
        up = {str(number): 0 for number in range(1, self.count + 1)}
        live = []
        dropped = self.linesDropped
        for (number, worker), answer in zip(workers, answers, strict=True):
            if worker.retired:
                continue  # it ended while the scrape waited: its figures are in self.retired
            up[str(number)] = int(answer is not None)
            figures = answer if answer is not None else worker.lastStats
            dropped += worker.linesDropped
            if figures is not None:
                processes[str(number)] = figures.get("process", {})
                live.append(figures)
        mine = {"process": master, "log_lines_dropped": dropped, "granularity": self.granularity}
        total = combine([*live, self.retired, mine])
        total["workers_up"] = up
        return total, processes
