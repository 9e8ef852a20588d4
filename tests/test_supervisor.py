"""
The master's supervision, driven by task.Clock and a fake process reactor:
failed spawns, the stop deadline, what a worker can send
it (malformed messages, lines without end), and steering by its load; and
one real worker process, started as the master starts it, for what it imports.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from timerserver.config import ServerConfig
from timerserver.listener import Listener
from timerserver.messages import (
    MAX_LINE,
    Configure,
    Load,
    LogEvent,
    StatsAnswer,
    StopFigures,
    decode,
    encode,
)
from timerserver.reportwatch import (
    REPORT_SILENCE,
    SETTLE,
    SPARE_REPORT_DEADLINE,
    START_ALLOWANCE,
)
from timerserver.steering import MIN_INTERVAL as STEER_INTERVAL
from timerserver.supervisor import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    GIVE_UP_AFTER,
    KILL_AFTER,
    WorkerPoolService,
    exitStatus,
)
from timerserver.workerprocess import MALFORMED_LOGGED, WorkerProcess


class FakeProcess:
    def __init__(self, reactor: ProcessReactor, proto: WorkerProcess, pid: int) -> None:
        self.reactor = reactor
        self.proto = proto
        self.pid = pid
        self.written = b""
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def messages(self) -> list[Any]:
        return [decode(line) for line in self.written.splitlines()]

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise OSError("already gone")
        self.signals.append(name)

    def end(self, reason: Failure | None = None) -> None:
        self.pid = None  # type: ignore[assignment]
        self.proto.processEnded(reason or Failure(ProcessDone(0)))


class ProcessReactor(Clock):
    """A Clock that spawns fake processes, or fails to with C{self.failure}."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.failure: Exception | None = None

    def spawnProcess(self, proto: WorkerProcess, *args: Any, **kwargs: Any) -> FakeProcess:
        if self.failure is not None:
            raise self.failure
        process = FakeProcess(self, proto, 1000 + len(self.processes))
        self.processes.append(process)
        proto.makeConnection(process)  # type: ignore[arg-type]
        return process


def config(workers: int = 2, shutdownTimeout: float = 5.0) -> ServerConfig:
    return ServerConfig(
        listener=Listener.parse("tcp:0:interface=127.0.0.1"),
        interval=0.5,
        workers=workers,
        shutdownTimeout=shutdownTimeout,
    )


CONFIG = config().toData()


def timers(service: WorkerPoolService) -> list[Any]:
    """The master's timers, but for its heartbeat and its workers' report deadlines."""
    watch = (service.watch._due, service.watch._beat)
    return [c for c in service.reactor.getDelayedCalls() if c.func not in watch]


def serve(reactor: ProcessReactor, processes: list[FakeProcess], seconds: float) -> None:
    """
    Advance C{seconds} in small steps, as a running master's clock moves,
    each of C{processes} reporting its load at every step.
    """
    step = 0.125  # exact in binary: the steps add up to the deadlines
    for _ in range(round(seconds / step)):
        reactor.advance(step)
        for process in processes:
            process.proto.childDataReceived(1, encode(Load(0, 100)))


def pool(workers: int = 2, shutdownTimeout: float = 5.0) -> tuple[WorkerPoolService, Any]:
    reactor = ProcessReactor()
    service = WorkerPoolService(config(workers, shutdownTimeout), reactor)
    service.sockets.fds = [10 + i for i in range(workers)]
    return service, reactor


