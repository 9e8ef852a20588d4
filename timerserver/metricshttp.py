"""
The metrics port's HTTP: C{GET} and C{HEAD} of C{/metrics}, and nothing a
client sends can hold more than a small fixed amount of the master.

twisted.web's C{Site} spools a request body to a temporary file before any
resource sees it and switches its idle timeout off while a request is being
answered; a scrape port needs neither.  Here:

 - a request's head must arrive within L{REQUEST_TIMEOUT} seconds and hold
   at most L{MAX_HEAD} bytes (else 408 / 431);
 - a path other than C{/metrics} is 404, a method other than C{GET} or
   C{HEAD} is 405, a declared body 413: all answered as soon as the head is
   read, and the body is never buffered (what the client sends after it is
   read and thrown away for at most L{LINGER} seconds or L{LINGER_BYTES},
   so that it gets the answer rather than a reset, then the connection is
   aborted);
 - at most L{MAX_CONNECTIONS} connections hold a descriptor at any moment,
   those being closed included: before each of the port's accept turns
   (Twisted's C{tcp.Port} accepts 100 sockets a turn, 20 more after every
   full turn) its C{numberAccepts} is set to the free slots, and a full port
   accepts nothing (L{MetricsHTTPFactory.listening}); the rest wait in the
   kernel's listen queue, raised to at least L{LISTEN_BACKLOG} (a flood of
   scrapes waits there rather than fails, and a connect flood does not fill
   it and make the kernel drop a scraper's SYN, which the scraper retries
   only after 1 s, then 3 s);
 - silent or slow clients cannot hold those slots against a scraper: when
   the port is full and a connection waits, every connection still reading
   its request head, or lingering after its answer, that is L{EVICT_GRACE}
   seconds old (from its accept, or from its answer) is aborted to make
   room, all in one turn (one at a time, a busy machine turned them over
   too slowly); a connection whose answer is being rendered is never
   evicted.  A scraper sends its request as soon as it is connected, so it
   has long been read when its grace ends (the grace guards one whose
   request is still on its way from the next accept); while no connection
   may be evicted yet, the port is paused and resumed when one may.  The
   grace is short because it bounds how fast the port turns over: 16 slots
   a grace, 1,600 connections a second at 10 ms, so that a scraper behind
   400 silent connections in the listen queue waits about 0.25 s (behind
   400 held for a 0.25 s grace, it would wait 6 s);
 - evicted connections, and those whose head did not arrive in time (408),
   are counted (C{evicted}, C{answers}) and logged together, at most once
   every L{DROP_LOG_INTERVAL} seconds; the port's accept loop logs through an
   L{EventLog} (at most 20 lines in 10 s, then a count), as the main port's
   does: out of descriptors, Twisted logs every socket it closes;
 - an answer not ready within C{answerTimeout} is 503; a scraper that goes
   away before its answer leaves nothing behind (no write, no error logged).

Every answer closes its connection (C{Connection: close}).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver.eventlog import EventLog
from timerserver.listener import rateLimitAcceptLog

REQUEST_TIMEOUT = 2.0
"""Seconds a request's head may take to arrive (a scraper sends it at once)."""
EVICT_GRACE = 0.01
"""
Seconds a connection is safe from eviction, from its accept (its request on
its way) or from its answer (the answer on its way).
"""
LISTEN_BACKLOG = 1024
"""The least listen queue the port is given (the kernel caps it at C{somaxconn})."""
MAX_HEAD = 8192
MAX_CONNECTIONS = 16
LINGER = 1.0
LINGER_BYTES = 64 * 1024
ANSWER_TIMEOUT = 3.0
FAILURE_LOG_INTERVAL = 60.0
"""A failed scrape is logged at most once in this many seconds (the rest are counted)."""
DROP_LOG_INTERVAL = 60.0
"""Connections evicted or timed out are logged, counted, at most once in this many seconds."""

