"""
L{WorkerProcess}: the master's side of one worker process.  It reads the
worker's messages (L{timerserver.messages}) and re-emits its log lines
marked with its number, passes its load reports to the pool, asks it for its
figures with a deadline, and tells the pool when it ends.

Nothing a worker writes can grow the master or raise in it: a line longer
than L{MAX_LINE} is dropped (and counted), a malformed message is logged
(with a bound on how many lines that writes) and ignored.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as Structural

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from timerserver.messages import (
    MAX_LINE,
    Configure,
    Load,
    LogEvent,
    MalformedMessage,
    StatsAnswer,
    StatsRequest,
    StopFigures,
    checkStats,
    decode,
    encode,
)


class Pool(Structural):
    """What a worker tells its pool (L{timerserver.supervisor.WorkerPoolService})."""

    reactor: Any

    def workerLoad(self, worker: WorkerProcess, count: int, capacity: int | None) -> None:
        """C{worker} holds C{count} connections now, and can hold C{capacity}."""

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """C{worker}'s process ended."""


MALFORMED_LOGGED = 10
"""Malformed messages logged per worker; the rest are only counted."""


class WorkerProcess(ProcessProtocol):
    """
    One worker: relays its log, answers, and tells the pool when it ends.

    @ivar lastStats: its latest L{StatsAnswer}'s figures, or C{None}.
    @ivar stopFigures: its L{StopFigures}, once it sent them.
    @ivar linesDropped: its output lines dropped for being over L{MAX_LINE}.
    @ivar malformed: its malformed messages.
    """

    _log = Logger()
    transport: IProcessTransport  # set by spawnProcess before anything is read

    def __init__(self, pool: Pool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.buffers = {1: b"", 2: b""}
        self._discarding = {1: False, 2: False}
        self.startedAt = pool.reactor.seconds()
        self.servingSince: float | None = None
        """When its first load report came: it serves (C{None} until then)."""
        self.lastReport: float | None = None
        """When its last load report came (C{None} until the first)."""
        self.spawnedAt = self.startedAt
        """When its process started (C{startedAt} is when it took its slot)."""
        self.lostBefore = 0.0
        """Seconds the master had not run for before this process started (its watch's)."""
        self.reportDeadline: IDelayedCall | None = None
        """Set by the pool: when it is taken for hung unless a load report came."""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.stopFigures: StopFigures | None = None
        self.lastStats: dict[str, Any] | None = None
        self.linesDropped = 0
        self.malformed = 0
        self.retired = False
        """Whether the pool has folded its figures into its sums (it ended)."""
        self._nextId = 0
        self._asked: tuple[int, list[defer.Deferred[dict[str, Any] | None]]] | None = None

    def cancelReportDeadline(self) -> None:
        """It ended, or the pool stops: no report is expected."""
        if self.reportDeadline is not None and self.reportDeadline.active():
            self.reportDeadline.cancel()
        self.reportDeadline = None

    def configure(self, config: dict[str, Any], number: int, fd: int) -> None:
        """Make the process worker C{number} on descriptor C{fd}: its first message."""
        self.number = number
        self.startedAt = self.pool.reactor.seconds()
        self.transport.write(encode(Configure(config, number, fd)))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self.buffers.get(childFD, b"") + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if self._discarding.get(childFD):
                self._discarding[childFD] = False  # the end of a line too long
            elif len(line) > MAX_LINE:
                self.linesDropped += 1
            elif childFD == 1:
                self.outLine(line)
            elif line.strip():
                self._log.error(
                    "{name}: {text}",
                    name=self.name,
                    worker=self.number,
                    text=line.decode(errors="replace"),
                )
        if len(rest) > MAX_LINE:
            if not self._discarding.get(childFD):
                self.linesDropped += 1
            self._discarding[childFD] = True
            rest = b""
        self.buffers[childFD] = rest

    def outLine(self, line: bytes) -> None:
        """Handle one line of the worker's standard output: one message."""
        try:
            message = decode(line)
        except MalformedMessage as e:
            self.badMessage(str(e))
            return
        except Exception as e:  # decode checks everything: a bug, still not the master's end
            self.badMessage(f"{type(e).__name__}: {e}")
            return
        if isinstance(message, LogEvent):
            self.logEvent(message)
        elif isinstance(message, Load):
            self.lastReport = self.pool.reactor.seconds()
            if self.servingSince is None:
                self.servingSince = self.lastReport
            self.pool.workerLoad(self, message.open, message.capacity)
        elif isinstance(message, StatsAnswer):
            self.statsAnswer(message)
        elif isinstance(message, StopFigures):
            self.stopFigures = message
        else:
            self.badMessage(f"a {message.TYPE} message, which only the master sends")

    def statsAnswer(self, message: StatsAnswer) -> None:
        """
        Keep the figures of C{message} if they have the shape of a snapshot
        (else it is malformed); either way the request it answers is over.
        """
        figures: dict[str, Any] | None = message.stats
        try:
            checkStats(message.stats)
        except MalformedMessage as e:
            self.badMessage(str(e))
            figures = None
        else:
            self.lastStats = figures
        if self._asked is not None and self._asked[0] == message.id:
            _, waiting = self._asked
            self._asked = None  # the next scrape asks again
            for d in waiting:
                d.callback(figures)

    def badMessage(self, why: str) -> None:
        """Log (the first few of) the worker's malformed messages; never raise."""
        self.malformed += 1
        if self.malformed <= MALFORMED_LOGGED:
            self._log.error(
                "{name}: malformed message ignored ({why}){more}",
                name=self.name,
                worker=self.number,
                why=why,
                more=", further ones only counted" if self.malformed == MALFORMED_LOGGED else "",
            )

    @property
    def name(self) -> str:
        """How the log names it: C{worker N}, or C{spare worker} before it is configured."""
        return f"worker {self.number}" if self.number else "spare worker"

    def logEvent(self, event: LogEvent) -> None:
        """Re-emit a worker's log event in the master's log, marked with its number."""
        try:
            level = LogLevel.levelWithName(event.level)
        except Exception:
            level = LogLevel.info
        text = event.text if event.traceback is None else f"{event.text}\n{event.traceback}"
        self._log.emit(level, "{name}: {text}", name=self.name, worker=self.number, text=text)

    def askStats(self, deadline: float) -> defer.Deferred[dict[str, Any] | None]:
        """
        The worker's figures as it answers within C{deadline} seconds, or
        C{None} if it does not.  While a request is unanswered no other is
        sent: a stopped worker's input does not grow.
        """
        d: defer.Deferred[dict[str, Any] | None] = defer.Deferred()
        if self._asked is None:
            self._nextId += 1
            self._asked = (self._nextId, [])
            self.transport.write(encode(StatsRequest(self._nextId)))
        self._asked[1].append(d)
        timer: IDelayedCall = self.pool.reactor.callLater(deadline, self._late, d)
        return d.addBoth(_cancelling(timer))

    def _late(self, d: defer.Deferred[dict[str, Any] | None]) -> None:
        if self._asked is not None and d in self._asked[1]:
            self._asked[1].remove(d)  # the request stays asked: its answer updates lastStats
        d.callback(None)

    def signal(self, name: str) -> None:
        """Send the worker signal C{name} (C{"TERM"}, C{"KILL"}), if it still runs."""
        try:
            self.transport.signalProcess(name)
        except Exception:
            pass  # already gone

    def processEnded(self, reason: Failure) -> None:
        asked, self._asked = self._asked, None
        try:
            for d in asked[1] if asked else []:
                d.callback(None)
            self.pool.workerEnded(self, reason)
        except Exception:
            self._log.failure("{name}'s end was not handled", name=self.name)
        finally:
            self.ended.callback(None)


def _cancelling(timer: IDelayedCall) -> Any:
    def cancel(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    return cancel
