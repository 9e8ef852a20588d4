"""
The TLS layer of an C{ssl:} port: Twisted's TLS protocol with the fixes the
server needs, under the ClientHello check, and the one module (beside
L{timerserver.listener}) that reaches into Twisted's private TLS API.
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from timerserver import reasons
from timerserver.admission import gateOf
from timerserver.clienthello import MAX_CLIENT_HELLO, ClientHelloFactory

MAX_HANDSHAKE_BYTES = 2 * MAX_CLIENT_HELLO + 8192
"""
The most a client may send before its TLS handshake is done: two
ClientHellos (a second one after a HelloRetryRequest), a ChangeCipherSpec,
its key exchange (TLS 1.2) and Finished, and their record headers; the
server asks for no certificate.  L{ClientHelloFactory} checks only the first
ClientHello, and OpenSSL holds a second one of up to 128 KiB until the
handshake ends (240 KiB a socket, measured).
"""


def tlsLayer(contextFactory: Any, factory: IProtocolFactory) -> IProtocolFactory:
    """
    C{factory} inside TLS with C{contextFactory}'s context: no TLS state is
    built before the client's first whole record passes L{ClientHelloFactory}'s
    checks.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    tls = TLSMemoryBIOFactory(contextFactory, False, factory)
    tls.protocol = _flushingTLS()
    return ClientHelloFactory(tls)


@functools.cache
def _flushingTLS() -> type[Any]:
    """
    Twisted's TLS transport, sending what it has gathered before its
    close_notify, closing with a deadline when the client ends TLS, and
    dropping a client that sends more than L{MAX_HANDSHAKE_BYTES} before its
    handshake is done.

    C{BufferingTLSTransport} gathers small writes and sends them on the next
    reactor turn.  When the client's close_notify (TLS's half-close) arrives
    in the same read as its last data, Twisted answers it and marks the
    connection lost before that turn, and drops the echo still gathered: 16
    to 48 KiB of 4 MiB, measured.  Flushing first keeps every byte.

    When TLS ends (the client's close_notify, or a bad record), Twisted
    closes the socket with C{loseConnection}, which waits until everything
    queued is sent, and tells the protocol nothing: a client that stopped
    reading held its connection for ever.  After the handshake, a
    close_notify now reaches a half-closeable protocol as
    C{readConnectionLost} (whose close has a deadline), and an error aborts
    the socket at once: that session can carry nothing more.
    """
    from OpenSSL import SSL
    from twisted.protocols.tls import BufferingTLSTransport

    def readable(error: SSL.Error) -> bool:
        """Whether Twisted can read C{error}'s reason (a ZeroReturnError may have none)."""
        args = error.args
        if isinstance(error, SSL.SysCallError):
            return len(args) == 2 and isinstance(args[1], str)
        if not args or not isinstance(args[0], list):
            return False
        return all(isinstance(e, tuple) and len(e) == 3 and isinstance(e[2], str) for e in args[0])

    class FlushingTLSTransport(BufferingTLSTransport):
        def _shutdownTLS(self) -> None:
            self._aggregator.flush()
            super()._shutdownTLS()  # type: ignore[no-untyped-call]

        def _tlsShutdownFinished(self, reason: Failure | None) -> None:
            if reason is not None and isinstance(reason.value, SSL.Error):
                if not readable(reason.value):
                    # Twisted's own check of it would raise (a traceback a client
                    # can cause: close_notify right after its ClientHello).
                    what = type(reason.value).__name__
                    reason = Failure(SSL.Error([("", "", f"{what} without a reason")]))
            super()._tlsShutdownFinished(reason)  # type: ignore[no-untyped-call]
            if not self._handshakeDone:
                return  # the handshake deadline (admission's) bounds it
            if reason is not None:
                self.transport.abortConnection()  # type: ignore[union-attr]
            elif IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.readConnectionLost()

        _handshakeBytes = 0

        def dataReceived(self, data: bytes) -> None:
            if self._handshakeDone:
                super().dataReceived(data)  # type: ignore[no-untyped-call]
                return
            received = self._handshakeBytes = self._handshakeBytes + len(data)
            super().dataReceived(data)  # type: ignore[no-untyped-call]
            if received > MAX_HANDSHAKE_BYTES and not self._handshakeDone:
                # Checked after TLS read it: the read that ends a handshake may
                # carry the application data a client sends right after it.
                transport: Any = self.transport
                gate = gateOf(transport)
                why = f"{received} bytes before its TLS handshake was done"
                if gate is not None:
                    gate.drop(reasons.TLS, f"{why} (at most {MAX_HANDSHAKE_BYTES})")
                elif transport is not None:
                    transport.abortConnection()

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            super().connectionLost(reason)
            # Twisted keeps the protocol as its producer: a cycle that only
            # the garbage collector would free.
            self._producer = None

    return FlushingTLSTransport
