"""
L{Layer}: a protocol that is also the transport of the protocol above it,
passing everything through; the base of the layers the server puts under
its protocol (admission's L{Gate<timerserver.admission.Gate>}, the PROXY
header reader).

Unlike C{twisted.protocols.policies.ProtocolWrapper} it declares its
interfaces on the class (no C{directlyProvides} per connection), keeps no
registry of its connections, and passes a half-close through.

A layer provides C{IHalfCloseableProtocol} only where the protocol above it
does (L{Layer.over}).  Twisted's TLS layer copies every interface of its
transport onto itself: had the layer under it claimed half-close for a TLS
layer that has none, the socket's FIN would go from one to the other and
back until Python's recursion limit.  Without it, the socket's FIN closes the
connection in the same turn, as Twisted does for any such protocol.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IProtocol, ITransport, IConsumer, IPushProducer)
class Layer:
    """
    Between a transport below and C{wrappedProtocol} above.  Subclasses
    override what their layer does; the rest passes straight through.

    @cvar halfCloseable: the subclass to use over a protocol that takes a
        half-close (set by L{halfCloseableTwin}).
    """

    halfCloseable: type[Layer] | None = None

    transport: Any = None
    connected = 0
    disconnecting = False

    def __init__(self, wrappedProtocol: Any) -> None:
        self.wrappedProtocol = wrappedProtocol

    # From below

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = 1
        self.connectionMade()

    def connectionMade(self) -> None:
        """Connect the protocol above (subclasses may wait)."""
        self.wrappedProtocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = 0
        self.wrappedProtocol.connectionLost(reason)
        # The protocol above holds this layer as its transport: break the
        # cycle (as ProtocolWrapper does), so the connection is freed at once
        # rather than by the garbage collector.
        self.wrappedProtocol = None

    def readConnectionLost(self) -> None:
        """The peer half-closed (called only on a half-closeable twin)."""
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        """Our side can no longer write (called only on a half-closeable twin)."""
        self.wrappedProtocol.writeConnectionLost()

    def logPrefix(self) -> str:
        """How the connection is named in the log."""
        return type(self.wrappedProtocol).__name__

    # To the protocol above: the transport below's own

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        self.transport.writeSequence(data)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        """Drop the connection at once (RST), whatever is queued."""
        self.disconnecting = True
        self.transport.abortConnection()

    def loseWriteConnection(self) -> None:
        """Half-close: no more writes."""
        self.transport.loseWriteConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def __getattr__(self, name: str) -> Any:
        # Anything else the transport below has (producerPaused, socket, ...).
        if name.startswith("__") or self.transport is None:
            raise AttributeError(name)
        return getattr(self.transport, name)


L = TypeVar("L", bound=Layer)


def halfCloseableTwin(cls: type[L]) -> type[L]:
    """
    C{cls}, with a subclass that provides C{IHalfCloseableProtocol} as its
    L{Layer.halfCloseable}: the one L{over} picks for a protocol that does.
    """
    twin = type(f"HalfCloseable{cls.__name__}", (cls,), {"__doc__": cls.__doc__})
    cls.halfCloseable = implementer(IHalfCloseableProtocol)(twin)
    return cls


def over(cls: type[L], wrappedProtocol: Any) -> type[L]:
    """The class of C{cls}'s kind to put under C{wrappedProtocol}."""
    twin = cls.halfCloseable
    if twin is not None and IHalfCloseableProtocol.providedBy(wrappedProtocol):
        return cast("type[L]", twin)
    return cls


class LayerFactory(Factory):
    """
    Puts a L{layer} under each of C{wrappedFactory}'s connections (its
    half-closeable twin where the protocol above takes a half-close).
    """

    noisy = False
    layer: type[Layer] = Layer
    suffix = ""
    """Added to the wrapped factory's log prefix."""

    def __init__(self, wrappedFactory: IProtocolFactory) -> None:
        self.wrappedFactory = wrappedFactory

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def logPrefix(self) -> str:
        """The wrapped factory's log prefix, and L{suffix}."""
        inner = self.wrappedFactory
        prefix = inner.logPrefix() if hasattr(inner, "logPrefix") else type(inner).__name__
        return f"{prefix}{self.suffix}"

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else over(self.layer, wrapped)(wrapped)
