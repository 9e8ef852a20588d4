"""
The timer server's protocol: greet, echo, and write a periodic message from
each connection's own timer handle; guard each connection with a second
handle against idle clients, clients that stop reading, and closes that never
complete.
"""

from __future__ import annotations

import math
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver.eventlog import EventLog
from timerserver.interfaces import IQueueTimers, ITimer, TimerHandle
from timerserver.transport import writeNow

DEFAULT_WELCOME = b"Welcome to the timer server\r\n"
DEFAULT_MESSAGE = b"Periodic per connection message\r\n"
DEFAULT_IDLE_MESSAGE = b"Idle timeout\r\n"
DEFAULT_GOODBYE = b"Server shutting down\r\n"
BUSY = b"Server busy\r\n"
DEFAULT_INTERVAL = 2.0
DEFAULT_STALL_TIMEOUT = 30.0
DEFAULT_MAX_BUFFER = 1024 * 1024
DEFAULT_CLOSE_GRACE = 2.0

# What a connection's timers are for: the userData of its onTimer calls.
PERIODIC = "periodic"
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
    _periodic: TimerHandle | None = None
    _watchdog: TimerHandle | None = None
    _due = 0.0
    paused = False
    _readingPaused = False
    closing = False
    admitted = False
    _queuedWhilePaused = 0

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
        self._periodic = queue.createTimer()
        self._watchdog = queue.createTimer()
        self.transport.registerProducer(self, True)
        if factory.welcome:
            self._write(factory.welcome)
        self._due = factory.clock.seconds() + factory.interval
        queue.setTimer(self._periodic, self, factory.interval, PERIODIC)
        self._armIdle()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is not None and type(reason.value).__module__.startswith("OpenSSL"):
            # Not a TLS client (plain TCP, an old protocol, a bad handshake).
            self.factory.events.event(
                "dropped",
                self.transport.getPeer(),
                f": TLS error {reason.getErrorMessage()}",
            )
        self.closing = True
        queue = self.factory.queue
        for handle in (self._periodic, self._watchdog):
            if handle is not None:
                queue.destroyTimer(handle)
        self._periodic = self._watchdog = None
        if self.admitted:
            self.admitted = False
            self.factory.release(self)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self._write(data)
        self._armIdle()

    def readConnectionLost(self) -> None:
        """
        The client half-closed: stop the periodic message, and close once
        everything echoed so far has been written.
        """
        self.close(grace=self.factory.stallTimeout)

    def writeConnectionLost(self) -> None:
        self.close(grace=self.factory.stallTimeout)

    # Timers

    def onTimer(self, userData: object) -> None:
        if userData == PERIODIC:
            self._tick()
        elif userData == IDLE:
            self.factory.events.event("idle", self.transport.getPeer())
            self._write(self.factory.idleMessage)
            self.close(grace=self.factory.closeGrace)
        else:
            what = "stalled" if userData == STALL else "close timed out"
            self.abort(what)

    def _tick(self) -> None:
        factory = self.factory
        interval = factory.interval
        now = factory.clock.seconds()
        behind = math.floor((now - self._due) / interval)
        if behind >= 2:
            # Two intervals or more late (a stall, not the queue's
            # granularity): this message stands for the latest one due, and
            # the older ones are skipped.
            factory.skippedMessages += behind
            self._due += behind * interval
        if self.paused:
            factory.skippedMessages += 1
        else:
            self._write(factory.message)
        if self.closing:
            return  # the write found the buffer over its cap
        self._due += interval
        factory.queue.setTimer(self._periodic, self, max(0.0, self._due - now), PERIODIC)  # type: ignore[arg-type]

    def _armIdle(self) -> None:
        """(Re-)arm the idle timeout, if there is one, through the update path."""
        timeout = self.factory.idleTimeout
        if timeout and not self.paused and not self.closing:
            self.factory.queue.updateTimer(self._watchdog, self, timeout, IDLE)  # type: ignore[arg-type]

    # Writing, backpressure and closing

    def _write(self, data: bytes) -> None:
        writeNow(self.transport, data)
        if self.paused:
            self._queuedWhilePaused += len(data)
            if self._queuedWhilePaused > self.factory.maxBuffer:
                self.abort("over its buffer limit")

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
        self.factory.queue.setTimer(self._watchdog, self, self.factory.stallTimeout, STALL)  # type: ignore[arg-type]

    def resumeProducing(self) -> None:
        """The transport's buffer drained: the client reads again."""
        if not self.paused or self.closing:
            return
        self.paused = False
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        self.factory.queue.cancelTimer(self._watchdog)  # type: ignore[arg-type]
        self._armIdle()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost cleans up."""

    def close(self, grace: float | None) -> None:
        """
        Stop the periodic message and close once what was written is flushed;
        abort if that has not happened within C{grace} seconds (if given).
        """
        if self.closing:
            return
        self.closing = True
        queue = self.factory.queue
        queue.cancelTimer(self._periodic)  # type: ignore[arg-type]
        queue.cancelTimer(self._watchdog)  # type: ignore[arg-type]
        # A registered producer holds loseConnection back until it unregisters.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if grace is not None:
            queue.setTimer(self._watchdog, self, grace, CLOSING)  # type: ignore[arg-type]

    def goodbye(self, text: bytes) -> None:
        """Write C{text} and close; the factory aborts what is left in time."""
        if not self.closing:
            self._write(text)
            self.close(grace=None)

    def abort(self, why: str) -> None:
        """Drop the connection at once (RST), whatever is still queued."""
        self.factory.events.event("aborted", self.transport.getPeer(), f": {why}")
        self.closing = True
        for handle in (self._periodic, self._watchdog):
            if handle is not None:
                self.factory.queue.cancelTimer(handle)
        self.transport.abortConnection()


class TimerServerFactory(Factory):
    """
    Builds L{TimerServerProtocol}s, holds what they share, admits or refuses
    connections and closes them all on shutdown.

    @param queue: the L{IQueueTimers} every connection takes its handles from.
    @param welcome: bytes written on connect; empty or C{None} for none.
    @param message: bytes written every C{interval} seconds.
    @param idleTimeout: seconds without data from the client before it is
        told C{idleMessage} and closed; 0 for never.
    @param stallTimeout: seconds a connection may stay unable to write.
    @param maxBuffer: bytes a connection may queue while the client does not
        read before it is aborted.
    @param maxConnections: connections served at once; more are refused with
        C{Server busy}.  C{None} for no limit.
    @param maxPerPeer: connections at once from one host; 0 for no limit.
    @param reactor: the clock of the periodic schedule, the shutdown timeout
        and the log's rate limit: the queue's own clock (C{queue.clock}) if
        C{None}; it may not be another one.
    """

    protocol = TimerServerProtocol  # type: ignore[assignment]
    noisy = False
    _log = Logger()

    def __init__(
        self,
        queue: IQueueTimers,
        welcome: bytes | None = DEFAULT_WELCOME,
        message: bytes = DEFAULT_MESSAGE,
        interval: float = DEFAULT_INTERVAL,
        reactor: IReactorTime | None = None,
        *,
        idleTimeout: float = 0.0,
        idleMessage: bytes = DEFAULT_IDLE_MESSAGE,
        stallTimeout: float = DEFAULT_STALL_TIMEOUT,
        maxBuffer: int = DEFAULT_MAX_BUFFER,
        maxConnections: int | None = None,
        maxPerPeer: int = 0,
        goodbye: bytes = DEFAULT_GOODBYE,
        closeGrace: float = DEFAULT_CLOSE_GRACE,
    ) -> None:
        if not IQueueTimers.providedBy(queue):
            raise TypeError(f"queue must provide IQueueTimers, not {queue!r}")
        for name, value in (
            ("message", message),
            ("idleMessage", idleMessage),
            ("goodbye", goodbye),
        ):
            if not isinstance(value, bytes):
                raise TypeError(f"{name} must be bytes, not {value!r}")
        if welcome is not None and not isinstance(welcome, bytes):
            raise TypeError(f"welcome must be bytes or None, not {welcome!r}")
        self.interval = _seconds("interval", interval, queue.maximumTimeout)
        self.stallTimeout = _seconds("stallTimeout", stallTimeout, queue.maximumTimeout)
        self.closeGrace = _seconds("closeGrace", closeGrace, queue.maximumTimeout)
        self.idleTimeout = (
            _seconds("idleTimeout", idleTimeout, queue.maximumTimeout) if idleTimeout else 0.0
        )
        self.maxBuffer = _count("maxBuffer", maxBuffer, minimum=1)
        self.maxConnections = (
            None if maxConnections is None else _count("maxConnections", maxConnections, minimum=1)
        )
        self.maxPerPeer = _count("maxPerPeer", maxPerPeer, minimum=0)
        # One time source: the schedule is kept on the clock the queue reads.
        queueClock = getattr(queue, "clock", None)
        if reactor is None:
            if queueClock is None:
                from twisted.internet import reactor as globalReactor

                queueClock = globalReactor
            reactor = cast(IReactorTime, queueClock)
        elif queueClock is not None and reactor is not queueClock:
            raise ValueError(f"reactor {reactor!r} is not the clock of {queue!r}")
        self.queue = queue
        self.welcome = welcome or b""
        self.message = message
        self.idleMessage = idleMessage
        self.goodbye = goodbye
        self.clock = reactor
        self.events = EventLog(reactor, self._log)
        self.connections: set[TimerServerProtocol] = set()
        self.perPeer: dict[str, int] = {}
        self.skippedMessages = 0
        self._allClosed: list[defer.Deferred[None]] = []
        self._abortCall: IDelayedCall | None = None

    # Admission

    @staticmethod
    def _host(proto: TimerServerProtocol) -> str:
        peer = proto.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def admit(self, proto: TimerServerProtocol) -> bool:
        """Count C{proto} in, or return C{False} (and log) if it is over a limit."""
        host = self._host(proto)
        if self.maxConnections is not None and len(self.connections) >= self.maxConnections:
            self.events.event("refused", proto.transport.getPeer(), ": server full")
            return False
        if self.maxPerPeer and self.perPeer.get(host, 0) >= self.maxPerPeer:
            self.events.event("refused", proto.transport.getPeer(), ": too many from host")
            return False
        self.connections.add(proto)
        self.perPeer[host] = self.perPeer.get(host, 0) + 1
        return True

    def release(self, proto: TimerServerProtocol) -> None:
        """Count an admitted C{proto} out."""
        self.connections.discard(proto)
        host = self._host(proto)
        left = self.perPeer[host] - 1
        if left:
            self.perPeer[host] = left
        else:
            del self.perPeer[host]
        if not self.connections:
            if self._abortCall is not None:
                self._abortCall.cancel()
                self._abortCall = None
            waiting, self._allClosed = self._allClosed, []
            for d in waiting:
                d.callback(None)

    # Shutdown

    def closeAll(self, timeout: float) -> defer.Deferred[None]:
        """
        Say goodbye to every connection and close it; abort those still open
        after C{timeout} seconds.  Fires when all are closed.
        """
        for proto in list(self.connections):
            proto.goodbye(self.goodbye)
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._allClosed.append(d)
        if self._abortCall is None:
            self._abortCall = self.clock.callLater(timeout, self._abortAll)
        return d

    def _abortAll(self) -> None:
        self._abortCall = None
        for proto in list(self.connections):
            proto.abort("still open at shutdown")


def _socketTransport(transport: object) -> object:
    """The transport at the bottom of C{transport}'s wrappers (TLS, PROXY)."""
    while (inner := getattr(transport, "transport", None)) is not None:
        transport = inner
    return transport


def _seconds(name: str, value: object, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (0 < value <= maximum) or math.isnan(value):
        raise ValueError(f"{name} must be > 0 and <= {maximum}, not {value!r}")
    return float(value)


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    return value
