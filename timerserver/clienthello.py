"""
L{ClientHelloLayer}: the TLS layer of a connection is built only once the
client's first TLS record has arrived whole.

A TLS connection costs the server about 50 KB as soon as its TLS layer
exists (OpenSSL's state, measured: 5,000 sockets that never sent a
ClientHello took 250 MB).  A client speaks first in TLS, so nothing is lost
by waiting for its first record: until it is complete the socket holds only
the bytes the client sent, at most one record (16 KiB and its header), under
admission's handshake deadline.
"""

from __future__ import annotations

from typing import Any

from timerserver.layer import Layer, LayerFactory

MAX_RECORD = 5 + 2**14 + 2048
"""A TLS record's header and the longest body a record may have (TLSCiphertext)."""
HANDSHAKE = 0x16


class ClientHelloLayer(Layer):
    """Holds the first bytes until a whole TLS record is in, then connects TLS."""

    def __init__(self, wrappedProtocol: Any) -> None:
        Layer.__init__(self, wrappedProtocol)
        self._pending: bytes | None = b""

    def connectionMade(self) -> None:
        """Wait for the client's first record."""

    def dataReceived(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self.wrappedProtocol.dataReceived(data)
            return
        pending += data
        if len(pending) < 5 or (
            pending[0] == HANDSHAKE
            and len(pending) < min(MAX_RECORD, 5 + int.from_bytes(pending[3:5], "big"))
        ):
            self._pending = pending
            return
        # A whole record, or not TLS at all: TLS decides what it is.
        self._pending = None
        self.wrappedProtocol.makeConnection(self)
        if self.connected and not self.disconnecting:
            self.wrappedProtocol.dataReceived(pending)

    def connectionLost(self, reason: Any = None) -> None:
        if self._pending is None:
            Layer.connectionLost(self, reason)
        else:
            self.connected = 0
            self._pending = None


class ClientHelloFactory(LayerFactory):
    """Puts a L{ClientHelloLayer} under each of C{wrappedFactory}'s (TLS) connections."""

    layer = ClientHelloLayer