Render = Callable[[str], defer.Deferred[tuple[str, bytes]]]
"""Given the Accept header, the content type and body of the metrics."""

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@implementer(IHalfCloseableProtocol)
class MetricsHTTP(Protocol):
    """
    One connection to the metrics port: one request, one answer.  A scraper
    may half-close once it has sent its request (C{nc -N}): it still gets
    the answer.

    @ivar state: C{"head"} (reading the request), C{"rendering"} (waiting
        for the metrics), C{"done"} (answered, lingering until closed).
    """

    factory: MetricsHTTPFactory
    transport: ITCPTransport  # set by makeConnection

    def __init__(self) -> None:
        self.buffer = b""
        self.state = "head"
        self.gone = False
        self.readClosed = False
        self.discarded = 0
        self.since = 0.0
        """When it entered its state (accepted, or answered)."""
        self.evicted = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.since = self.factory.clock.seconds()
        self._setTimer(REQUEST_TIMEOUT, self._timedOut)
        self.factory.connectionStarted(self)

    def _setTimer(self, seconds: float, call: Callable[[], object]) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.clock.callLater(seconds, call)

    def evict(self) -> None:
        """Make room for a connection waiting to be accepted: abort this one."""
        self.evicted = True
        self.transport.abortConnection()

    def _timedOut(self) -> None:
        if self.state == "head":
            self.factory.dropped("timed out")
            self.respond(408, b"")
        elif self.state == "rendering":
            self.respond(503, b"# the metrics were not ready in time\n")
        else:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.state != "head":
            self.discarded += len(data)  # a body we refused, or what follows a request
            if self.discarded > LINGER_BYTES:
                self.transport.abortConnection()
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) <= MAX_HEAD:
            return
        if end < 0 or end > MAX_HEAD:
            self.respond(431, b"")
            return
        head, rest = self.buffer[:end], self.buffer[end + 4 :]
        self.buffer, self.discarded = b"", len(rest)
        self.requestReceived(head)

    def requestReceived(self, head: bytes) -> None:
        """Answer the request whose head (request line and headers) is C{head}."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.respond(400, b"")
            return
        method, target = parts[0], parts[1]
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                self.respond(400, b"")
                return
            headers[name.strip().lower()] = value.strip()
        if target.split(b"?", 1)[0] != b"/metrics":
            self.respond(404, b"")
        elif method not in (b"GET", b"HEAD"):
            self.respond(405, b"", [(b"Allow", b"GET, HEAD")])
        elif headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            self.respond(413, b"")
        else:
            self.render(method == b"HEAD", headers.get(b"accept", b"").decode("latin-1"))

    def render(self, head: bool, accept: str) -> None:
        """Render the metrics; answer with them unless the scraper went away first."""
        self.state = "rendering"
        self._setTimer(self.factory.answerTimeout, self._timedOut)
        self.factory.stateChanged()

        def write(result: tuple[str, bytes]) -> None:
            contentType, body = result
            self.respond(200, body, [(b"Content-Type", contentType.encode("latin-1"))], head)

        def failed(failure: Failure) -> None:
            self.factory.scrapeFailed(failure)
            self.respond(500, b"# scrape failed\n")

        try:
            rendering = self.factory.render(accept)
        except Exception:
            rendering = defer.fail()
        rendering.addCallbacks(write, failed)

    def respond(
        self,
        code: int,
        body: bytes,
        headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
        head: bool = False,
    ) -> None:
        """Write the answer (once) and close, letting the client read it first."""
        if self.gone or self.state == "done":
            return  # the scraper went away, or was answered already (503)
        self.state, self.since = "done", self.factory.clock.seconds()
        self.factory.answers[code] = self.factory.answers.get(code, 0) + 1
        lines = [b"HTTP/1.1 %d %s" % (code, REASONS[code].encode())]
        lines += [b"%s: %s" % h for h in headers]
        lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", b""]
        self.transport.write(b"\r\n".join(lines) + (b"" if head else body))
        self._setTimer(LINGER, self._timedOut)
        lose = getattr(self.transport, "loseWriteConnection", None)
        if lose is None or self.readClosed:
            self.transport.loseConnection()
        else:
            lose()
        self.factory.stateChanged()

    def readConnectionLost(self) -> None:
        """
        The client half-closed: once answered, it has read its answer; while
        its request is being answered, it waits for the answer; before it
        sent a whole request, it never will.
        """
        self.readClosed = True
        if self.state == "done":
            self.transport.loseConnection()
        elif self.state == "head":
            self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        """Our half-close after the answer: the client closes, or the linger ends it."""

    def connectionLost(self, reason: object = None) -> None:
        self.gone = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.connectionEnded(self)


class MetricsHTTPFactory(Factory):
    """
    Builds L{MetricsHTTP} connections, at most C{maxConnections} at once.

    Once L{listening} on a port, it bounds each of the port's accept turns
    by the free slots, and when the port is full a waiting connection
    evicts those that have been reading their head, or lingering after
    their answer, for L{EVICT_GRACE} seconds; while none has, the port
    is paused (the kernel's listen queue holds the waiting ones) and
    resumed when one has, or when a connection ends.  A port set as
    C{port} alone (or one whose accepts cannot be bounded) is only paused
    at the limit and resumed below it, and what it accepted in the turn that
    reached the limit is served.

    @ivar open: connections accepted and not yet closed (their descriptors).
    @ivar evicted: connections evicted for one waiting.
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        render: Render,
        clock: IReactorTime,
        maxConnections: int = MAX_CONNECTIONS,
        answerTimeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.render = render
        self.clock = clock
        self.maxConnections = maxConnections
        self.answerTimeout = answerTimeout
        self.open = 0
        self.evicted = 0
        self.answers: dict[int, int] = {}
        """How many answers of each status code were written."""
        self.events = EventLog(clock, self.log)
        """The port's accept loop logs through this rate limit (L{rateLimitAcceptLog})."""
        self.port: Any = None
        self.connections: dict[MetricsHTTP, None] = {}
        """Open connections, oldest first."""
        self._bounded = False
        self._paused = False
        self._resume: IDelayedCall | None = None
        self._failureLogged: float | None = None
        self._failuresUnlogged = 0
        self._dropped: Counter[str] = Counter()
        self._dropWindow: IDelayedCall | None = None

    def listening(self, port: Any) -> None:
        """
        Serve on C{port}: bound its accept turns by the free slots (a
        C{tcp.Port} or a subclass), and route its accept loop's log through
        L{events}.
        """
        self.port = port
        rateLimitAcceptLog(port, self.events)
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

    def _oldest(self) -> MetricsHTTP | None:
        """
        The connection that could be evicted soonest: the one reading its
        head or lingering after its answer for longest (a connection whose
        answer is being rendered is never evicted).
        """
        oldest = None
        for c in self.connections:
            if c.state != "rendering" and not c.evicted:
                if oldest is None or c.since < oldest.since:
                    oldest = c
        return oldest

    def _evictable(self, c: MetricsHTTP, now: float) -> bool:
        """May C{c} be evicted for a waiting connection (not rendering, past its grace)?"""
        return c.state != "rendering" and not c.evicted and c.since + EVICT_GRACE <= now + 1e-9

    def scrapeFailed(self, failure: Failure) -> None:
        """Log a failed scrape, at most once every L{FAILURE_LOG_INTERVAL} seconds."""
        now = self.clock.seconds()
        if self._failureLogged is not None and now - self._failureLogged < FAILURE_LOG_INTERVAL:
            self._failuresUnlogged += 1
            return
        self._failureLogged = now
        more, self._failuresUnlogged = self._failuresUnlogged, 0
        self.log.failure(
            "metrics scrape failed{more}",
            failure,
            more=f" ({more} more since the last such line)" if more else "",
        )

    def dropped(self, why: str) -> None:
        """
        Count a connection closed idle (C{"evicted"} for a waiting one, or
        C{"timed out"} before its request), and log the counts: the first at
        once, then at most once every L{DROP_LOG_INTERVAL} seconds.
        """
        self._dropped[why] += 1
        if self._dropWindow is None:
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
        if again:
            self._dropWindow = self.clock.callLater(DROP_LOG_INTERVAL, self._logDropped)

    def stopFactory(self) -> None:
        """The port stopped listening: log what is left to log, leave no timer."""
        for call in (self._dropWindow, self._resume):
            if call is not None and call.active():
                call.cancel()
        self._resume = None
        self._logDropped(again=False)
        self.events.stop()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self._bounded and self.open >= self.maxConnections:
            return None  # a backstop: the port accepts no more than the free slots
        # Unbounded, past the limit only within the turn that reached it:
        # closing those would reset scrapers that the next turn could serve.
        self.open += 1
        proto = MetricsHTTP()
        proto.factory = self
        self._update()
        return proto

    def connectionStarted(self, proto: MetricsHTTP) -> None:
        """C{proto} is connected: it counts among the connections to evict."""
        self.connections[proto] = None

    def stateChanged(self) -> None:
        """A connection read its request or was answered: what may be evicted changed."""
        self._update()

    def connectionEnded(self, proto: MetricsHTTP) -> None:
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
        if oldest is not None and self._evictable(oldest, now):
            self._pause(False)  # a waiting connection evicts it
            return
        self._pause(True)
        if oldest is not None and self.port is not None:
            self._resume = self.clock.callLater(oldest.since + EVICT_GRACE - now, self._update)

    def _pause(self, paused: bool) -> None:
        if paused == self._paused or self.port is None:
            return
        method = getattr(self.port, "stopReading" if paused else "startReading", None)
        if method is not None:
            self._paused = paused
            method()
