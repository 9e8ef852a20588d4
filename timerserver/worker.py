"""
One worker process of C{twistd timerserver --workers N}: the same server on
a listening socket its master hands it, run as
C{python -m timerserver.worker --fds 3,4 --family INET}.

The master talks to it over three pipes, in the messages of
L{timerserver.messages}, one a line:

 - standard input: L{Configure} first (the server's configuration, the
   worker's number and which of the listening descriptors it holds is its
   own: until it comes, the worker serves nothing, which is how the master
   keeps a spare ready), then L{StatsRequest}s; end of file
   means the master is gone, and the worker shuts down gracefully, so that
   no worker outlives its master;
 - standard output (an L{OutChannel}: non-blocking, bounded): L{LogEvent}s,
   L{StatsAnswer}s and, last, L{StopFigures};
 - standard error: anything else (a crash before logging started, a bad
   configuration), one line.

SIGTERM and SIGINT run the graceful shutdown, once, however many arrive.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import defer, stdio
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage

from timerserver.clock import useMonotonicTime
from timerserver.endpoint import endpointKind, layered, serverEndpoint, tlsContextFactory
from timerserver.messages import (
    MAX_LINE,
    Configure,
    MalformedMessage,
    StatsAnswer,
    StatsRequest,
    StopFigures,
    decode,
)
from timerserver.service import TimerServerService
from timerserver.tap import Options, makeServer
from timerserver.workerchannel import ChannelLogObserver, OutChannel

FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


class AdoptedEndpoint:
    """
    Listens on an inherited listening socket with the layers C{--port} names
    (PROXY header, TLS), as L{timerserver.endpoint.serverEndpoint} does.
    """

    def __init__(self, reactor: Any, fd: int, family: int, options: Options) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family
        layers = endpointKind(options["port"]).split(":")
        self.haproxy = "haproxy" in layers
        self.tls = (
            tlsContextFactory(serverEndpoint(reactor, options["port"], options["backlog"]))
            if "ssl" in layers
            else None
        )

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        """Adopt the listening socket with C{factory} wrapped as C{--port} says."""
        wrapped = layered(factory, self.tls, self.haproxy)
        return defer.execute(self.reactor.adoptStreamPort, self.fd, self.family, wrapped)


class WorkerOptions(Options):
    """The server's options, without listening on C{--port} (the master did)."""

    def makeEndpoint(self) -> Any:
        return None

    def makeMetricsEndpoint(self) -> Any:
        return None  # the master serves the metrics; a worker only counts


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
        """Act on one message; a malformed or unexpected one is logged and ignored."""
        try:
            message = decode(line)
        except MalformedMessage as e:
            self._log.error("malformed message from the master ignored: {why}", why=str(e))
            return
        if isinstance(message, Configure):
            self.worker.configure(message.config, message.number, message.fd)
        elif isinstance(message, StatsRequest):
            self.worker.answer(message.id)
        else:
            self._log.error("unexpected {kind} message from the master ignored", kind=message.TYPE)

    def connectionLost(self, reason: object = None) -> None:
        self.worker.stop()  # the master is gone


STATS_PERIOD = 1.0
"""A snapshot (and its reading of /proc/self) is reused for this long."""


class Worker:
    """Waits for its configuration, runs one server until told to stop, then exits."""

    _log = Logger()

    def __init__(self, reactor: Any, channel: OutChannel, fds: list[int], family: int) -> None:
        self.reactor = reactor
        self.channel = channel
        self.fds = fds
        self.family = family
        self.number = 0
        self.server: TimerServerService | None = None
        self.stopping = False
        self.exitCode = 0
        self._snapshot: tuple[float, dict[str, Any]] | None = None

    def configure(self, config: dict[str, Any], number: int, fd: int) -> None:
        """
        Become worker C{number}: build the server from C{config}
        (C{{"argv": [...]}}) on descriptor C{fd}, close the other listening
        descriptors, and start serving.  Once.
        """
        if self.server is not None or self.stopping:
            self._log.error("a second configuration from the master ignored")
            return
        argv = config.get("argv")
        try:
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise usage.UsageError(f"configuration without an argv list: {config!r}")
            if fd not in self.fds:
                raise usage.UsageError(f"descriptor {fd} is not one of {self.fds}")
            self.number = number
            for other in set(self.fds) - {fd}:
                os.close(other)
            self.fds = [fd]
            options = WorkerOptions(reactor=self.reactor)
            options.parseOptions(argv)
            endpoint = AdoptedEndpoint(self.reactor, fd, self.family, options)
            server = makeServer(options, self.reactor, endpoint)
            server.privilegedStartService()
        except (usage.UsageError, SystemExit) as e:
            # The master checked the same options: something changed since
            # (a certificate removed, say).  One line, and the master backs off.
            sys.stderr.write(f"{e}\n")
            sys.stderr.flush()
            self.exitCode = 1
            self.stop()
            return
        self.server = server
        server.startService()  # type: ignore[no-untyped-call]

    def stats(self) -> dict[str, Any]:
        """What the master's metrics sum: this worker's L{snapshot}, at most one a period."""
        from timerserver.metrics import snapshot

        server = self.server
        if server is None or server.monitor is None:
            return {"log_lines_dropped": self.channel.droppedTotal}
        now = self.reactor.seconds()
        if self._snapshot is None or now - self._snapshot[0] >= STATS_PERIOD:
            self._snapshot = (now, snapshot(server.factory, server.monitor))
        return {**self._snapshot[1], "log_lines_dropped": self.channel.droppedTotal}

    def answer(self, id: int) -> None:
        """Answer the master's stats request C{id}."""
        self.channel.send(StatsAnswer(id, self.stats()))

    def stop(self) -> None:
        """Stop the reactor (once): the graceful shutdown runs before it stops."""
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()

    def _shutdown(self) -> defer.Deferred[None] | None:
        """The server's graceful shutdown, then its figures to the master."""
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
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
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
    worker = Worker(reactor, channel, fds, FAMILIES[args.family])
    sys.exit(worker.run())


if __name__ == "__main__":
    main(sys.argv[1:])
