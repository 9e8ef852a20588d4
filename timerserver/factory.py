"""
L{TimerServerFactory}: what the server's connections share (the queue, the
options, the counters), and closing every connection on shutdown.  Which
sockets get this far is admission's business (L{timerserver.admission}).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from timerserver import reasons
from timerserver.config import (
    DEFAULT_CLOSE_GRACE,
    DEFAULT_GOODBYE,
    DEFAULT_IDLE_MESSAGE,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_BUFFER,
    DEFAULT_MESSAGE,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_WELCOME,
)
from timerserver.eventlog import EventLog
from timerserver.interfaces import IQueueTimers
from timerserver.lateness import LatenessHistogram
from timerserver.periodic import Periodic
from timerserver.protocol import TimerServerProtocol


class TimerServerFactory(Factory):
    """
    Builds L{TimerServerProtocol}s, holds what they share, and closes them
    all on shutdown.

    @param queue: the L{IQueueTimers} every connection takes its handles from.
    @param welcome: bytes written on connect; empty or C{None} for none.
    @param message: bytes written every C{interval} seconds.
    @param idleTimeout: seconds without data from the client before it is
        told C{idleMessage} and closed; 0 for never.
    @param stallTimeout: seconds a connection may stay unable to write.
    @param maxBuffer: bytes a connection may queue while the client does not
        read before it is aborted.
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
        self.skippedMessages = 0
        # Plain counters, read by the metrics at scrape time.
        self.closed: Counter[str] = Counter()
        """Connections that reached the protocol and closed, by reason."""
        self.periodicMessages = 0
        self.echoBytes = 0
        self.lateness: LatenessHistogram | None = None
        """How late each periodic message was; kept only when metrics are on."""
        self._allClosed: list[defer.Deferred[None]] = []
        self._abortCall: IDelayedCall | None = None
        self._firstPeriodic: Periodic | None = None

    # Connections

    def periodic(self, function: Callable[[float, int], object]) -> Periodic:
        """
        A connection's L{Periodic}: the first one checks the queue, interval
        and clock; the rest are its siblings.
        """
        first = self._firstPeriodic
        if first is None:
            first = self._firstPeriodic = Periodic(self.queue, self.interval, function, self.clock)
            return first
        return first.sibling(function)

    def started(self, proto: TimerServerProtocol) -> None:
        """C{proto} reached the protocol (admitted, past its handshake)."""
        self.connections.add(proto)

    def release(self, proto: TimerServerProtocol) -> None:
        """Count a started C{proto} out."""
        self.connections.discard(proto)
        self.closed[proto.closeReason or reasons.CLIENT] += 1
        if not self.connections and (self._allClosed or self._abortCall is not None):
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
            proto.abort("still open at shutdown", reason=reasons.SHUTDOWN)


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