class SpawnTests(SynchronousTestCase):
    def test_configurationIsTheFirstMessage(self) -> None:
        service, reactor = pool()
        service.startService()
        self.assertEqual(sorted(service.workers), [1, 2])
        one, two, spare = reactor.processes
        self.assertEqual(one.messages(), [Configure(CONFIG, 1, 3)])
        self.assertEqual(two.messages(), [Configure(CONFIG, 2, 4)])
        self.assertEqual(spare.messages(), [])  # it waits, configured as nothing
        self.assertIs(service.spare, spare.proto)
        self.assertEqual(sorted(service.workers), [1, 2])  # started after the workers

    def test_theSpareReplacesADeadWorkerAtOnce(self) -> None:
        service, reactor = pool()
        service.startService()
        one, _, spare = reactor.processes
        one.end(Failure(ProcessTerminated(signal=9)))
        reactor.advance(0)
        self.assertIs(service.workers[1], spare.proto)
        self.assertEqual(spare.messages(), [Configure(CONFIG, 1, 3)])
        [fresh] = reactor.processes[3:]  # and another spare is started
        self.assertIs(service.spare, fresh.proto)
        self.assertEqual(fresh.messages(), [])

    def test_aHungSpareMadeAWorkerIsKilledAndItsSlotRestarted(self) -> None:
        """A spare stopped while it waited took the slot, and nothing ever noticed."""
        service, reactor = pool()
        service.startService()
        logged = captureLog(self)
        one, two, spare = reactor.processes
        serve(reactor, [one, two], START_ALLOWANCE)  # the spare has long been ready
        one.end(Failure(ProcessTerminated(signal=9)))
        reactor.advance(0)  # the spare takes the slot
        self.assertIs(service.workers[1], spare.proto)
        serve(reactor, [two], SPARE_REPORT_DEADLINE - 0.125)
        self.assertEqual(spare.signals, [])
        serve(reactor, [two], 0.125)
        self.assertEqual(spare.signals, ["KILL"])
        [line] = [e for e in logged if "killing it" in e["log_format"]]
        self.assertEqual(line["log_level"].name, "warn")
        spare.end(Failure(ProcessTerminated(signal=9)))  # its end restarts the slot
        reactor.advance(BACKOFF_FIRST)  # it never served: with back-off
        self.assertIsNot(service.workers[1], spare.proto)
        self.assertIn(service.workers[1].transport, reactor.processes[3:])

    def test_aSpareStillStartingHasItsStartAllowance(self) -> None:
        """Handed a slot while it imports (every worker starting at once): not hung yet."""
        service, reactor = pool()
        service.startService()
        one, _, spare = reactor.processes
        reactor.advance(1)
        one.end(Failure(ProcessTerminated(signal=9)))
        reactor.advance(0)
        serve(reactor, [], START_ALLOWANCE - 1.125)
        self.assertEqual(spare.signals, [])
        serve(reactor, [], 0.25)
        self.assertEqual(spare.signals, ["KILL"])

    def test_stoppingCancelsTheSparesDeadline(self) -> None:
        service, reactor = pool()
        service.startService()
        one, _, spare = reactor.processes
        one.end(Failure(ProcessTerminated(signal=9)))
        reactor.advance(0)
        service.stopService()
        watch = (service.watch._due, service.watch._beat)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.func in watch], [])
        reactor.advance(START_ALLOWANCE)
        self.assertEqual(spare.signals, ["TERM", "KILL"])  # the stop's own, past its timeout

    def test_aSpareMadeAWorkerThatReportsIsLeftAlone(self) -> None:
        service, reactor = pool()
        service.startService()
        one, _, spare = reactor.processes
        one.end(Failure(ProcessTerminated(signal=9)))
        reactor.advance(0)
        reactor.advance(0.5)
        spare.proto.childDataReceived(1, encode(Load(0, 100)))
        reactor.advance(SPARE_REPORT_DEADLINE)
        self.assertEqual(spare.signals, [])
        spare.end(Failure(ProcessTerminated(signal=9)))  # gone before the deadline: nothing
        reactor.advance(SPARE_REPORT_DEADLINE)
        self.assertEqual(spare.signals, [])

    def test_aWorkerThatNeverReportsIsKilledPastItsStartAllowance(self) -> None:
        """Started with the others and hung before it served: nothing else would notice."""
        service, reactor = pool()
        service.startService()
        logged = captureLog(self)
        one, two, _ = reactor.processes
        serve(reactor, [two], START_ALLOWANCE - 0.5)
        self.assertEqual(one.signals, [])
        serve(reactor, [two], 0.5)
        self.assertEqual((one.signals, two.signals), (["KILL"], []))
        [line] = [e for e in logged if "killing it" in e["log_format"]]
        self.assertEqual((line["log_level"].name, line["name"]), ("warn", "worker 1"))
        self.assertEqual(
            (line["silence"], line["what"]), (60.0, "sent no load report since it took its slot")
        )
        one.end(Failure(ProcessTerminated(signal=9)))
        reactor.advance(0)
        self.assertIsNot(service.workers[1], one.proto)  # the spare took its slot

    def test_aServingWorkerThatFallsSilentIsKilled(self) -> None:
        """Stopped or wedged after it served: its clients hang until it is replaced."""
        service, reactor = pool()
        service.startService()
        logged = captureLog(self)
        one, two, _ = reactor.processes
        serve(reactor, [one, two], 10)
        serve(reactor, [two], REPORT_SILENCE - 0.5)
        self.assertEqual(one.signals, [])
        serve(reactor, [two], 0.5)
        self.assertEqual((one.signals, two.signals), (["KILL"], []))
        [line] = [e for e in logged if "killing it" in e["log_format"]]
        self.assertEqual(
            (line["silence"], line["what"]), (30.0, "served, then sent no load report")
        )
        serve(reactor, [two], 10 * REPORT_SILENCE)  # one reporting every 0.5 s: never
        self.assertEqual(two.signals, [])

    def test_aMasterStoppedJustPastASilenceKillsNoWorkerForIt(self) -> None:
        """
        Stopped 32 s, its deadlines 2 s before it resumed: they run before
        it reads the reports that waited in the pipes (both workers were
        killed).
        """
        service, reactor = pool()
        service.startService()
        logged = captureLog(self)
        one, two, _ = reactor.processes
        serve(reactor, [one, two], 1)
        reactor.advance(32)  # in one step: every timer runs late, then the pipes are read
        serve(reactor, [one, two], SETTLE + REPORT_SILENCE)
        self.assertEqual((one.signals, two.signals), ([], []))
        self.assertEqual([e for e in logged if "killing it" in e["log_format"]], [])

    def test_aWholeGroupStoppedWhileItStartedKillsNoWorkerForIt(self) -> None:
        """
        Ctrl-Z on the master and its workers 1.5 s after the start, for 58 s:
        the workers, stopped mid-import too, still have their start
        allowance (23 of 24 were killed 6 s after SIGCONT).
        """
        service, reactor = pool()
        service.startService()
        one, two, _ = reactor.processes
        serve(reactor, [], 1.5)
        reactor.advance(58)  # in one step: the master did not run either
        serve(reactor, [], 20)  # they go on importing
        serve(reactor, [one, two], 60)
        self.assertEqual((one.signals, two.signals), ([], []))
        serve(reactor, [one], REPORT_SILENCE)
        self.assertEqual((one.signals, two.signals), ([], ["KILL"]))

    def test_aSpareStoppedWithTheGroupIsCreditedTheStallToo(self) -> None:
        """Stopped mid-import with the rest, then handed a slot: its running is what counts."""
        service, reactor = pool()
        service.startService()
        one, two, spare = reactor.processes
        serve(reactor, [], 1.5)
        reactor.advance(58)  # the whole group stopped
        serve(reactor, [], 2.5)
        one.end(Failure(ProcessTerminated(signal=9)))  # at 62 s: the spare takes its slot
        reactor.advance(0)
        self.assertIs(service.workers[1], spare.proto)
        serve(reactor, [two], 48)  # 110 s: 52.5 s of running since the spare started
        self.assertEqual(spare.signals, [])
        serve(reactor, [two], 10)  # past its 60 s of running
        self.assertEqual(spare.signals, ["KILL"])

    def test_workersThatDieBeforeTheyReportLeaveNothingWatched(self) -> None:
        service, reactor = pool()
        service.startService()
        for _ in range(20):
            service.workers[1].transport.end(Failure(ProcessTerminated(signal=9)))
            serve(reactor, [], BACKOFF_MAX)
        self.assertLessEqual(set(service.watch._starting), set(service.workers.values()))

    def test_aServingWorkerThatOnlyLogsIsHung(self) -> None:
        """
        Log lines can come from a worker stuck in one reactor turn (a loop
        that logs); load reports come from its reactor's turns, ahead of its
        log lines (L{OutChannel.report}).
        """
        service, reactor = pool()
        service.startService()
        one, two, _ = reactor.processes
        serve(reactor, [one, two], 1)
        line = encode(LogEvent("info", "a line"))
        for _ in range(round(REPORT_SILENCE)):
            one.proto.childDataReceived(1, line)
            serve(reactor, [two], 1)
        self.assertEqual((one.signals, two.signals), (["KILL"], []))

    def test_aMasterThatDidNotRunKillsNoWorkerForIt(self) -> None:
        """
        The master stopped for longer than a worker may be silent: its
        deadlines run before it reads the reports waiting in the pipes.
        """
        service, reactor = pool()
        service.startService()
        one, two, _ = reactor.processes
        serve(reactor, [one, two], 10)
        reactor.advance(10 * REPORT_SILENCE)  # in one step: every timer runs late
        self.assertEqual((one.signals, two.signals), ([], []))
        serve(reactor, [two], REPORT_SILENCE - 0.125)  # one's reports never come
        self.assertEqual(one.signals, [])
        serve(reactor, [two], 0.125)  # silent for 30 s of the master's running
        self.assertEqual((one.signals, two.signals), (["KILL"], []))

    def test_aDeadSpareIsReplacedWithBackOff(self) -> None:
        service, reactor = pool(workers=1)
        service.startService()
        delays = []
        for _ in range(3):
            reactor.processes[-1].end(Failure(ProcessTerminated(signal=9)))
            [call] = timers(service)
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(call.getTime() - reactor.seconds())
        self.assertEqual(delays, [0.0, BACKOFF_FIRST, 2 * BACKOFF_FIRST])
        self.assertEqual(service.workers[1].transport, reactor.processes[0])  # untouched

    def test_failedSpawnIsRetriedWithBackOffAndRecordsNothing(self) -> None:
        service, reactor = pool(workers=1)
        reactor.failure = OSError(errno.EMFILE, "Too many open files")
        logged = captureLog(self)
        service.startService()
        self.assertEqual((service.workers, service.spare), ({}, None))
        delays = []
        for _ in range(4):
            call = service._restarts[1]
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(call.getTime() - reactor.seconds())
        self.assertEqual(delays, [0.0, BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST])
        self.assertEqual((service.workers, service.spare), ({}, None))
        lines = [e for e in logged if "could not be started" in e.get("log_format", "")]
        mine = [e for e in lines if e["label"] == "worker 1"]
        self.assertEqual(len(mine), 5)  # one line per attempt, no traceback
        self.assertNotIn("log_failure", mine[0])
        self.assertIn("Too many open files", mine[0]["why"])
        reactor.failure = None  # the descriptors are back
        reactor.advance(BACKOFF_MAX)
        self.assertEqual(list(service.workers), [1])
        self.assertIsNotNone(service.spare)
        self.assertEqual(timers(service), [])

    def test_quickDeathsBackOffAndAHealthyRunResets(self) -> None:
        service, reactor = pool(workers=1)
        service.startService()
        delays = []
        for _ in range(3):
            service.workers[1].transport.end(Failure(ProcessTerminated(signal=9)))
            [call] = timers(service)
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(call.getTime() - reactor.seconds())
        self.assertEqual(delays, [0.0, BACKOFF_FIRST, 2 * BACKOFF_FIRST])
        service.workers[1].childDataReceived(1, encode(Load(0, 100)))  # it serves
        reactor.advance(60)
        service.workers[1].transport.end(Failure(ProcessTerminated(signal=9)))
        [call] = timers(service)
        self.assertEqual(call.getTime(), reactor.seconds())

    def test_aWorkerThatDiesBeforeItServesFailedQuicklyHoweverLongItsStart(self) -> None:
        """
        On a loaded machine a new worker's Python start can take longer than
        HEALTHY_AFTER: one that dies before its first load report (it never
        served) still backs off; what counts is the time it served.
        """
        service, reactor = pool(workers=1)
        service.startService()
        delays = []
        for _ in range(3):
            worker = service.workers[1]
            reactor.advance(60)  # a long start ...
            worker.transport.end(Failure(ProcessTerminated(exitCode=1)))  # ... and no report
            [call] = timers(service)
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(call.getTime() - reactor.seconds())
        self.assertEqual(delays, [0.0, BACKOFF_FIRST, 2 * BACKOFF_FIRST])
        worker = service.workers[1]
        worker.childDataReceived(1, encode(Load(0, 100)))
        reactor.advance(4)  # served, but not long enough
        worker.transport.end(Failure(ProcessTerminated(exitCode=1)))
        [call] = timers(service)
        self.assertEqual(call.getTime() - reactor.seconds(), 4 * BACKOFF_FIRST)


