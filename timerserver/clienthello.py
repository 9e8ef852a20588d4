"""
L{ClientHelloLayer}: the TLS layer of a connection is built only once the
client's first TLS record has arrived whole.

A TLS connection costs the server about 50 KB as soon as its TLS layer
exists (OpenSSL's state, measured: 5,000 sockets that never sent a
ClientHello took 250 MB).  A client speaks first in TLS, so nothing is lost
by waiting for its first record: until it is complete the socket holds only
the bytes the client sent, at most one record (16 KiB and its header), under
admission's handshake deadline.

A ClientHello may declare up to about 128 KiB spread over several records,
all of which OpenSSL would hold until the handshake ends (245 KiB a socket,
measured).  Real ones take a few KiB, so one that declares more than
L{MAX_CLIENT_HELLO} is dropped with its first record, and so is a first
record too short to hold the handshake header that declares it.
"""

from __future__ import annotations

from typing import Any

from timerserver import reasons
from timerserver.admission import gateOf
from timerserver.layer import Layer, LayerFactory

MAX_RECORD = 5 + 2**14 + 2048
"""A TLS record's header and the longest body a record may have (TLSCiphertext)."""
HANDSHAKE = 0x16
CLIENT_HELLO = 1
MAX_CLIENT_HELLO = 2**14
"""The longest ClientHello taken (TLS 1.3 ones with post-quantum key shares: under 2 KiB)."""


class ClientHelloLayer(Layer):
    """Holds the first bytes until a whole TLS record is in, then connects TLS."""

    _dropped = False

    def __init__(self, wrappedProtocol: Any) -> None:
        Layer.__init__(self, wrappedProtocol)
        self._pending: bytes | bytearray | None = b""

    def connectionMade(self) -> None:
        """Wait for the client's first record."""

    def dataReceived(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            if not self._dropped:
                self.wrappedProtocol.dataReceived(data)
            return
        if pending:
            pending += data  # a bytearray: a record sent a byte at a time is no quadratic copy
        else:
            pending = data  # usually the whole record, in one read
        if len(pending) < 5 or (
            pending[0] == HANDSHAKE
            and len(pending) < min(MAX_RECORD, 5 + int.from_bytes(pending[3:5], "big"))
        ):
            self._pending = bytearray(pending) if type(pending) is bytes else pending
            return
        # A whole record, or not TLS at all: TLS decides what it is.
        self._pending = None
        if pending[0] == HANDSHAKE:
            # The handshake header (type, 24-bit length) must be in the first
            # record: split over records, its length would go unread.
            if int.from_bytes(pending[3:5], "big") < 4:
                self._drop("a first TLS record too short for a handshake header")
                return
            declared = int.from_bytes(pending[6:9], "big")
            if pending[5] == CLIENT_HELLO and declared > MAX_CLIENT_HELLO:
                self._drop(f"a ClientHello of {declared} bytes (at most {MAX_CLIENT_HELLO})")
                return
        self.wrappedProtocol.makeConnection(self)
        if self.connected and not self.disconnecting:
            self.wrappedProtocol.dataReceived(bytes(pending))

    def _drop(self, why: str) -> None:
        """Abort the socket before TLS is built: through its gate (logged), if it has one."""
        self._dropped = True
        gate = gateOf(self.transport)
        if gate is not None:
            gate.drop(reasons.TLS, why)
        else:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._pending is None and not self._dropped:
            Layer.connectionLost(self, reason)
        else:
            self.connected = 0
            self._pending = None


class ClientHelloFactory(LayerFactory):
    """Puts a L{ClientHelloLayer} under each of C{wrappedFactory}'s (TLS) connections."""

    layer = ClientHelloLayer
