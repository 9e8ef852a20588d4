"""
L{WorkerPoolService}: the master of C{twistd timerserver --workers N}.

The master listens on C{--port} (L{WorkerSockets}: a socket per worker for
TCP, one shared socket otherwise; a port in use is one line before any
worker starts), never accepts, and hands each of N worker processes
(C{timerserver.worker}) its listening socket as descriptor 3.

It supervises them: a worker that exits is logged with its status and
replaced at once; one that dies again within L{HEALTHY_AFTER} seconds of its
start is restarted after a back-off (0.5 s, doubling to 30 s), not in a
tight loop.  On stop it sends SIGTERM to every worker (each runs the
graceful shutdown), waits for them, and logs one stop line that sums
theirs.  A worker's log lines reach the master's log marked with its number.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent
from twisted.python.failure import Failure

from timerserver.config import ServerConfig
from timerserver.workersockets import WorkerSockets

HEALTHY_AFTER = 5.0
"""A worker that ran this long before it died is replaced at once."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
KILL_GRACE = 5.0
"""Seconds past the shutdown timeout before a worker that will not stop is killed."""
STOP_FIELDS = ("closed", "cancelled", "skipped")


def exitStatus(reason: Failure) -> str:
    """How a process ended, in words."""
    value = reason.value
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        if value.signal is not None:
            return f"killed by signal {value.signal} ({signal.Signals(value.signal).name})"
        return f"exited with status {value.exitCode}"
    return str(value)


class WorkerProcess(ProcessProtocol):
    """One worker: relays its log, answers, and tells the pool when it ends."""

    _log = Logger()
    transport: IProcessTransport  # set by spawnProcess before anything is read

    def __init__(self, pool: WorkerPoolService, number: int) -> None:
        self.pool = pool
        self.number = number
        self.buffers = {1: b"", 2: b""}
        self.startedAt = pool.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.stopStats: dict[str, int] | None = None
        self.waiting: list[defer.Deferred[dict[str, Any]]] = []
        self.lastStats: dict[str, Any] | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self.buffers.get(childFD, b"") + data).split(b"\n")
        self.buffers[childFD] = lines.pop()
        for line in lines:
            if childFD == 1:
                self.outLine(line)
            elif line.strip():
                self._log.error(
                    "worker {worker}: {text}",
                    worker=self.number,
                    text=line.decode(errors="replace"),
                )

    def outLine(self, line: bytes) -> None:
        """Handle one line of the worker's standard output: a reply or a log event."""
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._log.info(
                "worker {worker}: {text}", worker=self.number, text=line.decode(errors="replace")
            )
        elif "stats" in message:
            self.lastStats = message["stats"]
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(message["stats"])
        else:
            self.logEvent(eventFromJSON(line.decode()))

    def logEvent(self, event: dict[str, Any]) -> None:
        """Re-emit a worker's log event in the master's log, marked with its number."""
        stats = event.get("stopStats")
        if isinstance(stats, dict):
            self.stopStats = stats
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        level = event.get("log_level")
        self._log.emit(
            level if isinstance(level, type(LogLevel.info)) else LogLevel.info,
            "worker {worker}: {text}",
            worker=self.number,
            text=text,
        )

    def askStats(self) -> defer.Deferred[dict[str, Any]]:
        """The worker's counters, as it reports them on request."""
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(b"stats\n")
        return d

    def signal(self, name: str) -> None:
        """Send the worker signal C{name} (C{"TERM"}, C{"KILL"}), if it still runs."""
        try:
            self.transport.signalProcess(name)
        except Exception:
            pass  # already gone

    def processEnded(self, reason: Failure) -> None:
        for d in self.waiting:
            d.errback(reason)
        self.waiting = []
        self.pool.workerEnded(self, reason)
        self.ended.callback(None)


