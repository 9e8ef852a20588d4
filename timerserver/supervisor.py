"""
L{WorkerPoolService}: the master of C{twistd timerserver --workers N}.

The master listens on C{--port} (L{WorkerSockets}: a socket per worker for
TCP, one shared socket otherwise; a port in use is one line before any
worker starts), never accepts, and hands each of N worker processes
(C{timerserver.worker}) its listening socket as descriptor 3 and its
configuration as its first message (L{timerserver.messages}).

It supervises them: a worker that exits is logged with its status and
replaced at once by the spare, a worker process kept started (imports done,
every listening descriptor held) but not configured, so that a replacement
serves within milliseconds rather than the seconds a Python process takes
to start on a busy machine; another spare is started at once.  A worker that
dies again before it has served for L{HEALTHY_AFTER} seconds (a spare: within
them of its start), or whose spawn fails
(EMFILE, ENOMEM, fork or exec), is restarted after a back-off (0.5 s,
doubling to 30 s), not in a tight loop.  A worker is recorded only once its
spawn succeeded.  On stop it sends SIGTERM to
every worker (each runs the graceful shutdown), kills those still running
L{KILL_AFTER} seconds past the shutdown timeout (stopped, wedged), stops
waiting L{GIVE_UP_AFTER} seconds past it whatever happens, and logs one
stop line that sums the workers' L{StopFigures}.

Each worker reports how many connections it holds, and how many it can
hold, every half second (L{Load}); the master steers new connections toward
the emptier workers by them, and away from full ones (L{Steering}).

Its metrics are its workers' figures, summed (L{PoolFigures}).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure

from timerserver.config import ServerConfig
from timerserver.poolfigures import SCRAPE_DEADLINE, PoolFigures
from timerserver.reportwatch import ReportWatch
from timerserver.steering import Steering
from timerserver.workerprocess import WorkerProcess
from timerserver.workersockets import WorkerSockets

HEALTHY_AFTER = 5.0
"""A worker that served this long before it died is replaced at once."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
KILL_AFTER = 3.0
"""Seconds past the shutdown timeout before a worker that will not stop is killed."""
GIVE_UP_AFTER = 4.5
"""Seconds past the shutdown timeout after which the master stops waiting for any worker."""
STOP_FIELDS = ("closed", "cancelled", "skipped")
WORKER_MAIN = (
    "import signal, sys\n"
    "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"
    "if sys.path[:1] == ['']:\n"
    "    del sys.path[0]\n"
    "from timerserver.worker import main\n"
    "main(sys.argv[1:])\n"
)
"""
A worker's C{python -c}: C{timerserver.worker}'s main, imported with the
working directory off C{sys.path} (C{python -m} and C{-c} put it first, so
whoever can write there would run code in every worker; C{-P} needs 3.11).
First, before any import, it ignores the signals meant for its master: a
hangup of the terminal's process group, and twistd's log reopening
(C{systemctl kill -s USR1} signals every process of the unit) killed every
worker and their clients without a goodbye.  A worker logs through its
master and is stopped by it, or by the end of its master's pipe.
"""


def exitStatus(reason: Failure) -> str:
    """How a process ended, in words."""
    value = reason.value
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        if value.signal is not None:
            return f"killed by signal {value.signal}{signalName(value.signal)}"
        return f"exited with status {value.exitCode}"
    return str(value)


def signalName(number: int) -> str:
    """C{" (SIGKILL)"}, C{" (SIGRTMIN+1)"}: signal C{number}'s name, if it has one."""
    try:
        return f" ({signal.Signals(number).name})"
    except ValueError:  # real-time signals but the first and last have no member
        low, high = getattr(signal, "SIGRTMIN", 0), getattr(signal, "SIGRTMAX", 0)
        return f" (SIGRTMIN+{number - low})" if low < number < high else ""


