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
A load report (L{OutChannel.report}) is never queued behind them: the
channel holds the latest one only, written after the replies and before
the log lines, so that what the master reads first after a backlog shows
that the worker's reactor turns (the master takes a worker it hears no
report from for 30 s for hung).  The rest is kept for replies (stats
answers, stop figures), which are only dropped when there is no room at
all, and which are written before the log lines queued ahead of them (a
worker's stop figures do not wait behind a backlog of its log).
"""

from __future__ import annotations

import os
import select
import time
from collections import deque
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IWriteDescriptor
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from zope.interface import implementer

from timerserver.messages import Load, LogEvent, Message, encode

LIMIT = 1 << 20
LOG_LIMIT = 768 * 1024
CHUNK = 64 * 1024


@implementer(IWriteDescriptor)
class OutChannel:
    """
    Writes messages to descriptor C{fd} without ever blocking.

    @ivar dropped: log lines (L{LogEvent}s) dropped since the last time the
        queue drained.
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
        self.size = 0
        """Bytes queued, the message being written included."""
        self.dropped = 0
        self.droppedTotal = 0
        self.closed = False
        self._current = b""
        self._replies: deque[bytes] = deque()
        self._load = b""
        """The latest load report, not yet written (empty: none)."""
        self._logs: deque[bytes] = deque()
        self._writing = False
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "worker channel"

    def send(self, message: Message, droppable: bool = False) -> bool:
        """
        Queue C{message} and write what the pipe takes now.  A log line or
        load report (C{droppable}) is dropped beyond L{LOG_LIMIT}, anything
        beyond L{LIMIT}; replies go out before the log lines queued ahead of
        them.  Only a dropped L{LogEvent} counts as a dropped log line.
        Whether it was queued.
        """
        if self.closed:
            return False
        data = encode(message)
        if self.size + len(data) > (self.logLimit if droppable else self.limit):
            if droppable and isinstance(message, LogEvent):
                self.dropped += 1
                self.droppedTotal += 1
            return False
        (self._logs if droppable else self._replies).append(data)
        self.size += len(data)
        if not self._writing:
            self.doWrite()
        return True

    def report(self, load: Load) -> None:
        """
        Send C{load}, the worker's load report, ahead of the queued log
        lines, in place of one not yet written.
        """
        if self.closed:
            return
        data = encode(load)
        self.size += len(data) - len(self._load)
        self._load = data
        if not self._writing:
            self.doWrite()

    def _nextChunk(self) -> bytes:
        """Whole messages, replies, the load report, then log lines, up to about L{CHUNK} bytes."""
        parts: list[bytes] = []
        size = 0
        for queue in (self._replies, None, self._logs):
            if queue is None:  # the load report's turn
                if self._load and (size == 0 or size + len(self._load) <= CHUNK):
                    parts.append(self._load)
                    size += len(self._load)
                    self._load = b""
                continue
            while queue and (size == 0 or size + len(queue[0]) <= CHUNK):
                parts.append(queue.popleft())
                size += len(parts[-1])
        return b"".join(parts)

    def doWrite(self) -> None:
        """Write what the pipe takes; wait for it to drain if anything is left."""
        while self.size:
            if not self._current:
                self._current = self._nextChunk()
            try:
                written = os.write(self.fd, self._current)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the master is gone; stdin's end stops the worker
                self._broken()
                break
            self._current = self._current[written:]
            self.size -= written
        if self.size and not self._writing:
            self._writing = True
            self.reactor.addWriter(self)
        elif not self.size and self._writing:
            self._writing = False
            self.reactor.removeWriter(self)
        if not self.size and self.dropped and not self.closed:
            dropped, self.dropped = self.dropped, 0
            self._log.warn(
                "dropped {count} log lines while the master was not reading", count=dropped
            )

    def connectionLost(self, reason: object) -> None:
        """
        The reactor lets go of the channel (its shutdown disconnects every
        descriptor): what is queued is kept for L{drain}.
        """
        self._writing = False

    def _broken(self) -> None:
        """The master is gone (EPIPE): nothing more can be written."""
        self.closed = True
        self._current = b""
        self._replies.clear()
        self._load = b""
        self._logs.clear()
        self.size = 0

    def drain(self, timeout: float) -> bool:
        """
        Before the worker exits: wait up to C{timeout} seconds for the queue
        to be written (the reactor has stopped).  Whether everything was.
        """
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while self.size and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return False
            self.doWrite()
        return not self.size


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
