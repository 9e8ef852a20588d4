"""
The metrics port's slots (L{Slots}, the base of its factory): at most
C{maxConnections} connections, and silent ones cannot hold them against a
scraper.

 - At most C{maxConnections} connections hold a descriptor at any moment,
   those being closed included: before each of the port's accept turns
   (Twisted's C{tcp.Port} accepts 100 sockets a turn, 20 more after every
   full turn) its C{numberAccepts} is set to the free slots, and a full
   port accepts nothing (L{Slots.listening}); the rest wait in the kernel's
   listen queue, raised to at least L{LISTEN_BACKLOG} (a flood of scrapes
   waits there rather than fails, and a connect flood does not fill it and
   make the kernel drop a scraper's SYN, which the scraper retries only
   after 1 s, then 3 s).
 - Silent or slow clients cannot hold those slots against a scraper: when
   the port is full and a connection waits, every connection still reading
   its request head L{EVICT_GRACE} seconds after its accept, or answered
   that long ago, is aborted to make room, all in one turn (one at a time,
   a busy machine turned them over too slowly), and so is one whose answer
   the client's kernel has acknowledged whole, at once.  An answered
   connection held its slot for the whole linger before: a client that
   sends a request and then reads none of its answer (a small receive
   window), or a few bytes at a time, kept scrapes waiting past their
   timeout at 16 such connections a second.  A connection being rendered
   is never evicted.  While no connection may be evicted yet, the port is
   paused and resumed when one may (looked at again every
   L{DELIVERY_CHECK} seconds while an answer is on its way).  The grace
   bounds how fast the port turns over against such clients (16 slots a
   grace, 64 connections a second at 0.25 s); it is that long because a
   scraper's request can take that long to arrive after its accept (a TLS
   handshake first, or a scraper process not yet scheduled on a busy
   machine), and its answer to be read after it was written.
 - Evicted connections, and those whose head did not arrive in time or
   that held their connection for the whole linger after the answer, are
   counted (C{evicted}, and the factory's C{answers} for the 408s) and
   logged together, at most once every L{DROP_LOG_INTERVAL} seconds; the
   port's accept loop logs through an L{EventLog} (at most 20 lines in
   10 s, then a count), as the main port's does: out of descriptors,
   Twisted logs every socket it closes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from timerserver.acceptguard import guardAccept
from timerserver.eventlog import EventLog

EVICT_GRACE = 0.25
"""
Seconds a connection reading its request head is safe from eviction, from
its accept: a scraper's request on its way (a TLS handshake first, or a
scraper not yet scheduled on a busy machine; at 10 ms, 16 TLS scrapes at
once lost 15 of 20, and 200 plain ones at once up to 28).
"""
DELIVERY_CHECK = 0.02
"""How often a full port looks again whether an answer on its way has arrived."""
LISTEN_BACKLOG = 1024
"""The least listen queue the port is given (the kernel caps it at C{somaxconn})."""
DROP_LOG_INTERVAL = 60.0
"""Connections evicted or timed out are logged, counted, at most once in this many seconds."""


class Slot(Protocol):
    """A connection holding a slot, as L{Slots} sees it."""

    state: str
    """C{"head"} (reading it), C{"rendering"} (never evicted), or C{"done"} (answered)."""
    since: float
    """When it entered its state."""
    evicted: bool

    def evict(self) -> None:
        """Abort it to make room for a waiting connection."""

    def undelivered(self) -> int | None:
        """
        Answered: the bytes of its answer the client's kernel has not
        acknowledged (0: all of it); else, or if it cannot tell, C{None}.
        """


class Slots:
    """
    At most C{maxConnections} connections at once.  Once L{listening} on a
    port, each of the port's accept turns is bounded by the free slots, and
    when the port is full a waiting connection evicts those that have been
    reading their head for L{EVICT_GRACE} seconds; while none has, the
    port is paused (the kernel's listen queue holds the waiting ones) and
    resumed when one has, or when a connection ends.  A port set as
    C{port} alone (or one whose accepts cannot be bounded) is only paused
    at the limit and resumed below it.

    @ivar open: connections accepted and not yet closed (their descriptors).
    @ivar evicted: connections evicted for one waiting.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, maxConnections: int) -> None:
        self.clock = clock
        self.maxConnections = maxConnections
        self.open = 0
        self.evicted = 0
        self.events = EventLog(clock, self.log)
        """The port's accept loop logs through this rate limit (L{guardAccept})."""
        self.port: Any = None
        self.connections: dict[Slot, None] = {}
        """Open connections, oldest first."""
        self._bounded = False
        self._paused = False
        self._resume: IDelayedCall | None = None
        self._dropped: Counter[str] = Counter()
        self._dropWindow: IDelayedCall | None = None
        self._stopped = False

    def listening(self, port: Any) -> None:
        """
        Serve on C{port}: bound its accept turns by the free slots (a
        C{tcp.Port} or a subclass), and route its accept loop's log through
        L{events}.
        """
        self.port = port
        guardAccept(port, self.events, self.clock)
        backlog, sock = getattr(port, "backlog", None), getattr(port, "socket", None)
        if isinstance(backlog, int) and backlog < LISTEN_BACKLOG and sock is not None:
            sock.listen(LISTEN_BACKLOG)  # a connect flood waits there, not in SYN retries
            port.backlog = LISTEN_BACKLOG
        accept = getattr(port, "doRead", None)
        if accept is None or not hasattr(port, "numberAccepts"):
            return
        self._bounded = True

        def doRead() -> object:
            free = self.maxConnections - self.open
            if free > 0:
                port.numberAccepts = free
                return accept()
            if not any(c.evicted for c in self.connections):
                now = self.clock.seconds()
                for victim in [c for c in self.connections if self._evictable(c, now)]:
                    self.evicted += 1
                    self.dropped("evicted")
                    victim.evict()  # its descriptor is closed on the next turn
            self._update()
            return None

        port.doRead = doRead

    def _oldest(self) -> Slot | None:
        """
        The connection that could be evicted soonest: the one reading its
        head, or answered, for longest (one being rendered is never evicted).
        """
        oldest = None
        for c in self.connections:
            if c.state != "rendering" and not c.evicted:
                if oldest is None or c.since < oldest.since:
                    oldest = c
        return oldest

    def _evictable(self, c: Slot, now: float) -> bool:
        """
        May C{c} be evicted for a waiting connection: reading its head, or
        answered, for L{EVICT_GRACE} seconds, or answered and its answer
        delivered whole?  An answered connection holds its slot a grace
        whether or not the client reads (a client that reads none of it, or
        a few bytes at a time, held it for the whole linger).
        """
        if c.evicted or c.state == "rendering":
            return False
        if c.since + EVICT_GRACE <= now + 1e-9:
            return True
        return c.state == "done" and c.undelivered() == 0

    def dropped(self, why: str) -> None:
        """
        Count a connection closed idle (C{"evicted"} for a waiting one, or
        C{"timed out"} before its request), and log the counts: the first at
        once, then at most once every L{DROP_LOG_INTERVAL} seconds.
        """
        self._dropped[why] += 1
        if self._dropWindow is None and not self._stopped:
            self._logDropped()

    def _logDropped(self, again: bool = True) -> None:
        self._dropWindow = None
        if not self._dropped:
            return  # a quiet window: the next one is logged at once
        self.log.info(
            "metrics port: closed {count} idle connections ({counts})",
            count=sum(self._dropped.values()),
            counts=", ".join(f"{n} {why}" for why, n in sorted(self._dropped.items())),
        )
        self._dropped.clear()
        if again and not self._stopped:
            self._dropWindow = self.clock.callLater(DROP_LOG_INTERVAL, self._logDropped)

    def stopFactory(self) -> None:
        """The port stopped listening: log what is left to log, leave no timer."""
        self._stopped = True  # a connection timing out after this starts none
        for call in (self._dropWindow, self._resume):
            if call is not None and call.active():
                call.cancel()
        self._resume = None
        self._logDropped(again=False)
        self.events.stop()

    def admit(self) -> bool:
        """
        Whether a connection the port accepted may be served (it then holds a
        slot): not past the limit on a bounded port (a backstop: its accept
        turns take no more than the free slots).  Unbounded, past the limit
        only within the turn that reached it: closing those would reset
        scrapers that the next turn could serve.
        """
        if self._bounded and self.open >= self.maxConnections:
            return False
        self.open += 1
        self._update()
        return True

    def connectionStarted(self, proto: Slot) -> None:
        """C{proto} is connected: it counts among the connections to evict."""
        self.connections[proto] = None
        self._update()  # the others may all be answering: it is the oldest to evict

    def stateChanged(self) -> None:
        """A connection read its request or was answered: what may be evicted changed."""
        self._update()

    def connectionEnded(self, proto: Slot) -> None:
        """One connection fewer (its descriptor closed): accept again below the limit."""
        self.open -= 1
        self.connections.pop(proto, None)
        self._update()

    def _update(self) -> None:
        """
        Accept while there is a free slot, or (bounded) a connection to evict
        for a waiting one; else pause, until a connection ends or (bounded)
        the oldest one's grace is over.
        """
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        if self.open < self.maxConnections:
            self._pause(False)
            return
        if not self._bounded:
            self._pause(True)
            return
        if any(c.evicted for c in self.connections):
            self._pause(True)  # until the one evicted is closed
            return
        now, oldest = self.clock.seconds(), self._oldest()
        if any(self._evictable(c, now) for c in self.connections):
            self._pause(False)  # a waiting connection evicts it
            return
        self._pause(True)
        if self.port is None or self._stopped:
            return
        wait = None if oldest is None else oldest.since + EVICT_GRACE - now
        if any(c.state == "done" for c in self.connections):  # an answer on its way
            wait = DELIVERY_CHECK if wait is None else min(wait, DELIVERY_CHECK)
        if wait is not None:
            self._resume = self.clock.callLater(wait, self._update)

    def _pause(self, paused: bool) -> None:
        if paused == self._paused or self.port is None:
            return
        method = getattr(self.port, "stopReading" if paused else "startReading", None)
        if method is not None:
            self._paused = paused
            method()
