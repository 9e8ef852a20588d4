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
   and silent ones cannot hold them against a scraper (L{Slots
   <timerserver.scrapeslots.Slots>}, the factory's base);
 - an answer not ready within C{answerTimeout} is 503; a scraper that goes
   away before its answer leaves nothing behind (no write, no error logged).

Every answer closes its connection (C{Connection: close}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    INegotiated,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver.scrapeslots import Slots
from timerserver.transport import unacknowledged

REQUEST_TIMEOUT = 2.0
"""Seconds a request's head may take to arrive (a scraper sends it at once)."""
MAX_HEAD = 8192
MAX_CONNECTIONS = 16
LINGER = 1.0
LINGER_BYTES = 64 * 1024
ANSWER_TIMEOUT = 3.0
FAILURE_LOG_INTERVAL = 60.0
"""A failed scrape is logged at most once in this many seconds (the rest are counted)."""

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

    def undelivered(self) -> int | None:
        """Answered: the bytes the client's kernel has not acknowledged; else C{None}."""
        if self.state != "done" or self.gone:
            return None
        return unacknowledged(self.transport)

    def _timedOut(self) -> None:
        if self.state == "head":
            self.factory.dropped("timed out")
            self.respond(408, b"")
        elif self.state == "rendering":
            self.respond(503, b"# the metrics were not ready in time\n")
        else:
            self.factory.dropped("held after the answer")
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
        # Over TLS (INegotiated), Twisted's TLS layer forwards
        # loseWriteConnection to the socket beneath it: a FIN before any
        # close_notify, and the scraper's close_notify then made Twisted's TLS
        # layer raise (a traceback per scrape).  It closes with close_notify.
        if lose is None or self.readClosed or INegotiated.providedBy(self.transport):
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


class MetricsHTTPFactory(Slots, Factory):
    """
    Builds L{MetricsHTTP} connections, at most C{maxConnections} at once
    (L{Slots}).
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
        Slots.__init__(self, clock, maxConnections)
        self.render = render
        self.answerTimeout = answerTimeout
        self.answers: dict[int, int] = {}
        """How many answers of each status code were written."""
        self._failureLogged: float | None = None
        self._failuresUnlogged = 0

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

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if not self.admit():
            return None
        proto = MetricsHTTP()
        proto.factory = self
        return proto