class ExitStatusTests(SynchronousTestCase):
    def test_aWorkerKilledByARealTimeSignalIsReplaced(self) -> None:
        """Signal 35 (SIGRTMIN+1 with glibc) has no name in the signal module."""
        service, reactor = pool()
        logged = captureLog(self)
        service.startService()
        one, _, spare = reactor.processes
        one.end(Failure(ProcessTerminated(signal=signal.SIGRTMIN + 1)))
        self.assertTrue(one.proto.ended.called)
        reactor.advance(0)
        self.assertIs(service.workers[1], spare.proto)
        [line] = [e for e in logged if "after" in e.get("log_format", "")]
        self.assertEqual(line["status"], f"killed by signal {signal.SIGRTMIN + 1} (SIGRTMIN+1)")
        self.assertEqual(
            exitStatus(Failure(ProcessTerminated(signal=9))), "killed by signal 9 (SIGKILL)"
        )
        self.assertEqual(exitStatus(Failure(ProcessTerminated(signal=99))), "killed by signal 99")

    def test_aPoolThatFailsToHandleAnEndStillSeesItEnd(self) -> None:
        """An error in the pool's C{workerEnded} is logged; C{ended} fires anyway."""

        class Broken:
            reactor = Clock()

            def workerLoad(self, worker: WorkerProcess, count: int) -> None:
                pass

            def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
                raise RuntimeError("broken")

        worker = WorkerProcess(Broken(), 1)
        worker.processEnded(Failure(ProcessDone(0)))
        self.assertIsNone(self.successResultOf(worker.ended))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class WorkerCommandTests(SynchronousTestCase):
    def test_aWorkerImportsNothingFromTheMastersWorkingDirectory(self) -> None:
        """
        A real worker process, spawned as the master spawns it, in a directory
        holding planted C{timerserver} and C{twisted} packages (it ends at
        once: its standard input is empty).
        """
        import os
        import subprocess
        import sys

        spawned: list[tuple[Any, ...]] = []
        # An empty entry in PYTHONPATH (PYTHONPATH=$PYTHONPATH:/x) is the working directory too.
        self.patch(os, "environ", {**os.environ, "PYTHONPATH": os.pathsep + "/nonexistent"})
        service, reactor = pool(workers=1)
        reactor.spawnProcess = lambda proto, *args, **kwargs: spawned.append((args, kwargs))
        service._start("worker 1", 1, lambda: None)
        [((executable, args), kwargs)] = spawned
        self.assertEqual(executable, sys.executable)
        cwd = self.mktemp()
        marker = os.path.abspath(os.path.join(cwd, "planted-ran"))
        for package in ("timerserver", "twisted"):
            os.makedirs(os.path.join(cwd, package))
            with open(os.path.join(cwd, package, "__init__.py"), "w") as f:
                f.write(f"open({marker!r}, 'a').write({package!r})\n")
        done = subprocess.run(
            args,
            cwd=cwd,
            env=kwargs["env"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        planted = Path(marker).read_text() if os.path.exists(marker) else ""
        self.assertEqual(planted, "")
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))


