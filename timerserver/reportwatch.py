"""
L{ReportWatch}: the master's watch over its workers' load reports.  A worker
sends one every 0.5 s; one that sends none in time is hung (stopped,
wedged, swapped out), which nothing else would notice: its clients are not
served, and its slot is given to a new process.

The master judges only while it runs itself.  After it was stopped or
starved, Twisted runs the timed calls that came due before it reads the
workers' pipes, where every report of the stall waits: a master that has
missed its own heartbeat, or has run again for less than L{SETTLE} seconds,
looks again once it has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from timerserver.workerprocess import WorkerProcess

SPARE_REPORT_DEADLINE = 10.0
"""
Seconds a spare made a worker has to send its first load report (it has
imported everything: it takes one report period).
"""
START_ALLOWANCE = 60.0
"""
Seconds from a worker process's start to its first load report, whether it
was started for its slot or as the spare: one started with every other
(52 of them importing at once on two cores) may take that long, and is not
hung.
"""
REPORT_SILENCE = 30.0
"""Seconds a serving worker may go without a load report."""
HEARTBEAT = 0.5
"""How often the master notes that it runs."""
STALLED_GAP = 1.5
"""A heartbeat this late: the master itself did not run (stopped, starved)."""
SETTLE = 5.0
"""Seconds the master runs again after a stall before it judges a worker."""


class ReportWatch:
    """
    Deadlines for the load reports of C{current} workers, on C{reactor};
    C{hung(worker, silence)} is called for one that missed its deadline,
    silent for C{silence} seconds.
    """

    def __init__(
        self,
        reactor: Any,
        current: Callable[[WorkerProcess], bool],
        hung: Callable[[WorkerProcess, float], None],
    ) -> None:
        self.reactor = reactor
        self.current = current
        self.hung = hung
        self._lastBeat = reactor.seconds()
        self._resumedAt = -math.inf
        self._beatCall: Any = None

    def start(self) -> None:
        """Start the master's heartbeat."""
        self._lastBeat = self.reactor.seconds()
        self._beatCall = self.reactor.callLater(HEARTBEAT, self._beat)

    def stop(self) -> None:
        """Stop the heartbeat (each worker's deadline is cancelled with the worker)."""
        if self._beatCall is not None and self._beatCall.active():
            self._beatCall.cancel()
        self._beatCall = None

    def _beat(self) -> None:
        now = self.reactor.seconds()
        if now - self._lastBeat > STALLED_GAP:
            self._resumedAt = now
        self._lastBeat = now
        self._beatCall = self.reactor.callLater(HEARTBEAT, self._beat)

    def started(self, worker: WorkerProcess) -> None:
        """C{worker} was given its slot: its first report is due."""
        now = self.reactor.seconds()
        self.expect(worker, max(now + SPARE_REPORT_DEADLINE, worker.startedAt + START_ALLOWANCE))

    def reported(self, worker: WorkerProcess) -> None:
        """C{worker} sent a load report: on its first, it serves, and its silence is watched."""
        if worker.lastReport is not None and worker.lastReport == worker.servingSince:
            self.expect(worker, worker.lastReport + REPORT_SILENCE)

    def expect(self, worker: WorkerProcess, deadline: float) -> None:
        """Look at C{worker}'s reports at C{deadline} (reactor time)."""
        worker.cancelReportDeadline()
        delay = max(0.0, deadline - self.reactor.seconds())
        worker.reportDeadline = self.reactor.callLater(delay, self._due, worker)

    def _due(self, worker: WorkerProcess) -> None:
        worker.reportDeadline = None
        if not self.current(worker):
            return
        now = self.reactor.seconds()
        if now - self._lastBeat > STALLED_GAP or now - self._resumedAt < SETTLE:
            # The master did not run, or only just runs again: its pipes first.
            self.expect(worker, max(now, self._resumedAt) + SETTLE)
            return
        last = worker.lastReport
        if last is not None and last + REPORT_SILENCE > now:
            self.expect(worker, last + REPORT_SILENCE)
            return
        self.hung(worker, now - (worker.startedAt if last is None else last))
