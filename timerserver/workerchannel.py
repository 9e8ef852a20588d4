"""
L{OutChannel}: a worker's messages to its master, on a non-blocking pipe
with a bounded buffer, so that a master that stops reading (SIGSTOP,
swapped out, busy) never stops a worker.

A blocking pipe holds 64 KiB: past that, every write of a worker waits for
the master, and so do all of its clients.  Here a message is written at
once if the pipe takes it, and otherwise queued in user space, written as
the pipe drains.  The queue holds L{LIMIT} bytes (1 MiB): at the burst rate
of the connection-event log (20 lines per 10 s) and a few hundred bytes a
line, that is several minutes of a stopped master before anything is
dropped, and it is a small fraction of what 10,000 connections' buffers
take.  Log lines may fill L{LOG_LIMIT} of it (768 KiB); beyond that they
are dropped and counted, and the count is logged once the queue drains.
The rest is kept for replies (stats answers, stop figures), which are only
dropped when there is no room at all.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IWriteDescriptor
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from zope.interface import implementer

from timerserver.messages import LogEvent, Message, encode

LIMIT = 1 << 20
LOG_LIMIT = 768 * 1024
CHUNK = 64 * 1024


@implementer(IWriteDescriptor)
class OutChannel:
    """
    Writes messages to descriptor C{fd} without ever blocking.

    @ivar dropped: log lines dropped since the last time the queue drained.
    @ivar droppedTotal: log lines dropped since the worker started.
    """

    _log = Logger()

    def __init__(
        self, reactor: IReactorFDSet, fd: int, limit: int = LIMIT, logLimit: int = LOG_LIMIT
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.limit = limit
        self.logLimit = logLimit
        self.buffer = bytearray()
        self.dropped = 0
        self.droppedTotal = 0
        self.closed = False
        self._writing = False
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "worker channel"

    def send(self, message: Message, droppable: bool = False) -> bool:
        """
        Queue C{message} and write what the pipe takes now.  A log line
        (C{droppable}) is dropped beyond L{LOG_LIMIT}, anything beyond
        L{LIMIT}.  Whether it was queued.
        """
        if self.closed:
            return False
        data = encode(message)
        if len(self.buffer) + len(data) > (self.logLimit if droppable else self.limit):
            if droppable:
                self.dropped += 1
                self.droppedTotal += 1
            return False
        self.buffer += data
        if not self._writing:
            self.doWrite()
        return True

    def doWrite(self) -> None:
        """Write what the pipe takes; wait for it to drain if anything is left."""
        while self.buffer:
            try:
                written = os.write(self.fd, self.buffer[:CHUNK])
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the master is gone; stdin's end stops the worker
                self.closed = True
                self.buffer.clear()
                break
            del self.buffer[:written]
        if self.buffer and not self._writing:
            self._writing = True
            self.reactor.addWriter(self)
        elif not self.buffer and self._writing:
            self._writing = False
            self.reactor.removeWriter(self)
        if not self.buffer and self.dropped and not self.closed:
            dropped, self.dropped = self.dropped, 0
            self._log.warn(
                "dropped {count} log lines while the master was not reading", count=dropped
            )

    def connectionLost(self, reason: object) -> None:
        self.closed = True
        self.buffer.clear()

    def drain(self, timeout: float) -> bool:
        """
        Before the worker exits: wait up to C{timeout} seconds for the queue
        to be written (the reactor has stopped).  Whether everything was.
        """
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while self.buffer and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return False
            self.doWrite()
        return not self.buffer


@implementer(ILogObserver)
class ChannelLogObserver:
    """A worker's log: each event formatted and sent as a L{LogEvent} (droppable)."""

    def __init__(self, channel: OutChannel) -> None:
        self.channel = channel

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure")
        try:
            traceback = failure.getTraceback() if failure is not None else None
        except Exception:
            traceback = repr(failure)
        self.channel.send(
            LogEvent(
                level.name if isinstance(level, type(LogLevel.info)) else "info",
                formatEvent(event),
                traceback,
            ),
            droppable=True,
        )
