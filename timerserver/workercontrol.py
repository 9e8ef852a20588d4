"""
A worker's control channel: its master's messages on standard input, one a
line (L{timerserver.messages}), acted on and answered (L{Control}).

 - L{Configure} makes the worker serve (L{Served.configure}); a
   L{StatsRequest} is answered with the worker's figures, at most one
   L{snapshot<snapshots.snapshot>} taken a L{STATS_PERIOD}, or, if they cannot be had, with the
   last taken, so that the master's sums do not go back;
 - a malformed or unexpected message is logged and ignored; a message whose
   handling fails is logged (at most once a L{COMPLAINT_PERIOD}) and the
   worker serves on: the failure of one message never ends the channel, nor
   the worker (but a configuration that fails ends it, as a bad one does);
 - the end of standard input (or a read error) means the master is gone,
   and the worker stops.  The channel lost to an error of the worker's own
   does not say so: the worker watches its parent instead.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as Structural

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from timerserver import snapshots
from timerserver.messages import (
    MAX_LINE,
    Configure,
    MalformedMessage,
    StatsAnswer,
    StatsRequest,
    decode,
)
from timerserver.service import TimerServerService
from timerserver.workerchannel import OutChannel

STATS_PERIOD = 1.0
"""A snapshot (and its reading of /proc/self) is reused for this long."""
COMPLAINT_PERIOD = 60.0
"""Seconds between two log lines about the master's messages failing (the rest are counted)."""


class Served(Structural):
    """What the control channel drives (L{timerserver.worker.Worker})."""

    reactor: Any
    channel: OutChannel
    """Where answers go: the worker's standard output."""
    server: TimerServerService | None
    """The server, once configured."""
    exitCode: int

    def configure(self, config: dict[str, Any], number: int, fd: int) -> None:
        """Become worker C{number}: serve on descriptor C{fd} as C{config} says."""

    def stop(self) -> None:
        """Stop (once), gracefully."""

    def watchParent(self) -> None:
        """Stop once the master is gone, seen as this process's parent changing."""


class Control(Protocol):
    """The master's messages on standard input, one a line: acted on, and answered."""

    _log = Logger()

    def __init__(self, worker: Served) -> None:
        self.worker = worker
        self.buffer = b""
        self.discarding = False
        self._snapshot: tuple[float, snapshots.Snapshot] | None = None
        self._complained: float | None = None
        self._failures = 0
        """Failures of the master's messages since the last one logged."""

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
        ignored, and an error in acting on one is complained about
        (L{failed}), never the channel's end.
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
                self.answer(message.id)
            else:
                self._log.error(
                    "unexpected {kind} message from the master ignored", kind=message.TYPE
                )
        except Exception:
            self.failed(message)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        The end of standard input (or a read error, or the reactor's
        shutdown): the master is gone, stop.  Anything else is a bug of
        this process's, which does not say the master is gone: logged, and
        the worker serves on, until its master dies (L{Served.watchParent}).
        """
        if reason is None or reason.check(ConnectionDone, ConnectionLost):
            self.worker.stop()
        else:
            self._log.failure("the master's channel was lost to an error", reason)
            self.worker.watchParent()

    def stats(self) -> dict[str, Any]:
        """What the master's metrics sum: the worker's L{snapshots.snapshot}, one a period."""
        worker = self.worker
        server = worker.server
        if server is None or server.monitor is None:
            return {"log_lines_dropped": worker.channel.droppedTotal}
        now = worker.reactor.seconds()
        if self._snapshot is None or now - self._snapshot[0] >= STATS_PERIOD:
            figures = snapshots.snapshot(server.factory, server.monitor, server.admission)
            self._snapshot = (now, figures)
        return {**self._snapshot[1], "log_lines_dropped": worker.channel.droppedTotal}

    def answer(self, id: int) -> None:
        """
        Answer the master's stats request C{id}; if the figures cannot be
        had, with the last ones taken (none: only the log lines dropped),
        so that the master's sums do not go back and its next scrape asks
        again.
        """
        channel = self.worker.channel
        try:
            channel.send(StatsAnswer(id, self.stats()))
            return
        except Exception:
            self.complain("the worker's figures could not be taken; answering with its last")
        dropped = {"log_lines_dropped": channel.droppedTotal}
        last = self._snapshot[1] if self._snapshot is not None else {}
        try:
            channel.send(StatsAnswer(id, {**last, **dropped}))
        except Exception:  # they could not be sent either
            channel.send(StatsAnswer(id, dropped))

    def failed(self, message: object) -> None:
        """
        Acting on the master's C{message} raised (the exception is being
        handled): logged, and the worker serves on; a configuration that
        failed so ends it, as a bad one does.
        """
        kind = getattr(message, "TYPE", type(message).__name__)
        self.complain(f"a {kind} message from the master failed")
        if isinstance(message, Configure) and self.worker.server is None:
            self.worker.exitCode = 1
            self.worker.stop()

    def complain(self, what: str) -> None:
        """
        Log the exception being handled as C{what}, at most once a
        L{COMPLAINT_PERIOD}, with how many were not logged since.
        """
        self._failures += 1
        now = self.worker.reactor.seconds()
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
