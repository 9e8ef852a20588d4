"""
One worker process of C{twistd timerserver --workers N}: the same server on
a listening socket its master hands it, run as L{main} with C{--fds 3,4}
(by the master's L{timerserver.supervisor.WORKER_MAIN}, which keeps the
working directory off C{sys.path}; by hand, C{python -m timerserver.worker}).

The master talks to it over three pipes, in the messages of
L{timerserver.messages}, one a line:

 - standard input: L{Configure} first (the server's configuration, the
   worker's number and which of the listening descriptors it holds is its
   own: until it comes, the worker serves nothing, which is how the master
   keeps a spare ready), then L{StatsRequest}s; end of file (or a read
   error) means the master is gone, and the worker shuts down gracefully,
   so that no worker outlives its master.  A message whose handling fails
   is logged (at most once a L{COMPLAINT_PERIOD}) and, for a stats
   request, answered with what can be: the failure of one message never
   ends the channel, nor the worker;
 - standard output (an L{OutChannel}: non-blocking, bounded): L{LogEvent}s,
   a L{Load} every L{LOAD_PERIOD} seconds once configured (its open
   connections and L{capacity}: the master steers new connections by them),
   L{StatsAnswer}s and, last,
   L{StopFigures};
 - standard error: anything else (a crash before logging started, a bad
   configuration), one line.

SIGTERM and SIGINT run the graceful shutdown, once, however many arrive.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel, globalLogBeginner
from twisted.python import usage
from twisted.python.failure import Failure

from timerserver.clock import useMonotonicTime
from timerserver.config import FILE_RESERVE, ServerConfig
from timerserver.messages import (
    MAX_LINE,
    MAX_LOAD,
    Configure,
    Load,
    MalformedMessage,
    StatsAnswer,
    StatsRequest,
    StopFigures,
    decode,
)
from timerserver.service import TimerServerService, buildServer
from timerserver.workerchannel import ChannelLogObserver, OutChannel


class Control(Protocol):
    """The master's messages on standard input, one a line."""

    _log = Logger()

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.buffer = b""
        self.discarding = False

    def dataReceived(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            if self.discarding:
                self.discarding = False
            else:
                self.lineReceived(line)
        if len(self.buffer) > MAX_LINE:
            self._log.error("message from the master over {limit} bytes ignored", limit=MAX_LINE)
            self.buffer, self.discarding = b"", True

    def lineReceived(self, line: bytes) -> None:
        """
        Act on one message; a malformed or unexpected one is logged and
        ignored, and an error in acting on one is the worker's to report
        (L{Worker.failed}), never the channel's end.
        """
        try:
            message = decode(line)
        except Exception as e:  # MalformedMessage; anything else is a bug, still only this line
            why = str(e) if isinstance(e, MalformedMessage) else f"{type(e).__name__}: {e}"
            self._log.error("malformed message from the master ignored: {why}", why=why)
            return
        try:
            if isinstance(message, Configure):
                self.worker.configure(message.config, message.number, message.fd)
            elif isinstance(message, StatsRequest):
                self.worker.answer(message.id)
            else:
                self._log.error(
                    "unexpected {kind} message from the master ignored", kind=message.TYPE
                )
        except Exception:
            self.worker.failed(message)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        The end of standard input (or a read error, or the reactor's
        shutdown): the master is gone, stop.  Anything else is a bug of
        this process's, which does not say the master is gone: logged, and
        the worker serves on, until its master dies (L{Worker.watchParent}).
        """
        if reason is None or reason.check(ConnectionDone, ConnectionLost):
            self.worker.stop()
        else:
            self._log.failure("the master's channel was lost to an error", reason)
            self.worker.watchParent()


STATS_PERIOD = 1.0
"""A snapshot (and its reading of /proc/self) is reused for this long."""
LOAD_PERIOD = 0.5
"""Seconds between two L{Load} reports."""
COMPLAINT_PERIOD = 60.0
"""Seconds between two log lines about the master's messages failing (the rest are counted)."""
PARENT_PERIOD = 1.0
"""Seconds between two checks that the master still runs, once its channel is lost."""


class Worker:
    """Waits for its configuration, runs one server until told to stop, then exits."""

    _log = Logger()

    def __init__(self, reactor: Any, channel: OutChannel, fds: list[int]) -> None:
        self.reactor = reactor
        self.channel = channel
        self.fds = fds
        self.number = 0
        self.server: TimerServerService | None = None
        self.stopping = False
        self.exitCode = 0
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._snapshotOf: Any = None
        """L{timerserver.snapshots.snapshot}, imported at configuration with metrics on."""
        self._reporting: task.LoopingCall | None = None
        self._complained: float | None = None
        self._failures = 0
        """Failures of the master's messages since the last one logged."""
        self._parent = os.getppid()
        self._watching: task.LoopingCall | None = None

    def configure(self, config: dict[str, Any], number: int, fd: int) -> None:
        """
        Become worker C{number}: build the server from C{config} (the
        master's L{ServerConfig} as data) on descriptor C{fd}, close the other
        listening descriptors, and start serving.  Once.
        """
        if self.server is not None or self.stopping:
            self._log.error("a second configuration from the master ignored")
            return
        try:
            settings = ServerConfig.fromData(config)
            if fd not in self.fds:
                raise usage.UsageError(f"descriptor {fd} is not one of {self.fds}")
            self.number = number
            for other in set(self.fds) - {fd}:
                os.close(other)
            self.fds = [fd]
            server = buildServer(settings, self.reactor, fd=fd)
            server.privilegedStartService()
        except (usage.UsageError, ValueError, TypeError, SystemExit) as e:
            # The master checked the same options: something changed since
            # (a certificate removed, say).  One line, and the master backs off.
            sys.stderr.write(f"{e}\n")
            sys.stderr.flush()
            self.exitCode = 1
            self.stop()
            return
        self.server = server
        if server.monitor is not None:
            self._importMetrics()
        server.startService()  # type: ignore[no-untyped-call]
        self._reporting = task.LoopingCall(self.reportLoad)
        self._reporting.clock = self.reactor
        self._reporting.start(LOAD_PERIOD, now=True)

    def reportLoad(self) -> None:
        """
        Tell the master how many connections this worker holds and how many it
        can hold now (L{capacity}): counts, not a snapshot, sent as droppable
        as a log line (never waited for: the next one follows within
        L{LOAD_PERIOD}).
        """
        server = self.server
        if server is not None and server.running:
            admission = server.admission
            room = capacity(admission.maxConnections)
            load = Load(min(max(0, admission.open), MAX_LOAD - 1), room)
            self.channel.send(load, droppable=True)

    def _importMetrics(self) -> None:
        """
        Import what L{stats} needs (L{timerserver.snapshots}, prometheus-client)
        now, while the worker has descriptors to spare: imported at the
        first scrape, they may find its open-file limit reached (lowered by
        C{prlimit}, or every descriptor taken by clients), and fail.
        """
        try:
            from timerserver.snapshots import processFigures, snapshot

            processFigures()  # prometheus-client's collector, and a first reading
        except Exception:
            self._log.failure("the worker's metrics could not be loaded")
        else:
            self._snapshotOf = snapshot

    def stats(self) -> dict[str, Any]:
        """What the master's metrics sum: this worker's L{snapshot}, at most one a period."""
        server = self.server
        if server is None or server.monitor is None:
            return {"log_lines_dropped": self.channel.droppedTotal}
        snapshot = self._snapshotOf
        if snapshot is None:
            from timerserver.snapshots import snapshot
        now = self.reactor.seconds()
        if self._snapshot is None or now - self._snapshot[0] >= STATS_PERIOD:
            self._snapshot = (now, snapshot(server.factory, server.monitor, server.admission))
        return {**self._snapshot[1], "log_lines_dropped": self.channel.droppedTotal}

    def answer(self, id: int) -> None:
        """
        Answer the master's stats request C{id}; if the figures cannot be
        had, with the last ones taken (none: only the log lines dropped),
        so that the master's sums do not go back and its next scrape asks
        again.
        """
        try:
            self.channel.send(StatsAnswer(id, self.stats()))
            return
        except Exception:
            self.complain("the worker's figures could not be taken; answering with its last")
        dropped = {"log_lines_dropped": self.channel.droppedTotal}
        last = self._snapshot[1] if self._snapshot is not None else {}
        try:
            self.channel.send(StatsAnswer(id, {**last, **dropped}))
        except Exception:  # they could not be sent either
            self.channel.send(StatsAnswer(id, dropped))

    def failed(self, message: object) -> None:
        """
        Acting on the master's C{message} raised (the exception is being
        handled): logged, and the worker serves on; a configuration that
        failed so ends it, as a bad one does.
        """
        kind = getattr(message, "TYPE", type(message).__name__)
        self.complain(f"a {kind} message from the master failed")
        if isinstance(message, Configure) and self.server is None:
            self.exitCode = 1
            self.stop()

    def complain(self, what: str) -> None:
        """
        Log the exception being handled as C{what}, at most once a
        L{COMPLAINT_PERIOD}, with how many were not logged since.
        """
        self._failures += 1
        now = self.reactor.seconds()
        if self._complained is not None and now - self._complained < COMPLAINT_PERIOD:
            return
        self._complained = now
        more, self._failures = self._failures - 1, 0
        self._log.failure(
            "{what}{more}",
            what=what,
            more=f" ({more} more failures since the last logged)" if more else "",
            level=LogLevel.error,
        )

    def watchParent(self) -> None:
        """
        Stop once the master is gone, seen as this process's parent
        changing: for when its channel can no longer say so.
        """
        if self._watching is None:
            self._watching = task.LoopingCall(self._checkParent)
            self._watching.clock = self.reactor
            self._watching.start(PARENT_PERIOD, now=True)

    def _checkParent(self) -> None:
        if os.getppid() != self._parent:
            self.stop()

    def stop(self) -> None:
        """Stop the reactor (once): the graceful shutdown runs before it stops."""
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()

    def _shutdown(self) -> defer.Deferred[None] | None:
        """The server's graceful shutdown, then its figures to the master."""
        for looping in (self._reporting, self._watching):
            if looping is not None and looping.running:
                looping.stop()
        server = self.server
        if server is None or not server.running:
            return None

        def report(_: object) -> None:
            figures = server.stopStats or {}
            self.channel.send(
                StopFigures(
                    closed=int(figures.get("closed", 0)),
                    cancelled=int(figures.get("cancelled", 0)),
                    skipped=int(figures.get("skipped", 0)),
                )
            )

        return server.stopService().addCallback(report)

    def run(self) -> int:
        """Take messages from the master, run until stopped; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.reactor.callFromThread(self.stop))
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        stdio.StandardIO(Control(self), stdout=_devnull(), reactor=self.reactor)  # type: ignore[call-arg]
        self.reactor.run(installSignalHandlers=False)
        self.channel.drain(2.0)  # the stop figures and last lines, if the master reads
        return self.exitCode


def softFileLimit() -> int | None:
    """This process's soft open-file limit now (C{None}: none); a C{getrlimit} call."""
    import resource

    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def capacity(maxConnections: int | None) -> int | None:
    """
    How many connections this process can hold now: the lower of
    C{maxConnections} and its current soft open-file limit less
    L{FILE_RESERVE} (as C{--max-connections} is set by default; the limit
    may have been lowered since, by C{prlimit} say), or C{None} if neither
    bounds it.  Cheap enough for every report.
    """
    soft = softFileLimit()
    bounds = [] if maxConnections is None else [maxConnections]
    if soft is not None:
        bounds.append(soft - FILE_RESERVE)
    return min(max(0, min(bounds)), MAX_LOAD - 1) if bounds else None


def _devnull() -> int:
    return os.open(os.devnull, os.O_WRONLY)


def main(argv: list[str]) -> None:
    """
    Run a worker holding the listening descriptors C{--fds}; which one it
    serves, and how, comes from the master as the first message on standard
    input.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m timerserver.worker")
    parser.add_argument("--fds", required=True, help="listening descriptors, comma-separated")
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    args = parser.parse_args(argv)
    if args.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor

    channel = OutChannel(reactor, sys.stdout.fileno())
    sys.stdout = sys.stderr  # nothing else may write to the channel's pipe
    globalLogBeginner.beginLoggingTo([ChannelLogObserver(channel)], redirectStandardIO=False)
    useMonotonicTime(reactor)
    fds = [int(fd) for fd in args.fds.split(",")]
    worker = Worker(reactor, channel, fds)
    sys.exit(worker.run())


if __name__ == "__main__":
    main(sys.argv[1:])
