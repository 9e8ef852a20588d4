"""
L{ReportWatch}: the master's watch over its workers.  A worker sends a load
report every 0.5 s, ahead of any backlog of its log lines; one that sends
its first report too late, or none for L{REPORT_SILENCE} seconds once it
serves, is hung (stopped, wedged, swapped out), which nothing else would
notice: its clients are not served, and its slot is given to a new process.

The master judges only while it runs itself.  Its deadlines count the time
it ran, not the time that passed: after it was stopped or starved (its own
heartbeat came late), the time it lost is added to every deadline, since a
whole process group stopped (Ctrl-Z, C{docker pause}) stopped its workers
mid-import too, and then it reads the workers' pipes for L{SETTLE} seconds
before it judges (Twisted runs the timed calls that came due before it
reads a pipe).  A worker found silent is looked at once more on the next
turn, after the pipes were read, before it is killed.  The master's clock is
the monotonic one (L{timerserver.clock}): a step of the wall clock is no
stall.
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
        self.lost = 0.0
        """Seconds the master did not run for, in all (its heartbeat late)."""
        self._lastBeat = reactor.seconds()
        self._resumedAt = -math.inf
        self._beatCall: Any = None
        self._starting: dict[WorkerProcess, float] = {}
        """The workers given a slot that have not reported yet: when (in L{ran} time) it is due."""

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

    def ran(self, now: float) -> float:
        """The time the master has run for, as of C{now}: its clock less what it lost."""
        self._noteStall(now)
        return now - self.lost

    def _beat(self) -> None:
        now = self.reactor.seconds()
        self._noteStall(now)
        self._lastBeat = now
        self._beatCall = self.reactor.callLater(HEARTBEAT, self._beat)

    def _noteStall(self, now: float) -> None:
        """If the heartbeat is overdue, the master did not run since it last beat."""
        gap = now - self._lastBeat
        if gap > STALLED_GAP:
            self.lost += gap - HEARTBEAT
            self._resumedAt = self._lastBeat = now

    def spawned(self, worker: WorkerProcess) -> None:
        """C{worker}'s process was started (for a slot, or as the spare)."""
        worker.lostBefore = self.lost

    def started(self, worker: WorkerProcess) -> None:
        """
        C{worker} was given its slot: its first report is due within
        L{START_ALLOWANCE} of the start of its process, and (a spare) at
        least L{SPARE_REPORT_DEADLINE} from now, counting the time the master
        ran.
        """
        now = self.reactor.seconds()
        ran = self.ran(now)
        spawnedRan = worker.spawnedAt - worker.lostBefore
        due = max(ran + SPARE_REPORT_DEADLINE, spawnedRan + START_ALLOWANCE)
        self._starting[worker] = due
        self.expect(worker, now + (due - ran))

    def reported(self, worker: WorkerProcess) -> None:
        """C{worker} sent its first load report: it serves, and its silence is watched."""
        if self._starting.pop(worker, None) is not None and worker.lastReport is not None:
            self.expect(worker, worker.lastReport + REPORT_SILENCE)

    def ended(self, worker: WorkerProcess) -> None:
        """C{worker}'s process ended: nothing is due from it."""
        worker.cancelReportDeadline()
        self._starting.pop(worker, None)

    def expect(self, worker: WorkerProcess, deadline: float) -> None:
        """Look at C{worker} at C{deadline} (reactor time)."""
        worker.cancelReportDeadline()
        delay = max(0.0, deadline - self.reactor.seconds())
        worker.reportDeadline = self.reactor.callLater(delay, self._due, worker, False)

    def _due(self, worker: WorkerProcess, again: bool) -> None:
        """
        Judge C{worker}; C{again}: it was found silent on the turn before,
        and the pipes have been read since.
        """
        worker.reportDeadline = None
        if not self.current(worker):
            self._starting.pop(worker, None)
            return
        now = self.reactor.seconds()
        ran = self.ran(now)
        if now - self._resumedAt < SETTLE:  # it only just runs again: its pipes first
            self.expect(worker, self._resumedAt + SETTLE)
            return
        last = worker.lastReport
        if last is None:
            due = self._starting.get(worker, ran)
            if due > ran:
                self.expect(worker, now + (due - ran))
                return
        elif max(last, self._resumedAt) + REPORT_SILENCE > now:
            self.expect(worker, max(last, self._resumedAt) + REPORT_SILENCE)
            return
        if not again:  # once more, after the reactor has read the pipes
            worker.reportDeadline = self.reactor.callLater(0, self._due, worker, True)
            return
        self._starting.pop(worker, None)
        self.hung(worker, now - (worker.startedAt if last is None else last))
