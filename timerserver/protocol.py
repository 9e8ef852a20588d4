"""
The timer server's protocol: greet, echo, and write a periodic message from
each connection's own timer handle.
"""

from __future__ import annotations

import math
from typing import cast

from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver.interfaces import IQueueTimers, ITimer, TimerHandle
from timerserver.transport import writeNow

DEFAULT_WELCOME = b"Welcome to the timer server\r\n"
DEFAULT_MESSAGE = b"Periodic per connection message\r\n"
DEFAULT_INTERVAL = 2.0


@implementer(ITimer, IHalfCloseableProtocol)
class TimerServerProtocol(Protocol):
    """
    One connection: the welcome on connect, a byte-exact echo, and the
    periodic message every C{factory.interval} seconds.

    The periodic schedule does not drift: each message is due one interval
    after the previous one was due, not after it was sent.  If the server
    fell a whole interval behind, it skips the missed messages instead of
    sending a burst.
    """

    factory: TimerServerFactory
    _timer: TimerHandle | None = None
    _due = 0.0

    def connectionMade(self) -> None:
        factory = self.factory
        self._timer = factory.queue.createTimer()
        if factory.welcome:
            writeNow(self.transport, factory.welcome)
        self._due = factory.clock.seconds() + factory.interval
        factory.queue.setTimer(self._timer, self, factory.interval)

    def onTimer(self, userData: object) -> None:
        factory = self.factory
        writeNow(self.transport, factory.message)
        now = factory.clock.seconds()
        due = self._due + factory.interval
        if due <= now:
            due = now + factory.interval
        self._due = due
        factory.queue.setTimer(self._timer, self, due - now)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        writeNow(self.transport, data)

    def readConnectionLost(self) -> None:
        """
        The client half-closed: stop the periodic message, and close once
        everything echoed so far has been written.
        """
        if self._timer is not None:
            self.factory.queue.cancelTimer(self._timer)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._timer is not None:
            self.factory.queue.destroyTimer(self._timer)
            self._timer = None


class TimerServerFactory(Factory):
    """
    Builds L{TimerServerProtocol}s and holds what they share.

    @param queue: the L{IQueueTimers} every connection takes its handle from.
    @param welcome: bytes written on connect; empty or C{None} for none.
    @param message: bytes written every C{interval} seconds.
    @param reactor: the clock the periodic schedule is kept against; the
        global reactor if C{None}.
    """

    protocol = TimerServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        queue: IQueueTimers,
        welcome: bytes | None = DEFAULT_WELCOME,
        message: bytes = DEFAULT_MESSAGE,
        interval: float = DEFAULT_INTERVAL,
        reactor: IReactorTime | None = None,
    ) -> None:
        if not IQueueTimers.providedBy(queue):
            raise TypeError(f"queue must provide IQueueTimers, not {queue!r}")
        if welcome is not None and not isinstance(welcome, bytes):
            raise TypeError(f"welcome must be bytes or None, not {welcome!r}")
        if not isinstance(message, bytes):
            raise TypeError(f"message must be bytes, not {message!r}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(f"interval must be a number of seconds, not {interval!r}")
        if not (0 < interval <= queue.maximumTimeout) or math.isnan(interval):
            raise ValueError(
                f"interval must be > 0 and <= {queue.maximumTimeout}, not {interval!r}"
            )
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self.queue = queue
        self.welcome = welcome or b""
        self.message = message
        self.interval = float(interval)
        self.clock = reactor
