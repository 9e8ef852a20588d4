"""
Admission: the bottom of every connection's stack, as
C{twisted.protocols.policies} keeps its limiting factories.

L{Admission} is the factory the listening port calls at accept.  It counts
every socket from that moment until it closes, whatever stage it is in
(TLS handshake, waiting for its PROXY header, served), and refuses at once,
before reading a byte, a socket that is over C{maxConnections}, over
C{maxPerPeer} for its address, or (behind C{haproxy:}) from an address that
may not send a PROXY header.

Each admitted socket gets a L{Gate}: a thin layer that passes everything
through, and that aborts the socket if the layers above it (PROXY header,
TLS) have not delivered it to the protocol within C{handshakeTimeout}.  The
abort is on the socket itself: over TLS, C{loseConnection} would wait for a
handshake that never comes.  A socket with no handshake and no per-address
limit to keep (plain TCP without C{maxPerPeer}) needs none of that: it goes
straight to the protocol, and is counted among the wrapped factory's
C{connections} (the server's own set), so that nothing stands between the
socket and the protocol.

A refused plain TCP client is told C{Server busy}; a refused TLS or PROXY
socket is closed without a word, since answering it would mean a handshake
(milliseconds of CPU per connect to whoever floods the port) or a reply to a
peer that has not said who it is.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sized
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from timerserver import reasons
from timerserver.eventlog import EventLog
from timerserver.interfaces import IQueueTimers, ITimer, TimerHandle
from timerserver.layer import Layer, LayerFactory, halfCloseableTwin, over
from timerserver.peers import DEFAULT_PEER_PREFIX6, Translators, peerKey
from timerserver.transport import closeNow, discardUnread, writeNow

BUSY = b"Server busy\r\n"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Busy(Protocol):
    """
    Tells a refused plain TCP client C{Server busy} and closes, in the
    accept loop itself where it can: a flood of refused connects then holds
    one descriptor at a time, not one per socket of an accept batch (which
    ran the process out of them and into Twisted's own unthrottled log of
    every socket it then closed).
    """

    transport: Any  # the socket's, from makeConnection on

    def connectionMade(self) -> None:
        writeNow(self.transport, BUSY)
        discardUnread(self.transport)  # what it sent first: unread, the close would be a reset
        if not closeNow(self.transport):
            self.transport.loseConnection()


class Admission(LayerFactory):
    """
    Admits sockets for C{wrappedFactory} (the layers above: PROXY, TLS, the
    server) and counts them until they close.

    @param queue: the timer queue of the handshake deadlines.
    @param events: where refusals and drops are logged (rate-limited).
    @param maxConnections: sockets at once in any stage; C{None}: no limit.
    @param maxPerPeer: sockets at once from one peer (L{peerKey}); 0: no
        limit.  For C{haproxy:} ports the address is the PROXY header's
        (L{Gate.claimPeer}).
    @param peerPrefix6: the bits of an IPv6 address that name its peer.
    @param nat64Prefixes: translator prefixes (L{Translators}) whose
        addresses are counted as the IPv4 client they carry.
    @param handshakeTimeout: seconds a socket may take to reach the protocol
        (PROXY header read, TLS handshake done), or C{None} where neither
        applies (plain TCP).
    @param trusted: who may connect at all (C{haproxy:} ports: the proxies),
        or C{None} for anyone.
    @param busy: tell refused clients C{Server busy} (plain TCP only).
    @param served: where C{wrappedFactory} keeps its connections while they
        are open (the server's own set), if it does: where no socket needs a
        gate (no handshake, no C{maxPerPeer}), sockets go straight to its
        protocol and are counted there.

    @ivar gated: sockets open now that have a L{Gate}.
    @ivar accepted: sockets admitted since start.
    @ivar perPeer: sockets open now by peer (L{peerKey}), kept only with C{maxPerPeer}.
    @ivar refused: sockets refused, by reason.
    @ivar closed: sockets that closed before reaching the protocol, by reason.
    """

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        queue: IQueueTimers,
        events: EventLog,
        *,
        maxConnections: int | None = None,
        maxPerPeer: int = 0,
        peerPrefix6: int = DEFAULT_PEER_PREFIX6,
        nat64Prefixes: tuple[str, ...] = (),
        handshakeTimeout: float | None = None,
        trusted: tuple[Network, ...] | None = None,
        busy: bool = True,
        served: Sized | None = None,
    ) -> None:
        LayerFactory.__init__(self, wrappedFactory)
        self.queue = queue
        self.events = events
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
        self.peerPrefix6 = peerPrefix6
        self.nat64 = Translators(nat64Prefixes)
        self.handshakeTimeout = handshakeTimeout
        self.trusted = trusted
        self.busy = busy
        self.gated = 0
        self._direct = served if handshakeTimeout is None and not maxPerPeer else None
        self.accepted = 0
        self.perPeer: dict[str, int] = {}
        self.handshaking: set[Gate] = set()
        self.refused: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()

    @property
    def open(self) -> int:
        """Sockets open now, in any stage."""
        direct = self._direct
        return self.gated if direct is None else self.gated + len(direct)

    def buildProtocol(self, addr: Any) -> Any:
        """
        At accept: a L{Gate} over the protocol of an admitted socket (the
        protocol itself where it needs no gate), else a refusal.
        """
        host: str | None = getattr(addr, "host", None)
        if self.trusted is not None and host is not None and not self._isTrusted(host):
            return self._refuse(addr, reasons.UNTRUSTED, "not a trusted proxy (--proxy-from)")
        if self.maxConnections is not None and self.open >= self.maxConnections:
            return self._refuse(addr, reasons.FULL, "server full")
        # Behind a proxy, the header's address is counted instead (claimPeer).
        peer = host if self.trusted is None and self.maxPerPeer else None
        if peer is not None and not self._peerRoom(
            peer if ":" not in peer else peerKey(peer, self.peerPrefix6, self.nat64)
        ):
            return self._refuse(addr, reasons.PEER, "too many from host")
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.accepted += 1
        if self._direct is not None:
            return wrapped
        gate = over(Gate, wrapped)(self, wrapped)
        if peer is not None:
            gate.claimPeer(addr)
        return gate

    def _isTrusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return any(
            address in network or (mapped is not None and mapped in network)
            for network in self.trusted or ()
        )

    def _peerRoom(self, peer: str) -> bool:
        return not self.maxPerPeer or self.perPeer.get(peer, 0) < self.maxPerPeer

    def _refuse(self, addr: object, reason: str, why: str) -> Protocol | None:
        self.refused[reason] += 1
        self.events.event("refused", addr, f": {why}")
        return Busy() if self.busy and reason != reasons.UNTRUSTED else None

    def abortHandshaking(self) -> int:
        """Abort every socket that has not reached the protocol (at shutdown); how many."""
        gates = list(self.handshaking)
        for gate in gates:
            gate.drop(reasons.SHUTDOWN, "still in its handshake at shutdown")
        return len(gates)


@halfCloseableTwin
@implementer(ITimer)
class Gate(Layer):
    """
    One admitted socket: passes everything between the socket and the layer
    above it, counts the socket out when it closes, and holds the handshake
    deadline until L{established}.
    """

    _handle: TimerHandle | None = None

    def __init__(self, admission: Admission, wrapped: Any) -> None:
        Layer.__init__(self, wrapped)
        self.admission = admission
        self.peer: str | None = None
        self.reason: str | None = None
        """Why the server dropped it before it reached the protocol."""

    def connectionMade(self) -> None:
        admission = self.admission
        admission.gated += 1
        timeout = admission.handshakeTimeout
        if timeout is not None:
            admission.handshaking.add(self)
            self._handle = admission.queue.createTimer()
            admission.queue.setTimer(self._handle, self, timeout)
        self.wrappedProtocol.makeConnection(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        admission = self.admission
        admission.gated -= 1
        if self.peer is not None:
            left = admission.perPeer[self.peer] - 1
            if left:
                admission.perPeer[self.peer] = left
            else:
                del admission.perPeer[self.peer]
        handle = self._handle
        if handle is not None:
            admission.handshaking.discard(self)
            admission.queue.destroyTimer(handle)
            self._handle = None
        try:
            Layer.connectionLost(self, reason)
        finally:
            if handle is not None:
                # Counted once the layers above have said why (a TLS error: tls).
                admission.closed[self.reason or reasons.CLIENT] += 1

    def logPrefix(self) -> str:
        """How the socket is named in the log: as the listening port's factory."""
        return self.admission.logPrefix()

    def claimPeer(self, address: Any, busy: bool = False) -> bool:
        """
        Count this socket against the limit of C{address}'s host, or refuse it
        (C{False}): with C{busy}, C{Server busy} and a close, else an abort.
        """
        admission = self.admission
        if not admission.maxPerPeer:
            return True  # no limit: nothing to count
        host = address.host  # an IPv4 address is its own key (peerKey), without a call
        peer = host if ":" not in host else peerKey(host, admission.peerPrefix6, admission.nat64)
        if not admission._peerRoom(peer):
            admission.refused[reasons.PEER] += 1
            self.reason = reasons.PEER  # accepted, so counted closed too: accepted = open + closed
            admission.events.event("refused", address, ": too many from host")
            if busy:
                self.transport.write(BUSY)
                self.loseConnection()
            else:
                self.abortConnection()
            return False
        self.peer = peer
        admission.perPeer[peer] = admission.perPeer.get(peer, 0) + 1
        return True

    def established(self) -> None:
        """The connection reached the protocol: its handshake deadline is off."""
        if self._handle is not None:
            self.admission.handshaking.discard(self)
            self.admission.queue.destroyTimer(self._handle)
            self._handle = None

    def drop(self, reason: str, why: str) -> None:
        """Abort the socket before it reached the protocol; log C{why}, count C{reason}."""
        if self.reason is None:
            self.reason = reason
            # Behind haproxy: the header's client, once it is read.
            peer = getattr(self.wrappedProtocol, "getPeer", self.transport.getPeer)()
            self.admission.events.event("dropped", peer, f": {why}")
        self.abortConnection()

    def onTimer(self, userData: object) -> None:
        """The handshake deadline passed."""
        self.drop(
            reasons.HANDSHAKE,
            f"no TLS handshake or PROXY header within {self.admission.handshakeTimeout}s",
        )


def gateOf(transport: object) -> Gate | None:
    """The L{Gate} at the bottom of C{transport}'s layers, if there is one."""
    while transport is not None:
        if isinstance(transport, Gate):
            return transport
        transport = getattr(transport, "transport", None)
    return None
