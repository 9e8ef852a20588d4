"""
The timer server's protocol: greet, echo, and write a periodic message from
each connection's own timer handle; guard each connection with a second
handle against idle clients, clients that stop reading, and closes that never
complete.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import Any
from typing import Protocol as Structural

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver import reasons
from timerserver.admission import Gate, gateOf
from timerserver.eventlog import EventLog
from timerserver.interfaces import IQueueTimers, ITimer, TimerHandle
from timerserver.lateness import LatenessHistogram
from timerserver.periodic import Periodic
from timerserver.transport import SOCKETS, closeNow, isFlushed, queuedBytes, writeNow

# What the watchdog is armed for: the userData of its onTimer calls.
IDLE = "idle"
STALL = "stall"
CLOSING = "closing"


class Shared(Structural):
    """What a connection reads from its factory (L{timerserver.factory.TimerServerFactory})."""

    queue: IQueueTimers
    clock: IReactorTime
    events: EventLog
    interval: float
    welcome: bytes
    message: bytes
    idleTimeout: float
    idleMessage: bytes
    stallTimeout: float
    closeGrace: float
    maxBuffer: int
    skippedMessages: int
    periodicMessages: int
    echoBytes: int
    lateness: LatenessHistogram | None

    def periodic(self, function: Callable[[float, int], object]) -> Periodic:
        """A L{Periodic} at C{interval} on C{queue} and C{clock}, calling C{function}."""

    def started(self, proto: TimerServerProtocol) -> None:
        """C{proto} reached the protocol and is served now."""

    def release(self, proto: TimerServerProtocol) -> None:
        """C{proto} is gone; count it out."""


@implementer(ITimer, IHalfCloseableProtocol, IPushProducer, IHandshakeListener)
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
    that has read nothing of what is queued by then (the timer starts again
    whenever it has), or that queues more than C{maxBuffer} bytes, is
    aborted.  A second handle, the watchdog, carries the idle, stall
    and closing timeouts.
    """

    factory: Shared
    transport: Any  # set by makeConnection before any method below runs
    # Made when the connection starts; they live while C{started} is true.
    _periodic: Periodic
    _watchdog: TimerHandle | None = None
    """Made the first time a timeout is armed: most connections never need it."""
    _lastRead = 0.0
    """When the client last sent data, or the connection started or resumed (C{factory.clock})."""
    _idleFrom: float | None = None
    """The C{_lastRead} the idle deadline was set from; None unless the watchdog is set for idle."""
    _idleCheckAt = math.inf
    """From when a periodic tick looks at the idle deadline again (never while the watchdog is)."""
    _out: Any
    paused = False
    _readingPaused = False
    closing = False
    started = False
    _queuedWhilePaused = 0
    _stallQueued = 0
    """What the socket's buffer held when the stall deadline was armed, or last moved on."""
    closeReason: str | None = None
    """Why the server closed the connection (idle, stalled, buffer, ...); else the client did."""

    # Connection life

    def connectionMade(self) -> None:
        transport = self.transport
        if type(transport) not in SOCKETS and INegotiated.providedBy(transport):
            return  # TLS: start once the handshake is done (handshakeCompleted)
        self._start()

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: the connection starts now."""
        if not self.closing:
            self._start()

    def _start(self) -> None:
        """Greet the client and start its timers; its handshake deadline is off."""
        factory = self.factory
        transport = self.transport
        self._out = transport
        if type(transport) not in SOCKETS:  # under a gate, PROXY or TLS
            gate = gateOf(transport)
            if gate is not None:
                gate.established()
            if isinstance(transport, Gate):
                # Plain TCP writes go straight to the socket (writeNow), under the gate.
                self._out = transport.transport
        self.started = True
        factory.started(self)
        self._periodic = factory.periodic(self._tick)
        transport.registerProducer(self, True)
        if factory.welcome:
            self._write(factory.welcome)
        self._periodic.start()
        if factory.idleTimeout:
            self._lastRead = factory.clock.seconds()
            self._armIdle(self._lastRead)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if (
            reason is not None
            and type(self.transport) not in SOCKETS  # TLS is never straight on the socket
            and type(reason.value).__module__.startswith("OpenSSL")
        ):
            # Not a TLS client (plain TCP, an old protocol, a bad handshake).
            self.factory.events.event(
                "dropped",
                self.transport.getPeer(),
                f": TLS error {reason.getErrorMessage()}",
            )
            self.closeReason = self.closeReason or reasons.TLS
            gate = gateOf(self.transport)
            if gate is not None and gate.reason is None:
                gate.reason = reasons.TLS
        self.closing = True
        if self.started:
            self.started = False
            self._periodic.close()
            if self._watchdog is not None:
                self.factory.queue.destroyTimer(self._watchdog)
                self._watchdog = None
            self.factory.release(self)

    def dataReceived(self, data: bytes) -> None:
        if self.closing or not self.started:
            return
        factory = self.factory
        factory.echoBytes += len(data)
        if factory.idleTimeout:
            # No timer operation: the watchdog, or the periodic tick before
            # the deadline, reads this when it runs (see _armIdle).
            self._lastRead = factory.clock.seconds()
        self._write(data)

    def readConnectionLost(self) -> None:
        """
        The client half-closed: stop the periodic message, and close once
        everything echoed so far has been written (at once if nothing is
        queued).
        """
        if self.started and not self.closing and closeNow(self._out):
            return
        self.close(grace=self.factory.stallTimeout, reason=reasons.CLIENT)

    def writeConnectionLost(self) -> None:
        self.close(grace=self.factory.stallTimeout, reason=reasons.CLIENT)

    # Timers

    def onTimer(self, userData: object) -> None:
        """The watchdog: idle, stalled, or a close that did not complete."""
        if userData == IDLE:
            armedFrom, self._idleFrom = self._idleFrom, None
            if self._lastRead != armedFrom:  # the client sent data since: not idle yet
                self._armIdle(self.factory.clock.seconds())
                return
            self.factory.events.event("idle", self.transport.getPeer())
            self._write(self.factory.idleMessage)
            self.close(grace=self.factory.closeGrace, reason=reasons.IDLE)
        elif userData == STALL:
            queued = queuedBytes(self.transport)
            if queued < self._stallQueued:
                # The client read since: slowly, but it reads (nginx's send_timeout).
                self._stallQueued = queued
                self._guard(self.factory.stallTimeout, STALL)
            else:
                self.abort("stalled", reason=reasons.STALLED)
        else:
            self.abort("close timed out", reason=reasons.CLOSE_TIMEOUT)

    def _tick(self, late: float, skipped: int) -> None:
        """The periodic message is due (C{late} seconds ago; C{skipped} older ones skipped)."""
        factory = self.factory
        if skipped:
            factory.skippedMessages += skipped
        lateness = factory.lateness
        if lateness is not None:  # metrics on: LatenessHistogram.record, inlined
            lateness.counts[bisect_left(lateness.bounds, late)] += 1
            lateness.total += late if late > 0.0 else 0.0
        if self.paused:
            factory.skippedMessages += 1
        else:
            factory.periodicMessages += 1
            if factory.idleTimeout:
                due = self._periodic.due
                if due >= self._idleCheckAt:
                    self._armIdle(due + late)
            self._write(factory.message)  # the write itself may pause the connection

    def _armIdle(self, now: float) -> None:
        """
        Set the watchdog for the idle deadline (C{idleTimeout} after the last
        read) if it comes within two intervals, before the periodic tick
        after next (ticks do not drift; a late one means the reactor, and so
        a watchdog, is late too); else the first tick due two intervals
        before it looks again.  So a connection that lives less than its idle
        timeout less two intervals never makes a watchdog, a read costs no
        timer operation, and a tick a comparison.  When the watchdog fires
        and the client has sent data since, this runs again.
        """
        factory = self.factory
        if self.paused or self.closing:
            return
        deadline = self._lastRead + factory.idleTimeout
        left = deadline - now
        twice = 2.0 * factory.interval
        if left <= twice:
            self._guard(left if left > 0.0 else 0.0, IDLE)
            self._idleFrom = self._lastRead
            self._idleCheckAt = math.inf
        else:
            self._idleCheckAt = deadline - twice

    # Writing, backpressure and closing

    def _write(self, data: bytes) -> None:
        writeNow(self._out, data)
        if self.paused:
            self._queuedWhilePaused += len(data)
            if self._queuedWhilePaused > self.factory.maxBuffer:
                self.abort("over its buffer limit", reason=reasons.BUFFER)

    def _guard(self, timeout: float, userData: str) -> None:
        """Arm the watchdog (made now if this is its first use)."""
        queue = self.factory.queue
        if self._watchdog is None:
            self._watchdog = queue.createTimer()
        queue.setTimer(self._watchdog, self, timeout, userData)
        self._idleFrom = None

    def _unguard(self) -> None:
        if self._watchdog is not None:
            self.factory.queue.cancelTimer(self._watchdog)
            self._idleFrom = None

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
        self._stallQueued = queuedBytes(self.transport)
        self._guard(self.factory.stallTimeout, STALL)

    def resumeProducing(self) -> None:
        """The transport's buffer drained: the client reads again."""
        if not self.paused or self.closing:
            return
        self.paused = False
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        self._unguard()
        factory = self.factory
        if factory.idleTimeout:
            # Reading stopped while it was paused: the idle time starts again.
            self._lastRead = factory.clock.seconds()
            self._armIdle(self._lastRead)

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
        if not self.started:  # still in its TLS handshake: nothing to flush
            self.transport.abortConnection()
            return
        self._periodic.stop()
        self._unguard()
        # A registered producer holds loseConnection back until it unregisters.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if grace is not None and not isFlushed(self._out):
            self._guard(grace, CLOSING)

    def goodbye(self, text: bytes) -> None:
        """Write C{text} and close; the factory aborts what is left in time."""
        if not self.closing:
            self._write(text)
            self.close(grace=None, reason=reasons.SHUTDOWN)

    def abort(self, why: str, reason: str) -> None:
        """
        Drop the connection at once (RST), whatever is still queued; log
        C{why} and count it as C{reason}.
        """
        self.factory.events.event("aborted", self.transport.getPeer(), f": {why}")
        self.closing = True
        self.closeReason = self.closeReason or reason
        if self.started:
            self._periodic.stop()
            self._unguard()
        self.transport.abortConnection()


def _socketTransport(transport: object) -> object:
    """The transport at the bottom of C{transport}'s wrappers (TLS, PROXY)."""
    while (inner := getattr(transport, "transport", None)) is not None:
        transport = inner
    return transport