class StopTests(SynchronousTestCase):
    def test_sumsTheWorkersStopFigures(self) -> None:
        service, reactor = pool()
        service.startService()
        d = service.stopService()
        one, two, spare = reactor.processes
        for process, closed in zip((one, two), (3, 4), strict=True):
            self.assertEqual(process.signals, ["TERM"])
            process.proto.childDataReceived(1, encode(StopFigures(closed, closed + 1, 1)))
            process.end()
        self.assertNoResult(d)  # the spare is waited for too
        self.assertEqual(spare.signals, ["TERM"])
        spare.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            service.stopFigures,
            {"closed": 7, "cancelled": 9, "skipped": 2, "workers": 2, "unreported": 0},
        )
        self.assertEqual(timers(service), [])

    def test_wedgedWorkersAreKilledAndTheStopEndsByItsDeadline(self) -> None:
        service, reactor = pool(shutdownTimeout=5.0)
        service.startService()
        stuck, gone, spare = reactor.processes
        d = service.stopService()
        gone.end()
        spare.end()
        reactor.advance(5.0 + KILL_AFTER)
        self.assertEqual(stuck.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        reactor.advance(GIVE_UP_AFTER - KILL_AFTER)  # even a kill that did not end it
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(service.stopFigures["unreported"], 2)  # type: ignore[index]
        self.assertLess(5.0 + GIVE_UP_AFTER, 5.0 + 5.0)

    def test_stopWithNoWorkerRunning(self) -> None:
        """Every worker in back-off, or never spawned: the stop ends at once."""
        service, reactor = pool()
        reactor.failure = OSError(errno.ENOMEM, "Cannot allocate memory")
        service.startService()
        d = service.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(timers(service), [])

    def test_noRestartWhileStopping(self) -> None:
        service, reactor = pool(workers=1)
        service.startService()
        service.stopService()
        for process in reactor.processes:
            process.end(Failure(ProcessTerminated(signal=15)))
        self.assertEqual(len(reactor.processes), 2)  # the worker and the spare, no other
        self.assertEqual(timers(service), [])

    def test_aStopSignalWhileStoppingIsNoWarning(self) -> None:
        """
        Ctrl-C or C{kill -- -PGID} signal every process: a worker that dies of
        the stop signal did what stopping asked; another death is a warning.
        """
        service, reactor = pool(workers=2)
        service.startService()
        logged = captureLog(self)
        service.stopService()
        one, two, spare = reactor.processes
        one.end(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        spare.end(Failure(ProcessTerminated(signal=signal.SIGINT)))
        two.end(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        levels = [
            (e["log_level"].name, e["status"])
            for e in logged
            if "while stopping" in e["log_format"]
        ]
        self.assertEqual(
            levels,
            [
                ("info", "killed by signal 15 (SIGTERM)"),
                ("info", "killed by signal 2 (SIGINT)"),
                ("warn", "killed by signal 9 (SIGKILL)"),
            ],
        )


class WorkerOutputTests(SynchronousTestCase):
    def worker(self) -> tuple[WorkerProcess, list[dict[str, Any]]]:
        service, _ = pool(workers=1)
        service.startService()
        logged = captureLog(self)
        return service.workers[1], logged

    def test_logEventsAreReEmittedWithTheWorkersNumber(self) -> None:
        worker, logged = self.worker()
        worker.childDataReceived(1, encode(LogEvent("warn", "hello {not a field}"))[:10])
        worker.childDataReceived(1, encode(LogEvent("warn", "hello {not a field}"))[10:])
        [event] = logged
        self.assertEqual(event["text"], "hello {not a field}")
        self.assertEqual((event["worker"], event["log_level"].name), (1, "warn"))

    def test_malformedMessagesAreLoggedAFewTimesAndIgnored(self) -> None:
        worker, logged = self.worker()
        for line in (b"not json", b"[1]", b'{"type": "stats-answer", "id": "x", "stats": {}}'):
            worker.childDataReceived(1, line + b"\n")
        worker.childDataReceived(1, encode(Configure(CONFIG, 1, 3)))  # only the master
        worker.childDataReceived(1, b"\xff\xfe\n" * 50)
        self.assertEqual(worker.malformed, 54)
        self.assertEqual(len(logged), MALFORMED_LOGGED)
        self.assertIsNone(worker.lastStats)
        worker.childDataReceived(1, encode(StopFigures(1, 2, 3)))  # and it still listens
        self.assertEqual(worker.stopFigures, StopFigures(1, 2, 3))

    def test_deeplyNestedJSONIsMalformedAndTheWorkerStillHeard(self) -> None:
        worker, logged = self.worker()
        worker.childDataReceived(1, b"[" * 100_000 + b"\n")
        worker.childDataReceived(1, encode(StopFigures(1, 2, 3)))
        self.assertEqual(worker.malformed, 1)
        self.assertEqual(len(logged), 1)
        self.assertIn("malformed message ignored", logged[0]["log_format"])
        self.assertEqual(worker.stopFigures, StopFigures(1, 2, 3))

    def test_statsOfAnotherShapeAreMalformedAndNotKept(self) -> None:
        """They are ignored, the request is over, and the sums never see them."""
        service, reactor = pool(workers=1)
        service.startService()
        logged = captureLog(self)
        process = service.workers[1].transport
        d = service.metricsSource()
        [request] = process.messages()[1:]
        process.proto.childDataReceived(1, encode(StatsAnswer(request.id, {"accepted": 4})))
        self.successResultOf(d)
        d = service.metricsSource()
        for _ in range(MALFORMED_LOGGED + 5):
            request = process.messages()[-1]
            bad = StatsAnswer(request.id, {"lateness_counts": [1, 2, 3]})
            process.proto.childDataReceived(1, encode(bad))
            total, _ = self.successResultOf(d)  # answered at once, as not in time
            self.assertEqual((total["accepted"], total["workers_up"]), (4, {"1": 0}))
            reactor.advance(1)
            d = service.metricsSource()  # and asked again
        self.assertEqual(service.workers[1].lastStats, {"accepted": 4})
        self.assertEqual(
            len([e for e in logged if "malformed" in e["log_format"]]), MALFORMED_LOGGED
        )
        process.end(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(service.figures.retired["accepted"], 4)
        reactor.advance(0)
        d = service.metricsSource()
        service.workers[1].transport.proto.childDataReceived(1, encode(StatsAnswer(1, {})))
        total, _ = self.successResultOf(d)
        self.assertEqual((total["accepted"], total["workers_up"]), (4, {"1": 1}))

    def test_linesOverTheBoundAreDroppedAndCounted(self) -> None:
        worker, logged = self.worker()
        chunk = b"x" * 65536
        for _ in range(MAX_LINE // len(chunk) * 3):  # a line of 768 KiB, no end yet
            worker.childDataReceived(1, chunk)
            self.assertLessEqual(len(worker.buffers[1]), MAX_LINE + len(chunk))
        worker.childDataReceived(1, b"tail\n" + encode(StopFigures(1, 2, 3)))
        worker.childDataReceived(2, b"e" * (MAX_LINE + 1) + b"\nshort error\n")
        self.assertEqual(worker.linesDropped, 2)
        self.assertEqual(worker.stopFigures, StopFigures(1, 2, 3))
        self.assertEqual([e["text"] for e in logged], ["short error"])

    def test_deadline(self) -> None:
        """A scrape's Deferred never errs, whatever the worker does."""
        worker, _ = self.worker()
        d = worker.askStats(1.0)
        worker.processEnded(Failure(ProcessDone(0)))
        self.assertIsNone(self.successResultOf(d))
        self.assertIsInstance(d, defer.Deferred)


class SteeringTests(SynchronousTestCase):
    """Workers' L{Load} reports steer new connections toward the emptier ones."""

    def pool(self, workers: int = 2) -> tuple[WorkerPoolService, Any, list[list[int]]]:
        service, reactor = pool(workers)
        attached: list[list[int]] = []

        def attachTo(shares: list[int]) -> bool:
            attached.append(shares)
            return True

        service.steering.attachTo = attachTo
        service.startService()
        return service, reactor, attached

    def load(self, process: FakeProcess, count: int, capacity: int | None = None) -> None:
        process.proto.childDataReceived(1, encode(Load(count, capacity)))

    def test_aFullWorkerGetsNoNewConnections(self) -> None:
        """
        Worker 1 at its open-file limit holds few connections, the fewest:
        while worker 2 has room, worker 1 gets none; once it has room again,
        it gets its share.
        """
        service, reactor, attached = self.pool()
        one, two, _ = reactor.processes
        reactor.advance(STEER_INTERVAL)
        self.load(one, 2, 0)
        self.load(two, 100, 960)
        self.assertEqual(service.steering.capacities, [0, 960])
        self.assertEqual(attached[-1], [0, 1000])
        reactor.advance(STEER_INTERVAL)
        self.load(one, 2, 900)
        self.assertEqual(attached[-1], [953, 47])  # 98 + 5.1 : 0 + 5.1 (the floor)
        reactor.advance(STEER_INTERVAL)
        one.proto.childDataReceived(1, b'{"type":"load","open":2}\n')  # capacity not said
        self.assertEqual(service.steering.capacities, [None, 960])

    def test_loadReportsSteer(self) -> None:
        service, reactor, attached = self.pool()
        one, two, _ = reactor.processes
        self.assertEqual(attached[-1], [500, 500])  # both started, neither serves yet
        self.load(one, 0)  # first reports: at once
        self.load(two, 0)
        self.assertEqual(attached[-2:], [[1000, 0], [500, 500]])
        reactor.advance(STEER_INTERVAL)
        self.load(one, 900)
        self.load(two, 700)  # too soon after the last: the next report decides
        self.assertEqual(service.steering.counts, [900, 700])
        self.assertEqual(attached[-1], [45, 955])  # 0 + 45 : 900 + 45
        reactor.advance(STEER_INTERVAL)
        self.load(one, 900)
        self.assertEqual(attached[-1], [222, 778])  # 0 + 80 : 200 + 80
        self.assertEqual(timers(service), [])  # the master keeps no timer for it

    def test_aDeadWorkersSlotIsSteeredToItsReplacement(self) -> None:
        service, reactor, attached = self.pool()
        one, two, spare = reactor.processes
        reactor.advance(STEER_INTERVAL)
        self.load(one, 5000)
        reactor.advance(STEER_INTERVAL)
        self.load(two, 5000)
        self.assertEqual(attached[-1], [500, 500])
        one.end(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(attached[-1], [0, 1000])  # until the spare takes its socket
        reactor.advance(0)
        self.assertIs(service.workers[1], spare.proto)
        self.assertEqual(spare.messages(), [Configure(CONFIG, 1, 3)])
        # Configured, but not serving yet (stopped, or still starting): none.
        for _ in range(6):
            reactor.advance(STEER_INTERVAL)
            self.load(two, 5000)
            self.assertEqual(attached[-1], [0, 1000])
        self.load(spare, 0)  # it serves: steered to at once
        self.assertEqual(attached[-1], [955, 45])  # 5,000 + 250 : 0 + 250
        self.load(one, 7)  # a dead worker's last words change nothing
        self.assertEqual(service.steering.counts, [0, 5000])

    def test_theSpareAndAStoppingPoolAreNotSteeredBy(self) -> None:
        service, reactor, attached = self.pool()
        one, _, spare = reactor.processes
        reactor.advance(STEER_INTERVAL)
        self.load(spare, 100)  # not configured: it serves nothing
        self.assertEqual(service.steering.counts, [None, None])
        service.stopService()
        before = list(attached)
        reactor.advance(STEER_INTERVAL)
        self.load(one, 100)
        one.end(Failure(ProcessTerminated(signal=15)))
        self.assertEqual(attached, before)

    def test_withoutSocketsOfItsOwnTheHashStays(self) -> None:
        """unix: and systemd: endpoints: one shared socket, one line, no error."""
        service, reactor = pool()
        logged = captureLog(self)
        service.startService()
        one, two, _ = reactor.processes
        for count in (10, 1000, 5):
            reactor.advance(STEER_INTERVAL)
            self.load(one, count)
            self.load(two, 0)
        lines = [e for e in logged if "not steered" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertTrue(service.steering.refused)