class WorkerPoolService(Service):
    """
    Listens as C{config.listener} says, runs C{config.workers} worker processes on its
    socket, replaces those that die, and stops them all gracefully.

    @ivar workers: the running workers by number (1 to N).
    @ivar figures: its metrics' figures (those of the workers that died included).
    @ivar stopFigures: after stop, the summed L{StopFigures} of the workers,
        and how many workers there were and how many sent none.
    """

    _log = Logger()

    def __init__(
        self, config: ServerConfig, reactor: Any, scrapeDeadline: float = SCRAPE_DEADLINE
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.count = config.workers
        self.workers: dict[int, WorkerProcess] = {}
        self.spare: WorkerProcess | None = None
        """A started, unconfigured worker process, ready to replace any worker."""
        self.failures: dict[int, int] = {}
        self.stopping = False
        self._restarts: dict[int, Any] = {}
        self.figures = PoolFigures(self.count, config.tick, scrapeDeadline)
        self.stopFigures: dict[str, int] | None = None
        self.sockets = WorkerSockets(config.listener, reactor, self.count)
        self.steering = Steering(self.count, self.sockets.steer, reactor.seconds)
        self.watch = ReportWatch(reactor, self._current, self._hung)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self.sockets.listen()
        self._log.info(
            "timerserver listening on {address} with {count} workers ({how}), "
            "timer queue {queue}{tick}",
            address=self.sockets.address,
            count=self.count,
            how="a socket each" if self.sockets.perWorker else "one shared socket",
            queue=self.config.queue,
            tick=f", tick {self.config.tick:g} s" if self.config.tick else "",
        )

    def startService(self) -> None:
        Service.startService(self)
        self.watch.start()
        for number in range(1, self.count + 1):
            self.spawn(number)

    def workerCommand(self) -> list[str]:
        """The command line of a worker process (which worker it is comes later)."""
        args = [sys.executable, "-c", WORKER_MAIN]
        if "asyncio" in type(self.reactor).__module__:
            args += ["--reactor", "asyncio"]  # the workers run on the master's reactor
        fds = ",".join(str(3 + i) for i in range(self.count))
        return [*args, "--fds", fds]

    def workerConfig(self) -> dict[str, Any]:
        """What every worker is configured with (its L{Configure} message)."""
        return self.config.toData()

    def _start(self, label: str, key: int, retry: Any) -> WorkerProcess | None:
        """
        Spawn a worker process holding every listening socket, or log one
        line and call C{retry} after the back-off of C{key}.
        """
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        paths = [package, *env.get("PYTHONPATH", "").split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))  # "" would be the directory
        env["PYTHONUNBUFFERED"] = "1"
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        childFDs.update({3 + i: fd for i, fd in enumerate(self.sockets.fds)})
        worker = WorkerProcess(self, 0)
        self.watch.spawned(worker)
        try:
            self.reactor.spawnProcess(
                worker, sys.executable, self.workerCommand(), env=env, childFDs=childFDs
            )
        except Exception as e:  # EMFILE, ENOMEM, EAGAIN: fork, pipe or exec failed
            delay = self._backOff(key, quick=True)
            self._log.error(
                "{label} could not be started: {why}; retrying in {delay}s",
                label=label,
                why=str(e) or type(e).__name__,
                delay=delay,
            )
            self._restarts[key] = self.reactor.callLater(delay, retry)
            return None
        return worker

    def spawn(self, number: int) -> None:
        """Make worker C{number}: the spare if one is ready, else a new process."""
        self._restarts.pop(number, None)
        if self.stopping or not self.sockets.fds:
            return
        worker, how = self.spare, " (the spare)"
        self.spare = None
        if worker is None:
            worker, how = self._start(f"worker {number}", number, lambda: self.spawn(number)), ""
            if worker is None:
                return
        else:
            self.failures[0] = 0  # a spare that started and waited: its failures are over
        self.watch.started(worker)
        self.workers[number] = worker
        worker.configure(self.workerConfig(), number, 3 + number - 1)
        self.steering.started(number - 1)
        pid = worker.transport.pid
        self._log.info("worker {worker} started, pid {pid}{how}", worker=number, pid=pid, how=how)
        if len(self.workers) == self.count:
            self.spawnSpare()  # once every worker runs: they come first

    def _current(self, worker: WorkerProcess) -> bool:
        """Whether C{worker} holds its slot, the pool running."""
        return not self.stopping and self.workers.get(worker.number) is worker

    def _hung(self, worker: WorkerProcess, silence: float) -> None:
        """C{worker} missed its deadline (L{ReportWatch}): kill it; its end restarts it."""
        self._log.warn(
            "{name} (pid {pid}) {what} ({silence:.0f}s): killing it",
            name=worker.name,
            pid=worker.transport.pid,
            silence=silence,
            what="sent no load report since it took its slot"
            if worker.servingSince is None
            else "served, then sent no load report",
        )
        try:
            worker.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def spawnSpare(self) -> None:
        """Start a spare worker process, unless there is one."""
        if self.stopping or self.spare is not None or not self.sockets.fds:
            return
        retry = self._restarts.get(0)
        if retry is not None and retry.active():
            return  # it failed a moment ago: its back-off decides when to try again
        self._restarts.pop(0, None)
        spare = self._start("spare worker", 0, self.spawnSpare)
        if spare is not None:
            self.spare = spare
            self._log.info("spare worker started, pid {pid}", pid=spare.transport.pid)

    def _backOff(self, number: int, quick: bool) -> float:
        """The delay before worker C{number} is started again (0 unless it keeps failing)."""
        failures = self.failures.get(number, 0) + 1 if quick else 0
        self.failures[number] = failures
        return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 2)) if failures >= 2 else 0.0

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """Log how C{worker} ended and, unless stopping, start its replacement."""
        number = worker.number
        running = self.workers.get(number) is worker
        self.watch.ended(worker)
        if worker is self.spare:
            self.spare = None
        elif running:
            del self.workers[number]
        self.figures.retire(worker)
        if self.stopping:
            if not isinstance(reason.value, ProcessDone):
                # A stop signal is what stopping asked for (ours, or the
                # process group's: Ctrl-C, kill -- -PGID): not a warning.
                asked = getattr(reason.value, "signal", None) in (signal.SIGTERM, signal.SIGINT)
                (self._log.info if asked else self._log.warn)(
                    "{name} {status} while stopping", name=worker.name, status=exitStatus(reason)
                )
            return
        if running:
            self.steering.ended(number - 1)
        now = self.reactor.seconds()
        lived = now - worker.startedAt
        # A worker's health is its time serving, not its start: one that dies
        # before it ever served (its key unreadable, say) failed quickly however
        # long a loaded machine took to start Python.  A spare serves nobody.
        since = worker.servingSince if number else worker.startedAt
        delay = self._backOff(number, quick=since is None or now - since < HEALTHY_AFTER)
        self._log.warn(
            "{name} {status} after {lived:.1f}s; {what} in {delay}s",
            name=worker.name,
            status=exitStatus(reason),
            lived=lived,
            what="restarting it" if number else "starting another",
            delay=delay,
        )
        retry = (lambda: self.spawn(number)) if number else self.spawnSpare
        self._restarts[number] = self.reactor.callLater(delay, retry)

    def workerLoad(self, worker: WorkerProcess, count: int, capacity: int | None = None) -> None:
        """
        Worker C{worker} holds C{count} connections and can hold C{capacity}:
        steer by it, if it still runs.
        """
        if not self.stopping and worker.number and self.workers.get(worker.number) is worker:
            self.watch.reported(worker)
            self.steering.report(worker.number - 1, count, capacity)

    def metricsSource(self) -> defer.Deferred[Any]:
        """The metrics' source: its running workers' figures, summed (L{PoolFigures.gather})."""
        return self.figures.gather(self.workers.items())

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop every worker gracefully (SIGTERM: goodbye, shutdown timeout,
        timers cancelled), kill those still running L{KILL_AFTER} seconds
        past the shutdown timeout, stop waiting L{GIVE_UP_AFTER} seconds past
        it, and log one stop line that sums the workers' stop figures.
        """
        Service.stopService(self)
        self.stopping = True
        self.watch.stop()
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        processes = [*workers, *([self.spare] if self.spare else [])]
        for worker in processes:
            worker.cancelReportDeadline()
            worker.signal("TERM")
        timeout = self.config.shutdownTimeout
        killer = self.reactor.callLater(timeout + KILL_AFTER, self._killAll, processes)
        self.sockets.close()
        done: defer.Deferred[None] = defer.Deferred()
        giveUp = self.reactor.callLater(timeout + GIVE_UP_AFTER, done.callback, None)
        defer.gatherResults([w.ended for w in processes]).addCallback(
            lambda _: None if done.called else done.callback(None)
        )

        def stopped(_: object) -> None:
            for call in (killer, giveUp):
                if call.active():
                    call.cancel()
            figures = [w.stopFigures for w in workers]
            totals = {f: sum(getattr(s, f) for s in figures if s) for f in STOP_FIELDS}
            missing = sum(1 for s in figures if s is None)
            self.stopFigures = {**totals, "workers": len(workers), "unreported": missing}
            self._log.info(
                "timerserver stopped listening on {description} and its {count} workers; "
                "closed {closed} connections, cancelled {cancelled} timers, "
                "skipped {skipped} messages to slow clients{unreported}",
                description=self.config.listener.description,
                count=len(workers),
                stopStats=self.stopFigures,
                unreported=f" ({missing} workers sent no figures)" if missing else "",
                **totals,
            )

        return done.addCallback(stopped)

    def _killAll(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:
            if not worker.ended.called:
                self._log.warn("{name} did not stop; killing it", name=worker.name)
                worker.signal("KILL")
