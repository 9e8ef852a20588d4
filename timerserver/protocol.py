"""
The timer server's protocol: greet, echo, and write a periodic message from
each connection's own timer handle; guard each connection with a second
handle against idle clients, clients that stop reading, and closes that never
complete.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver.interfaces import ITimer, TimerHandle
from timerserver.periodic import Periodic
from timerserver.transport import writeNow

if TYPE_CHECKING:
    from timerserver.factory import TimerServerFactory

DEFAULT_WELCOME = b"Welcome to the timer server\r\n"
DEFAULT_MESSAGE = b"Periodic per connection message\r\n"
DEFAULT_IDLE_MESSAGE = b"Idle timeout\r\n"
DEFAULT_GOODBYE = b"Server shutting down\r\n"
BUSY = b"Server busy\r\n"
DEFAULT_INTERVAL = 2.0
DEFAULT_STALL_TIMEOUT = 30.0
DEFAULT_MAX_BUFFER = 1024 * 1024
DEFAULT_CLOSE_GRACE = 2.0

# What the watchdog is armed for: the userData of its onTimer calls.
IDLE = "idle"
STALL = "stall"
CLOSING = "closing"


@implementer(ITimer, IHalfCloseableProtocol, IPushProducer)
class TimerServerProtocol(Protocol):
    """
    One connection: the welcome on connect, a byte-exact echo, and the
    periodic message every C{factory.interval} seconds.

    The periodic schedule does not drift: each message is due one interval
    after the previous one was due, not after it was sent.  A message is sent
    less than two intervals late; after a longer stall the older ones are
    skipped (counted in C{factory.skippedMessages}) instead of sent in a
    burst, so at most two go out back to back.

    The connection is its transport's streaming producer.  While the
    transport is paused (the client is not reading), periodic messages are
    skipped and counted, reading stops, and a stall timer runs; a connection
    that has not drained by then, or that queues more than C{maxBuffer}
    bytes, is aborted.  A second handle, the watchdog, carries the idle, stall
    and closing timeouts.
    """

    factory: TimerServerFactory
    transport: Any  # set by makeConnection before any method below runs
    # Made when the connection is admitted; they live while C{admitted} is true.
    _periodic: Periodic
    _watchdog: TimerHandle
    paused = False
    _readingPaused = False
    closing = False
    admitted = False
    _queuedWhilePaused = 0
    closeReason: str | None = None
    """Why the server closed the connection (idle, stalled, buffer, ...); else the client did."""

    # Connection life

    def connectionMade(self) -> None:
        factory = self.factory
        if not factory.admit(self):
            self.closing = True
            self.transport.write(BUSY)
            self.transport.loseConnection()
            return
        self.admitted = True
        queue = factory.queue
        self._periodic = Periodic(queue, factory.interval, self._tick, factory.clock)
        self._watchdog = queue.createTimer()
        self.transport.registerProducer(self, True)
        if factory.welcome:
            self._write(factory.welcome)
        self._periodic.start()
        self._armIdle()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is not None and type(reason.value).__module__.startswith("OpenSSL"):
            # Not a TLS client (plain TCP, an old protocol, a bad handshake).
            self.factory.events.event(
                "dropped",
                self.transport.getPeer(),
                f": TLS error {reason.getErrorMessage()}",
            )
            self.closeReason = self.closeReason or "tls"
        self.closing = True
        if self.admitted:
            self.admitted = False
            self._periodic.close()
            self.factory.queue.destroyTimer(self._watchdog)
            self.factory.release(self)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.factory.echoBytes += len(data)
        self._write(data)
        self._armIdle()

    def readConnectionLost(self) -> None:
        """
        The client half-closed: stop the periodic message, and close once
        everything echoed so far has been written.
        """
        self.close(grace=self.factory.stallTimeout, reason="client")

    def writeConnectionLost(self) -> None:
        self.close(grace=self.factory.stallTimeout, reason="client")

    # Timers

    def onTimer(self, userData: object) -> None:
        """The watchdog: idle, stalled, or a close that did not complete."""
        if userData == IDLE:
            self.factory.events.event("idle", self.transport.getPeer())
            self._write(self.factory.idleMessage)
            self.close(grace=self.factory.closeGrace, reason="idle")
        elif userData == STALL:
            self.abort("stalled", reason="stalled")
        else:
            self.abort("close timed out", reason="close_timeout")

    def _tick(self, late: float, skipped: int) -> None:
        """The periodic message is due (C{late} seconds ago; C{skipped} older ones skipped)."""
        factory = self.factory
        factory.skippedMessages += skipped
        lateness = factory.lateness
        if lateness is not None:  # metrics on: LatenessHistogram.record, inlined
            lateness.counts[bisect_left(lateness.bounds, late)] += 1
            lateness.total += late if late > 0.0 else 0.0
        if self.paused:
            factory.skippedMessages += 1
        else:
            factory.periodicMessages += 1
            self._write(factory.message)

    def _armIdle(self) -> None:
        """(Re-)arm the idle timeout, if there is one, through the update path."""
        timeout = self.factory.idleTimeout
        if timeout and not self.paused and not self.closing:
            self.factory.queue.updateTimer(self._watchdog, self, timeout, IDLE)

    # Writing, backpressure and closing

    def _write(self, data: bytes) -> None:
        writeNow(self.transport, data)
        if self.paused:
            self._queuedWhilePaused += len(data)
            if self._queuedWhilePaused > self.factory.maxBuffer:
                self.abort("over its buffer limit", reason="buffer")

    def pauseProducing(self) -> None:
        """
        The transport cannot take more now: the client is not reading, or a
        TLS handshake is still under way.

        Reading stops only when the socket's own buffer is full, so that echo
        cannot grow it.  A TLS layer also pauses its producer while its
        handshake is pending, and it needs to read to complete it: stopping
        reading then would stall the handshake for good.
        """
        if self.paused or self.closing:
            return
        self.paused = True
        self._queuedWhilePaused = 0
        self._readingPaused = getattr(_socketTransport(self.transport), "producerPaused", True)
        if self._readingPaused:
            self.transport.pauseProducing()
        self.factory.queue.setTimer(self._watchdog, self, self.factory.stallTimeout, STALL)

    def resumeProducing(self) -> None:
        """The transport's buffer drained: the client reads again."""
        if not self.paused or self.closing:
            return
        self.paused = False
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        self.factory.queue.cancelTimer(self._watchdog)
        self._armIdle()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost cleans up."""

    def close(self, grace: float | None, reason: str) -> None:
        """
        Stop the periodic message and close once what was written is flushed;
        abort if that has not happened within C{grace} seconds (if given).
        C{reason} is what the close is counted as.
        """
        if self.closing:
            return
        self.closing = True
        self.closeReason = self.closeReason or reason
        queue = self.factory.queue
        self._periodic.stop()
        queue.cancelTimer(self._watchdog)
        # A registered producer holds loseConnection back until it unregisters.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if grace is not None:
            queue.setTimer(self._watchdog, self, grace, CLOSING)

    def goodbye(self, text: bytes) -> None:
        """Write C{text} and close; the factory aborts what is left in time."""
        if not self.closing:
            self._write(text)
            self.close(grace=None, reason="shutdown")

    def abort(self, why: str, reason: str) -> None:
        """
        Drop the connection at once (RST), whatever is still queued; log
        C{why} and count it as C{reason}.
        """
        self.factory.events.event("aborted", self.transport.getPeer(), f": {why}")
        self.closing = True
        self.closeReason = self.closeReason or reason
        if self.admitted:
            self._periodic.stop()
            self.factory.queue.cancelTimer(self._watchdog)
        self.transport.abortConnection()


def _socketTransport(transport: object) -> object:
    """The transport at the bottom of C{transport}'s wrappers (TLS, PROXY)."""
    while (inner := getattr(transport, "transport", None)) is not None:
        transport = inner
    return transport
