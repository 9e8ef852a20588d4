"""
In-memory test helpers shared by the unit tests: letting a clock's time pass
tick by tick, and connecting protocols to StringTransports.  (Real servers,
processes and sockets are in L{tests.serverprocess}.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def elapse(clock: Clock, seconds: float, step: float = 0.01) -> None:
    """Let C{seconds} pass in steps of C{step}, as a running reactor would."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def captureLog(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """The events logged from now until C{test} ends."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def peer(host: str = "127.0.0.1", port: int = 40000) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def connect(
    factory: Any, host: str = "127.0.0.1", port: int = 40000, transport: Any = None
) -> tuple[Any, Any]:
    """A protocol of C{factory} connected to a StringTransport from C{host}."""
    address = peer(host, port)
    proto = factory.buildProtocol(address)
    if transport is None:
        transport = StringTransport(peerAddress=address)
    proto.makeConnection(transport)
    return proto, transport


def lose(proto: Any) -> None:
    """The connection is gone, as the reactor tells a protocol."""
    proto.connectionLost(Failure(ConnectionDone()))


def admission(factory: Any, *, proxy: bool = False, **options: Any) -> Any:
    """
    The stack the server listens with over C{factory}: admission, then the
    PROXY header reader if C{proxy}; C{options} go to L{Admission}.
    """
    from timerserver.admission import Admission
    from timerserver.proxyheader import ProxyHeaderFactory

    inner = ProxyHeaderFactory(factory) if proxy else factory
    options.setdefault("busy", not proxy)
    return Admission(inner, factory.queue, factory.events, served=factory.connections, **options)


def server(gate: Any) -> Any:
    """The server protocol at the top of an admitted socket's layers, or C{None}."""
    proto = gate
    while hasattr(proto, "wrappedProtocol"):
        proto = proto.wrappedProtocol
    return proto if getattr(proto, "started", False) else None
