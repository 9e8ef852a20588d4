"""
One worker process of C{twistd timerserver --workers N}: the same server on
a listening socket its master hands it, run as
C{python -m timerserver.worker --number K --fd 3 --family INET -- OPTIONS}.

The master talks to it over three pipes:

 - standard input: one command a line (C{stats}: reply with the counters);
   end of file means the master is gone, and the worker shuts down
   gracefully, so that no worker outlives its master;
 - standard output: one JSON object a line, either a log event
   (C{twisted.logger}'s JSON form) or a reply (C{{"stats": {...}}});
 - standard error: anything else (a crash before logging started).

SIGTERM and SIGINT run the graceful shutdown, once, however many arrive.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from typing import Any, TextIO

from twisted.internet import defer, stdio
from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage

from timerserver.clock import useMonotonicTime
from timerserver.endpoint import endpointKind, layered, serverEndpoint, tlsContextFactory
from timerserver.service import TimerServerService
from timerserver.tap import Options, makeServer

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


class Control(LineOnlyReceiver):
    """The master's commands on standard input."""

    delimiter = b"\n"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"stats":
            self.worker.reply({"stats": self.worker.stats()})

    def connectionLost(self, reason: object = None) -> None:
        self.worker.stop()  # the master is gone


class Worker:
    """Runs one server until told to stop, then exits."""

    _log = Logger()

    def __init__(self, reactor: Any, server: TimerServerService, out: TextIO) -> None:
        self.reactor = reactor
        self.server = server
        self.out = out
        self.stopping = False

    def stats(self) -> dict[str, Any]:
        """What the master's metrics sum: this worker's L{snapshot}."""
        if self.server.monitor is None:
            return {}
        from timerserver.metrics import snapshot

        return snapshot(self.server.factory, self.server.monitor)

    def reply(self, message: dict[str, Any]) -> None:
        """Write C{message} to the master as one JSON line."""
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def stop(self) -> None:
        """Stop the reactor (once): the graceful shutdown runs before it stops."""
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()

    def run(self) -> None:
        """Start the server, take commands from the master, run until stopped."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.reactor.callFromThread(self.stop))
        self.server.privilegedStartService()
        self.server.startService()  # type: ignore[no-untyped-call]
        self.reactor.addSystemEventTrigger("before", "shutdown", self.server.stopService)
        stdio.StandardIO(Control(self), stdout=_devnull(), reactor=self.reactor)  # type: ignore[call-arg]
        self.reactor.run(installSignalHandlers=False)


def _devnull() -> int:
    import os

    return os.open(os.devnull, os.O_WRONLY)


def main(argv: list[str]) -> None:
    """Run worker C{--number} on descriptor C{--fd} with the server options after C{--}."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m timerserver.worker")
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    parser.add_argument("options", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    out = sys.stdout  # replies and log events share it, one JSON object a line
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(out, "")], redirectStandardIO=False)
    from twisted.internet import reactor

    useMonotonicTime(reactor)
    try:
        options = WorkerOptions(reactor=reactor)
        options.parseOptions([a for a in args.options if a != "--"])
        endpoint = AdoptedEndpoint(reactor, args.fd, FAMILIES[args.family], options)
        server = makeServer(options, reactor, endpoint)
    except usage.UsageError as e:
        # The master checked the same options: something changed since
        # (a certificate removed, say).  One line, and the master backs off.
        sys.stderr.write(f"{e}\n")
        sys.exit(1)
    Worker(reactor, server, out).run()


if __name__ == "__main__":
    main(sys.argv[1:])
