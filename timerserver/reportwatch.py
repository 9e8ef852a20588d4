"""
L{ReportWatch}: the master's watch over its workers.  A worker sends a load
report every 0.5 s, and its log lines; one that sends its first report too
late, or nothing at all for L{REPORT_SILENCE} seconds once it serves, is
hung (stopped, wedged, swapped out), which nothing else would notice: its
clients are not served, and its slot is given to a new process.

The master judges only while it runs itself.  After it was stopped or
starved (its own heartbeat came late), Twisted runs the timed calls that
came due before it reads the workers' pipes, where everything they sent
meanwhile waits: the master then reads for L{SETTLE} seconds before it
judges, and the time it did not run is added to the start allowance of the
workers that have not reported yet (when the whole process group was
stopped, they were stopped mid-import too).  Its clock is the monotonic one
(L{timerserver.clock}): a step of the wall clock is no stall.
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
"""Seconds a serving worker may send nothing (it sends a load report every 0.5 s)."""
HEARTBEAT = 0.5
"""How often the master notes that it runs."""
STALLED_GAP = 1.5
"""A heartbeat this late: the master itself did not run (stopped, starved)."""
SETTLE = 5.0
"""Seconds the master runs again after a stall before it judges a worker."""


class ReportWatch:
    """
    Deadlines for C{current} workers, on C{reactor}; C{hung(worker,
    silence)} is called for one that missed its deadline, silent for
    C{silence} seconds.
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
        self._starting: dict[WorkerProcess, float] = {}
        """The workers that have not reported yet, and when their first report is due."""

    def start(self) -> None:
        """Start the master's heartbeat."""
        self.stop()
        self._lastBeat = self.reactor.seconds()
        self._beatCall = self.reactor.callLater(HEARTBEAT, self._beat)

    def stop(self) -> None:
        """Stop the heartbeat (each worker's deadline is cancelled with the worker)."""
        if self._beatCall is not None and self._beatCall.active():
            self._beatCall.cancel()
        self._beatCall = None
        self._starting.clear()

    def _beat(self) -> None:
        now = self.reactor.seconds()
        self._noteStall(now)
        self._lastBeat = now
        self._beatCall = self.reactor.callLater(HEARTBEAT, self._beat)

    def _noteStall(self, now: float) -> None:
        """
        If the heartbeat is overdue, the master did not run since it last
        beat: note when it resumed, and give the workers that have not
        reported yet the time it lost.
        """
        gap = now - self._lastBeat
        if gap <= STALLED_GAP:
            return
        self._resumedAt = self._lastBeat = now
        lost = gap - HEARTBEAT
        for worker in self._starting:
            self._starting[worker] += lost

    def started(self, worker: WorkerProcess) -> None:
        """C{worker} was given its slot: its first report is due."""
        now = self.reactor.seconds()
        deadline = max(now + SPARE_REPORT_DEADLINE, worker.startedAt + START_ALLOWANCE)
        self._starting[worker] = deadline
        self.expect(worker, deadline)

    def reported(self, worker: WorkerProcess) -> None:
        """C{worker} sent its first load report: it serves, and its silence is watched."""
        if self._starting.pop(worker, None) is not None and worker.lastHeard is not None:
            self.expect(worker, worker.lastHeard + REPORT_SILENCE)

    def expect(self, worker: WorkerProcess, deadline: float) -> None:
        """Look at C{worker} at C{deadline} (reactor time)."""
        worker.cancelReportDeadline()
        delay = max(0.0, deadline - self.reactor.seconds())
        worker.reportDeadline = self.reactor.callLater(delay, self._due, worker)

    def _due(self, worker: WorkerProcess) -> None:
        worker.reportDeadline = None
        if not self.current(worker):
            self._starting.pop(worker, None)
            return
        now = self.reactor.seconds()
        self._noteStall(now)
        if now - self._resumedAt < SETTLE:  # it only just runs again: its pipes first
            self.expect(worker, self._resumedAt + SETTLE)
            return
        if worker.servingSince is None:
            due = self._starting.get(worker, now)
            if due > now:
                self.expect(worker, due)
                return
            since = worker.startedAt
        else:
            since = worker.lastHeard if worker.lastHeard is not None else worker.servingSince
            if since + REPORT_SILENCE > now:
                self.expect(worker, since + REPORT_SILENCE)
                return
        self._starting.pop(worker, None)
        self.hung(worker, now - since)