class WorkerPoolService(Service):
    """
    Listens as C{config.listener} says, runs C{config.workers} worker
    processes on its socket, replaces those that die, and stops them all
    gracefully.

    @ivar workers: the running workers by number (1 to N).
    """

    _log = Logger()

    def __init__(self, config: ServerConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.count = config.workers
        self.workers: dict[int, WorkerProcess] = {}
        self.failures: dict[int, int] = {}
        self.stopping = False
        self._restarts: dict[int, Any] = {}
        self.retired: list[dict[str, Any]] = []
        """The last counters of workers that died, kept in the metrics' sums."""
        self.sockets = WorkerSockets(config.listener, reactor, self.count)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self.sockets.listen()
        self._log.info(
            "timerserver listening on {address} with {count} workers ({how})",
            address=self.sockets.address,
            count=self.count,
            how="a socket each" if self.sockets.perWorker else "one shared socket",
        )

    def startService(self) -> None:
        Service.startService(self)
        for number in range(1, self.count + 1):
            self.spawn(number)

    def spawn(self, number: int) -> None:
        """Start worker C{number} on the listening socket."""
        self._restarts.pop(number, None)
        if self.stopping or not self.sockets.fds:
            return
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        args = [sys.executable, "-m", "timerserver.worker", "--number", str(number)]
        if "asyncio" in type(self.reactor).__module__:
            args += ["--reactor", "asyncio"]  # the workers run on the master's reactor
        args += ["--fd", "3", "--config", json.dumps(self.config.toData())]
        worker = WorkerProcess(self, number)
        self.workers[number] = worker
        self.reactor.spawnProcess(
            worker,
            sys.executable,
            args,
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", 3: self.sockets.fds[number - 1]},
        )
        pid = worker.transport.pid if worker.transport else None
        self._log.info("worker {worker} started, pid {pid}", worker=number, pid=pid)

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """Log how C{worker} ended and, unless stopping, start its replacement."""
        number = worker.number
        if self.workers.get(number) is worker:
            del self.workers[number]
        if worker.lastStats:
            from timerserver.metrics import retired

            self.retired.append(retired(worker.lastStats))
        if self.stopping:
            return
        lived = self.reactor.seconds() - worker.startedAt
        quick = self.failures.get(number, 0) + 1 if lived < HEALTHY_AFTER else 0
        self.failures[number] = quick
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (quick - 2)) if quick >= 2 else 0.0
        self._log.warn(
            "worker {worker} {status} after {lived:.1f}s; restarting it in {delay}s",
            worker=number,
            status=exitStatus(reason),
            lived=lived,
            delay=delay,
        )
        self._restarts[number] = self.reactor.callLater(delay, self.spawn, number)

    def metricsSource(self) -> defer.Deferred[Any]:
        """
        The metrics' source: every running worker's snapshot, asked for now,
        summed with the master's own process figures and the retired workers'.
        """
        from timerserver.metrics import combine, processFigures

        workers = sorted(self.workers.items())
        # A worker that dies before it answers is left out of this scrape;
        # its last answer is in self.retired by then.
        asks = [w.askStats().addErrback(lambda _: None) for _, w in workers]

        def summed(answers: list[dict[str, Any] | None]) -> Any:
            master = processFigures()
            processes = {"master": master}
            live = []
            for (number, _), answer in zip(workers, answers, strict=True):
                if answer is not None:
                    processes[str(number)] = answer.get("process", {})
                    live.append(answer)
            total = combine([*live, *self.retired, {"process": master}])
            return total, processes

        return defer.gatherResults(asks).addCallback(summed)

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop every worker gracefully (SIGTERM: goodbye, shutdown timeout,
        timers cancelled), kill those still running well after the shutdown
        timeout, and log one stop line that sums theirs.
        """
        Service.stopService(self)
        self.stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        killer = self.reactor.callLater(
            self.config.shutdownTimeout + KILL_GRACE, self._killAll, workers
        )
        self.sockets.close()
        d = defer.gatherResults([w.ended for w in workers])

        def stopped(_: object) -> None:
            if killer.active():
                killer.cancel()
            totals = dict.fromkeys(STOP_FIELDS, 0)
            for worker in workers:
                for field in STOP_FIELDS:
                    totals[field] += int((worker.stopStats or {}).get(field, 0))
            self._log.info(
                "timerserver stopped listening on {description} and its {count} workers; "
                "closed {closed} connections, cancelled {cancelled} timers, "
                "skipped {skipped} messages to slow clients",
                description=self.config.listener.description,
                count=len(workers),
                stopStats=totals,
                **totals,
            )

        return d.addCallback(stopped)

    def _killAll(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:
            if not worker.ended.called:
                self._log.warn("worker {worker} did not stop; killing it", worker=worker.number)
                worker.signal("KILL")
