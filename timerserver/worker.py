"""
One worker process of C{twistd timerserver --workers N}: the same server on
a listening socket its master hands it, run as L{main} with C{--fds 3,4}
(by the master's L{timerserver.supervisor.WORKER_MAIN}, which keeps the
working directory off C{sys.path}; by hand, C{python -m timerserver.worker}).

The master talks to it over three pipes, in the messages of
L{timerserver.messages}, one a line:

 - standard input (a L{Control}): L{Configure} first (the server's
   configuration, the worker's number and which of the listening
   descriptors it holds is its own: until it comes, the worker serves
   nothing, which is how the master keeps a spare ready), then
   L{StatsRequest}s; end of file (or a read error) means the master is
   gone, and the worker shuts down gracefully, so that no worker outlives
   its master;
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

from twisted.application.service import IService
from twisted.internet import defer, stdio, task
from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage

from timerserver.clock import useMonotonicTime
from timerserver.config import FILE_RESERVE, ServerConfig
from timerserver.messages import MAX_LOAD, Load, StopFigures
from timerserver.outofmemory import ExitOnMemoryError
from timerserver.service import TimerServerService, buildServer
from timerserver.snapshots import processFigures
from timerserver.workerchannel import ChannelLogObserver, OutChannel
from timerserver.workercontrol import Control

LOAD_PERIOD = 0.5
"""Seconds between two L{Load} reports."""
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
        self._reporting: task.LoopingCall | None = None
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
        service: IService = server  # Twisted's Service.startService is untyped; IService's is not
        service.startService()
        self._reporting = task.LoopingCall(self.reportLoad)
        self._reporting.clock = self.reactor
        self._reporting.start(LOAD_PERIOD, now=True)

    def reportLoad(self) -> None:
        """
        Tell the master how many connections this worker holds and how many it
        can hold now (L{capacity}): counts, not a snapshot, ahead of any log
        lines queued (the master judges by them whether the worker runs),
        replacing one not yet written (the next follows within L{LOAD_PERIOD}).
        """
        server = self.server
        if server is not None and server.running:
            admission = server.admission
            room = capacity(admission.maxConnections)
            load = Load(min(max(0, admission.open), MAX_LOAD - 1), room)
            self.channel.report(load)

    def _importMetrics(self) -> None:
        """
        Import what a stats answer needs (prometheus-client) now, while the
        worker has descriptors to spare: imported at the first scrape, it may
        find its open-file limit reached (lowered by C{prlimit}, or every
        descriptor taken by clients), and fail.
        """
        try:
            processFigures()  # prometheus-client's collector, and a first reading
        except Exception:
            self._log.failure("the worker's metrics could not be loaded")

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
        # stdio's POSIX class takes stdout; type checkers read its Windows one.
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
    globalLogBeginner.beginLoggingTo(
        [ChannelLogObserver(channel), ExitOnMemoryError()], redirectStandardIO=False
    )
    useMonotonicTime(reactor)
    fds = [int(fd) for fd in args.fds.split(",")]
    worker = Worker(reactor, channel, fds)
    sys.exit(worker.run())


if __name__ == "__main__":
    main(sys.argv[1:])
