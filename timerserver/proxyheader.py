"""
The PROXY protocol (HAProxy's C{send-proxy}, v1 and v2) in front of the
server, with the client's real address known before the server sees the
connection.

Twisted's C{HAProxyProtocolWrapper} calls the wrapped protocol's
C{connectionMade} before it has read the header, so admission and the log
see the proxy's address; it also drops a connection whose first read holds
less than 16 bytes.  L{ProxyHeaderWrapper} reads the whole header first
(however it is split), then connects the wrapped protocol, whose
C{getPeer()} is the client's address from its first line of code.  A
connection that sends no valid header within C{timeout} seconds is dropped
and logged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

DEFAULT_HEADER_TIMEOUT = 5.0
_V1 = V1Parser.PROXYSTR
_V2 = V2Parser.PREFIX


class ProxyHeaderWrapper(HAProxyProtocolWrapper):
    """Connects the wrapped protocol only once the PROXY header is read."""

    factory: ProxyHeaderFactory
    # Set by makeConnection and the factory before any method below runs.
    transport: Any
    wrappedProtocol: Any
    _timeout: IDelayedCall | None = None
    _pending = b""

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        self._timeout = self.factory.clock.callLater(self.factory.timeout, self._noHeader)

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        data, self._pending = self._pending + data, b""
        if self._parser is None:
            if data[: len(_V1)] == _V1:
                self._parser = V1Parser()
            elif len(data) >= 16 and data[:12] == _V2 and data[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif len(data) < 16 and (_V2.startswith(data[:12]) or _V1.startswith(data)):
                self._pending = data  # the start of a header: wait for the rest
                return
            else:
                self._invalid()
                return
        try:
            info, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self._invalid()
            return
        if info is None:
            return
        self._proxyInfo = info
        self._cancelTimeout()
        self.wrappedProtocol.makeConnection(self)
        if remaining and self.connected:
            self.wrappedProtocol.dataReceived(remaining)

    def _invalid(self) -> None:
        self._drop("invalid PROXY header")
        self.transport.loseConnection()

    def _noHeader(self) -> None:
        self._timeout = None
        self._drop(f"no PROXY header within {self.factory.timeout}s")
        self.transport.abortConnection()

    def _drop(self, why: str) -> None:
        self._cancelTimeout()
        self._parser = None
        events = self.factory.events
        if events is not None:
            events.event("dropped", self.transport.getPeer(), f": {why}")

    def _cancelTimeout(self) -> None:
        if self._timeout is not None:
            if self._timeout.active():
                self._timeout.cancel()
            self._timeout = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancelTimeout()
        self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]
        if self._proxyInfo is not None:
            self.wrappedProtocol.connectionLost(reason)


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps C{wrappedFactory}'s connections in L{ProxyHeaderWrapper}s.

    @param events: where dropped connections are logged (an L{EventLog}).
    @param clock: the clock of the header timeout.
    """

    protocol = ProxyHeaderWrapper
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        clock: IReactorTime,
        events: Any = None,
        timeout: float = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        WrappingFactory.__init__(self, wrappedFactory)  # type: ignore[arg-type]
        self.clock = clock
        self.events = events
        self.timeout = timeout

    def logPrefix(self) -> str:
        inner = self.wrappedFactory
        prefix = inner.logPrefix() if hasattr(inner, "logPrefix") else type(inner).__name__
        return f"{prefix} (PROXY)"
