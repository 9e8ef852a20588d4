"""
One worker process of C{twistd timerserver --workers N}: the same server on
a listening socket its master hands it, run as
C{python -m timerserver.worker --number K --fd 3 --config JSON}, where JSON
is the master's L{ServerConfig} as data.

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
import sys
from typing import Any, TextIO

from twisted.internet import stdio
from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage

from timerserver.clock import useMonotonicTime
from timerserver.config import ServerConfig
from timerserver.service import TimerServerService, buildServer


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

        return snapshot(self.server.factory, self.server.monitor, self.server.admission)

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
    parser.add_argument("--config", required=True)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    args = parser.parse_args(argv)
    if args.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    out = sys.stdout  # replies and log events share it, one JSON object a line
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(out, "")], redirectStandardIO=False)
    from twisted.internet import reactor

    useMonotonicTime(reactor)
    try:
        config = ServerConfig.fromData(json.loads(args.config))
        server = buildServer(config, reactor, fd=args.fd)
    except (usage.UsageError, ValueError) as e:
        # The master checked the same options: something changed since
        # (a certificate removed, say).  One line, and the master backs off.
        sys.stderr.write(f"{e}\n")
        sys.exit(1)
    Worker(reactor, server, out).run()


if __name__ == "__main__":
    main(sys.argv[1:])
